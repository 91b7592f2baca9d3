"""Choose kNN-Embed's smoothing and allocation on a validation split, never on the test set.

The neighbour `smoothing` decides how much of a user's interest mixture comes from similar
users (El-Kishky et al. 2022); the allocation `power` decides how far K is spread
from the main interest to the minor ones. Both are chosen here by the mean kNN-Embed recall
over the evaluation cut-offs, among the settings clearly more diverse than single-vector
retrieval, on a validation task (`Interactions.validation()`: the ingest's hold-out of one
training item per user, `data.interactions.validation_users`), with a model trained without
those items, so the test figures reported next to them are not tuned on the test.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from plexus.models.retrieval import KnnEmbedConfig
from plexus.pipelines.retrieval.compare import compare_allocations, fit_knn_embed_query
from plexus.pipelines.retrieval.config import RetrievalJobConfig
from plexus.pipelines.retrieval.data import Interactions
from plexus.pipelines.retrieval.user_state import build_user_state
from plexus.platform.errors import ConfigError
from plexus.serving.knn_embed import AllocationConfig

MIN_DIVERSITY = 1.2  # "clearly more diverse": a fifth more distinct clusters, mean over K


def tune_knn_embed(
    config: RetrievalJobConfig,
    data: Interactions,
    out: Path,
    *,
    powers: Sequence[float] = (),
    smoothings: Sequence[float] = (),
    min_diversity: float = MIN_DIVERSITY,
) -> tuple[KnnEmbedConfig, AllocationConfig, list[dict[str, Any]]]:
    """Train on the training lists minus a validation item per user (in `out`, reused when
    already there), then score every (smoothing, power) pair; an empty list keeps the config's
    value. Returns the best kNN-Embed config and allocation and one row per pair (`smoothing`,
    `power`, `recall` and `distinct_clusters` = kNN-Embed's means over `config.eval.ks`, and
    single-vector retrieval's as `single_recall`, `single_distinct_clusters`).

    The best pair is the one with the highest recall among those at least `min_diversity` times
    as diverse as single-vector retrieval (distinct clusters): kNN-Embed is there to cover more
    of a user's interests, and recall alone would pick settings that cover fewer (with little
    smoothing, a mixture keeps to the one or two interests of a short history)."""
    from plexus.pipelines.retrieval.job import train_model

    if min(powers, default=0.0) < 0:
        raise ConfigError(f"--tune-power {list(powers)}: give powers >= 0, e.g. 0.5,0.7,0.85,1")
    if not all(0.0 <= s <= 1.0 for s in smoothings):
        raise ConfigError(f"--tune-smoothing {list(smoothings)}: give weights in [0, 1]")
    powers = powers or [config.export.allocation.power]
    smoothings = smoothings or [config.knn_embed.smoothing]
    valid = data.validation()
    model, _ = train_model(config, valid, out)
    allocations = [
        dataclasses.replace(config.export.allocation, power=float(power)) for power in powers
    ]
    rows = []
    for smoothing in smoothings:
        knn_config = dataclasses.replace(config.knn_embed, smoothing=float(smoothing))
        module, state = fit_knn_embed_query(model, valid, knn_config)
        users = build_user_state(module, state, valid, config.export.stored_user_state)
        scored = compare_allocations(
            module, state, valid, allocations, ks=config.eval.ks, users=users
        )
        for power, rows_of_power in zip(powers, scored, strict=True):
            rows.append(
                {"smoothing": float(smoothing), "power": float(power), **_means(rows_of_power)}
            )
            print(
                f"[tune] smoothing {smoothing:g}, power {power:g}: validation kNN-Embed recall "
                f"{rows[-1]['recall']:.4f}, distinct clusters {rows[-1]['distinct_clusters']:.2f}"
                f" (single: {rows[-1]['single_recall']:.4f}, "
                f"{rows[-1]['single_distinct_clusters']:.2f})",
                flush=True,
            )
    diverse = [
        r for r in rows if r["distinct_clusters"] >= min_diversity * r["single_distinct_clusters"]
    ]
    if not diverse:
        print(
            f"[tune] no setting reached {min_diversity:g}x single-vector retrieval's distinct "
            "clusters; choosing by recall alone (try a lower power or more smoothing)",
            flush=True,
        )
    best = max(diverse or rows, key=lambda r: r["recall"])
    return (
        dataclasses.replace(config.knn_embed, smoothing=best["smoothing"]),
        dataclasses.replace(config.export.allocation, power=best["power"]),
        rows,
    )


def _means(scored: list[dict[str, Any]]) -> dict[str, float]:
    """Recall and distinct clusters of each method, averaged over the K's."""
    return {
        f"{prefix}{key}": statistics.mean(r[key] for r in scored if r["method"] == method)
        for method, prefix in (("knn_embed", ""), ("single", "single_"))
        for key in ("recall", "distinct_clusters")
    }


__all__ = ["MIN_DIVERSITY", "tune_knn_embed"]
