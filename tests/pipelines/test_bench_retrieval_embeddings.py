"""`plexus bench embeddings --task retrieval`: one tiny real run on planted interactions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from plexus.pipelines.bench.embeddings import plan_rows
from plexus.pipelines.bench.retrieval_embeddings import (
    ROW_KEYS,
    _base_job,
    bench_retrieval_embeddings,
    results_markdown,
)
from plexus.pipelines.data.synth import planted_lists, write_lightgcn
from plexus.platform.errors import ConfigError

_TINY = [
    "model.history_len=8",
    "train.batch_size=128",
    "train.num_negatives=64",
    "train.lr=0.02",
    "train.lr_schedule=constant",
    "train.threads=1",
    "data.interactions.validation_users=10",
    "use_ray=false",
]


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    train, test, _ = planted_lists(
        num_users=150, num_groups=5, items_per_group=40, per_user=12, test_per_user=3, seed=0
    )
    return write_lightgcn(tmp_path_factory.mktemp("log") / "planted", train, test)


@pytest.mark.slow  # ~2 min on 2 busy cores (18 tiny trainings + 8 probes)
def test_every_method_gets_a_row_with_bytes_ordered_by_budget(planted: Path, tmp_path) -> None:
    """Full, the plain methods, DSL and magnitude pruning at two budgets and the popular
    baseline are all measured; each method's bytes shrink with its budget; the learned methods
    the retrieval loop cannot train (a search stage) are named as skipped; full tables beat the
    most popular items on planted interests."""
    out = tmp_path / "bench"
    rows = bench_retrieval_embeddings(
        planted, out, budgets=(1 / 2, 1 / 8), epochs=6, dim=16, overrides=_TINY
    )
    labels = {(r["method"], r["base"]) for r in rows}
    assert labels == {
        ("popular", ""),
        ("full", ""),
        ("hashing", ""),
        ("multiplexed", ""),
        ("unified", ""),
        ("dsl", "full"),
        ("dsl", "unified"),
        ("magnitude_pruning", "full"),
        ("magnitude_pruning", "unified"),
    }
    for row in rows:
        assert set(ROW_KEYS) <= set(row), row
    for method, base in (("hashing", ""), ("multiplexed", ""), ("unified", ""), ("dsl", "full"),
                         ("dsl", "unified"), ("magnitude_pruning", "full"),
                         ("magnitude_pruning", "unified")):  # fmt: skip
        by_budget = sorted(
            (r for r in rows if (r["method"], r["base"]) == (method, base)),
            key=lambda r: r["budget"],
        )
        sizes = [r["bytes"] for r in by_budget]
        assert len(sizes) == 2 and sizes[0] < sizes[1], (method, sizes)
    full = next(r for r in rows if r["method"] == "full")
    popular = next(r for r in rows if r["method"] == "popular")
    assert all(r["bytes"] <= full["bytes"] for r in rows)
    assert full["recall@20"] > popular["recall@20"] + 0.05, (full, popular)
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(rows))
    markdown = (out / "results.md").read_text()
    skipped = markdown.split("Skipped: ")[1]
    for learned in ("optembed", "dnis"):
        assert f"{learned}:full (" in skipped and f"{learned}:unified (" in skipped
    assert "dsl:" not in skipped and "magnitude_pruning:" not in skipped
    dsl = next(r for r in rows if (r["method"], r["base"], r["budget"]) == ("dsl", "full", 0.5))
    # Measured: DSL at half the bytes (density ~0.4) 0.158, full 0.189, popular 0.120.
    assert dsl["bytes"] <= 0.5 * full["bytes"] and dsl["recall@20"] > popular["recall@20"] + 0.02
    assert (out / "pareto.png").stat().st_size > 0
    # A re-run reuses every trained model rather than training again.
    again = bench_retrieval_embeddings(
        planted, out, budgets=(1 / 2, 1 / 8), epochs=6, dim=16, overrides=_TINY,
        methods=("full",),
    )  # fmt: skip
    assert next(r for r in again if r["method"] == "full")["reused"]


def test_a_ctr_format_is_refused_naming_the_choices(planted: Path, tmp_path) -> None:
    with pytest.raises(ConfigError, match="use lightgcn"):
        bench_retrieval_embeddings(planted, tmp_path, fmt="criteo")


def test_the_configs_learned_options_reach_the_planned_rows(planted: Path, tmp_path) -> None:
    """`--set embedding.options.delta_t=...` on a DSL config is what the DSL rows train with
    (the job's own embedding is dropped from the base job, which each row replaces)."""
    overrides = [*_TINY, "embedding.method=dsl", "embedding.options.delta_t=7"]
    base, configured = _base_job("lightgcn", planted, tmp_path, None, overrides, 1, 16, None)
    assert base.embedding is None and configured is not None
    plan = plan_rows(["dsl:full"], [1 / 2], 1, 1, base.model.dim, configured)
    assert [e.options.delta_t for _, _, e, _ in plan] == [7]


def _row(method: str, seed: int, recall: float, base: str = "") -> dict:
    return {"method": method, "base": base, "budget_label": "1", "seed": seed, "chunks": 1,
            "probes": 1, "params": 10, "bytes": 40, "recall@20": recall, "ndcg@20": recall / 2,
            "epochs": 3, "seconds": 1.0}  # fmt: skip


def test_results_give_the_mean_over_seeds_and_compare_each_seed_with_its_own_full() -> None:
    """Two seeds of full and DSL and one of hashing: a summary row per method with mean ± std
    (none for one seed), and each row's `recall - full` against the full row of its own seed
    (not seed 0's)."""
    rows = [_row("popular", 0, 0.05), _row("full", 0, 0.20), _row("full", 1, 0.18),
            _row("dsl", 0, 0.19, "full"), _row("dsl", 1, 0.18, "full"),
            _row("hashing", 0, 0.15)]  # fmt: skip
    text = results_markdown("t", rows, [], command="plexus bench embeddings --task retrieval")
    summary, every = text.split("Every row:")
    assert "| full |  | 1 | 2 | 0.1900 ± 0.0141 | 0.0950 ± 0.0071 | +0.0000 |" in summary
    assert "| dsl | full | 1 | 2 | 0.1850 ± 0.0071 | 0.0925 ± 0.0035 | -0.0050 |" in summary
    assert "| hashing |  | 1 | 1 | 0.1500 | 0.0750 | -0.0400 |" in summary  # one seed: no std
    assert "popular" not in summary
    assert "| dsl | full | 1 | 1 | 1 | 1 | 10 | 40 |  | 0.1800 | 0.0900 | +0.0000 |" in every
    assert "| dsl | full | 1 | 0 | 1 | 1 | 10 | 40 |  | 0.1900 | 0.0950 | -0.0100 |" in every


def test_results_of_one_seed_have_no_summary() -> None:
    rows = [_row("full", 0, 0.20), _row("dsl", 0, 0.19, "full")]
    text = results_markdown("t", rows, [], command="plexus bench embeddings --task retrieval")
    assert "over seeds" not in text and "| dsl | full | 1 | 0 |" in text
