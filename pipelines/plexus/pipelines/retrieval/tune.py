"""Choose kNN-Embed's allocation on a validation split, never on the test set.

The allocation `power` decides how far K is spread from a user's main interest to the minor
ones. It is chosen here by the mean kNN-Embed recall over the evaluation cut-offs on a
validation task (`data.validation_split`: one held-out training item per user), with a model
trained without those items, so the test figures reported next to it are not tuned on the test.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from plexus.pipelines.retrieval.compare import compare_retrieval, fit_knn_embed_query
from plexus.pipelines.retrieval.config import RetrievalJobConfig
from plexus.pipelines.retrieval.data import InteractionFormat, Interactions, validation_split
from plexus.platform.errors import ConfigError
from plexus.serving.knn_embed import AllocationConfig

VALIDATION_USERS = 5_000  # enough for ~0.005 recall resolution, a few seconds per setting


def tune_allocation_power(
    config: RetrievalJobConfig,
    data: Interactions,
    powers: Sequence[float],
    out: Path,
    *,
    max_users: int = VALIDATION_USERS,
) -> tuple[AllocationConfig, list[dict[str, Any]]]:
    """Train on the training lists minus a validation item per user (in `out`, reused when
    already there), then score each power; returns the best allocation and one row per power
    (`power`, `recall` and `distinct_clusters` = kNN-Embed's means over `config.eval.ks`, and
    single-vector retrieval's as `single_recall`, `single_distinct_clusters`). The best power is
    the one with the highest recall: diversity is reported beside it, not traded for it."""
    from plexus.pipelines.retrieval.job import train_model

    if not powers or min(powers) < 0:
        raise ConfigError(f"--tune-power {list(powers)}: give powers >= 0, e.g. 0.5,0.7,0.85,1")
    latest = config.data.format is InteractionFormat.MOVIELENS  # time-ordered lists
    valid = validation_split(data, latest=latest, seed=config.train.seed, max_users=max_users)
    model, _ = train_model(config, valid, out)
    module, state = fit_knn_embed_query(model, valid, config.knn_embed)
    rows = []
    for power in powers:
        allocation = dataclasses.replace(config.export.allocation, power=float(power))
        scored = compare_retrieval(module, state, valid, ks=config.eval.ks, allocation=allocation)
        mean = {
            (method, key): statistics.mean(r[key] for r in scored if r["method"] == method)
            for method in ("knn_embed", "single")
            for key in ("recall", "distinct_clusters")
        }
        row = {
            "power": float(power),
            "recall": mean["knn_embed", "recall"],
            "distinct_clusters": mean["knn_embed", "distinct_clusters"],
            "single_recall": mean["single", "recall"],
            "single_distinct_clusters": mean["single", "distinct_clusters"],
        }
        rows.append(row)
        print(
            f"[tune] power {power:g}: validation kNN-Embed recall {row['recall']:.4f}, "
            f"distinct clusters {row['distinct_clusters']:.2f} "
            f"(single: {row['single_recall']:.4f}, {row['single_distinct_clusters']:.2f})",
            flush=True,
        )
    best = max(rows, key=lambda r: r["recall"])
    return dataclasses.replace(config.export.allocation, power=best["power"]), rows


__all__ = ["VALIDATION_USERS", "tune_allocation_power"]
