"""Lookup latency of a trained model's serving (compact) embedding form against its dense form.

A sparse table saves bytes only if it is served sparse, and the packed form costs gathers: here
both forms of the same trained tables (`EmbeddingTables.compact()` and the tables as trained,
zeros included) run `forward_padded` (the exported path: raw ids, hashing in the graph) on the
same padded test batches, taking turns pass by pass, best pass of each, in one process.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from plexus.models.batch import pad_sparse
from plexus.models.embeddings import EmbeddingTables
from plexus.models.threads import restores_cpu_state, use_cpu_threads
from plexus.pipelines.bench.report import markdown_table
from plexus.pipelines.bench.throughput import load_batches
from plexus.platform.feature_spec import FeatureSpec

PASSES = 5


def padded_batches(
    shards: Sequence[Path], spec: FeatureSpec, *, batch_size: int = 1024, limit: int = 10
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first `limit` batches of `shards` as `forward_padded` inputs: ids (B, F, L), lengths."""
    names = [f.name for f in spec.sparse]
    batches = load_batches(shards, spec, batch_size=batch_size, limit=limit)
    return [pad_sparse(b.sparse, names) for b in batches]


@torch.no_grad()
def lookup_latency(
    tables: EmbeddingTables,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    *,
    passes: int = PASSES,
) -> dict[str, float] | None:
    """Microseconds per looked-up example of the dense and the compact form of `tables` (None
    when the method has no separate compact form), and their ratio."""
    served = tables.compact()
    if served is tables:
        return None
    forms = {"dense": tables.eval(), "sparse": served.eval()}
    examples = sum(ids.shape[0] for ids, _ in batches)
    for form in forms.values():  # warm-up
        form.forward_padded(*batches[0])
    best = dict.fromkeys(forms, float("inf"))
    for _ in range(passes):
        for name, form in forms.items():
            started = time.perf_counter()
            for ids, lengths in batches:
                form.forward_padded(ids, lengths)
            best[name] = min(best[name], time.perf_counter() - started)
    dense_us, sparse_us = (1e6 * best[k] / examples for k in ("dense", "sparse"))
    return {
        "lookup_dense_us": dense_us,
        "lookup_sparse_us": sparse_us,
        "lookup_sparse_vs_dense": sparse_us / dense_us,
        "dense_form_bytes": float(4 * sum(p.numel() for p in tables.parameters())),
        "sparse_form_bytes": float(served.num_bytes()),
    }


@restores_cpu_state()
def add_lookup_latency(
    rows: list[dict[str, Any]],
    models: Mapping[int, Path],
    test_shards: Sequence[Path],
    spec: FeatureSpec,
    *,
    threads: int,
) -> None:
    """Give each row `i` whose model folder is `models[i]` the `lookup_latency` figures of its
    main embedding tables (rows of methods without a compact form are left as they are)."""
    from plexus.pipelines.train.job import load_model

    if not models:
        return
    use_cpu_threads(threads)
    batches = padded_batches(test_shards, spec)
    for i, folder in models.items():
        model, _ = load_model(folder)
        figures = lookup_latency(model.embeddings, batches)
        if figures is not None:
            rows[i].update(figures)


def lookup_section(rows: Sequence[dict[str, Any]]) -> str:
    """A `results.md` section: the lookup latency of every row that has it."""
    timed = [
        {
            "method": f"{r['method']}:{r['base']}" if r.get("base") else r["method"],
            "budget": r["budget"],
            "seed": r["seed"],
            "sparse form bytes": f"{r['sparse_form_bytes']:,.0f}",
            "dense form bytes": f"{r['dense_form_bytes']:,.0f}",
            "dense us/example": f"{r['lookup_dense_us']:.2f}",
            "sparse us/example": f"{r['lookup_sparse_us']:.2f}",
            "sparse / dense": f"{r['lookup_sparse_vs_dense']:.2f}",
        }
        for r in rows
        if "lookup_sparse_us" in r
    ]
    if not timed:
        return ""
    return "\n".join(
        [
            "\n### Lookup latency: the served (compact) tables against the dense ones\n",
            "`forward_padded` of the main embedding tables on the same padded test batches "
            f"(10 x 1,024 rows, best of {PASSES} interleaved passes, one process).\n",
            markdown_table(timed, list(timed[0])),
            "",
        ]
    )


__all__ = ["add_lookup_latency", "lookup_latency", "lookup_section", "padded_batches"]
