"""`plexus bench neighbours`: the export's batch step, exact against HNSW, as users grow.

Every known user's kNN-Embed mixture needs its nearest users among all users. Exactly, that is
U queries against U rows (U^2 D work: minutes at 200k users, days at 10M); through the HNSW
graph of `retrieval.user_state.HnswUsers`, a build of about U log U and a search per user.
Each row measures both on the same unit user vectors: synthetic users with planted interests
(each a noisy mix of one to three of `interests` directions, as kNN-Embed's users are), or the
user table of a trained retrieval model. The exact search is timed on `queries` sampled users
and scaled to all U (its cost is linear in the queries); so is the HNSW search. Recall is the
share of the exact `neighbors` nearest users that HNSW returns, on the same sampled users.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from plexus.models.retrieval.knn_embed import exact_nearest_users
from plexus.pipelines.bench.report import markdown_table, write_results
from plexus.pipelines.retrieval.user_state import HnswUsers

COLUMNS = (
    "users", "dim", "exact_seconds", "hnsw_build_seconds", "hnsw_search_seconds",
    "hnsw_seconds", "speedup", "recall",
)  # fmt: skip


def planted_users(num_users: int, dim: int, *, interests: int = 64, seed: int = 0) -> torch.Tensor:
    """(U + 1, D) unit user vectors (row 0 the padding, zero): each user a noisy mix of one to
    three of `interests` random unit directions."""
    rng = np.random.default_rng(seed)
    directions = rng.standard_normal((interests, dim)).astype(np.float32)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    table = np.zeros((num_users + 1, dim), np.float32)
    for lo in range(1, num_users + 1, 100_000):
        n = min(100_000, num_users + 1 - lo)
        picks = rng.integers(0, interests, size=(n, 3))
        weights = rng.dirichlet(np.full(3, 0.5), size=n).astype(np.float32)
        vectors = np.einsum("nk,nkd->nd", weights, directions[picks])
        vectors += 0.3 / np.sqrt(dim) * rng.standard_normal((n, dim)).astype(np.float32)
        table[lo : lo + n] = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return torch.from_numpy(table)


def measure(
    user_table: torch.Tensor, *, neighbors: int = 20, queries: int = 2048, seed: int = 0
) -> dict[str, Any]:
    """Exact vs HNSW neighbours of the users of `user_table` (U + 1, D): one result row."""
    num_users = user_table.shape[0] - 1
    rng = np.random.default_rng(seed)
    sample = torch.from_numpy(
        np.sort(rng.choice(np.arange(1, num_users + 1), min(queries, num_users), replace=False))
    )
    query = user_table[sample]
    scale = num_users / sample.numel()

    started = time.perf_counter()
    exact = torch.cat(
        [
            exact_nearest_users(sample[i : i + 256], query[i : i + 256], user_table, neighbors)
            for i in range(0, sample.numel(), 256)
        ]
    )
    exact_seconds = (time.perf_counter() - started) * scale

    started = time.perf_counter()
    search = HnswUsers(user_table, neighbors)
    build = time.perf_counter() - started
    started = time.perf_counter()
    found = search(sample, query)
    search_seconds = (time.perf_counter() - started) * scale

    hits = [np.intersect1d(a, e).size for a, e in zip(found.numpy(), exact.numpy(), strict=True)]
    return {
        "users": num_users,
        "dim": int(user_table.shape[1]),
        "neighbors": neighbors,
        "queries": int(sample.numel()),
        "exact_seconds": exact_seconds,
        "hnsw_build_seconds": build,
        "hnsw_search_seconds": search_seconds,
        "hnsw_seconds": build + search_seconds,
        "speedup": exact_seconds / (build + search_seconds),
        "recall": float(np.mean(hits)) / neighbors,
    }


def bench_neighbours(
    out: Path,
    *,
    users: Sequence[int] = (30_000, 200_000, 1_000_000),
    dim: int = 64,
    neighbors: int = 20,
    queries: int = 2048,
    table: Path | None = None,
) -> list[dict[str, Any]]:
    """One row per user count (planted users), or one for `table` (a `.npy` user table of a
    trained model, (U + 1, D), row 0 the padding); written to `out/results.json` and `.md`."""

    def tables() -> Iterator[tuple[str, torch.Tensor]]:  # one in memory at a time
        if table is not None:
            yield "table", torch.from_numpy(np.load(table).astype(np.float32))
            return
        for n in users:
            yield "planted", planted_users(n, dim)

    rows = []
    for source, user_table in tables():
        row = {"source": source, **measure(user_table, neighbors=neighbors, queries=queries)}
        rows.append(row)
        print(
            f"[bench] {row['users']:,} users, dim {row['dim']}: exact {row['exact_seconds']:,.1f} s, "
            f"HNSW {row['hnsw_seconds']:,.1f} s ({row['speedup']:,.1f}x), "
            f"recall@{neighbors} {row['recall']:.3f}"
        )
    write_results(out, rows, markdown=markdown_table(rows, ("source", *COLUMNS)))
    return rows
