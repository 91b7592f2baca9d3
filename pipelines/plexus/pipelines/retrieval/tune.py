"""Choose kNN-Embed's smoothing and allocation, and the popularity prior, on a validation split,
never on the test set.

The neighbour `smoothing` decides how much of a user's interest mixture comes from similar
users (El-Kishky et al. 2022); the allocation `power` decides how far K is spread
from the main interest to the minor ones. Both are chosen here by the mean kNN-Embed recall
over the evaluation cut-offs, among the settings clearly more diverse than single-vector
retrieval, on a validation task (`Interactions.validation()`: the ingest's hold-out of one
training item per user, `data.interactions.validation_users`), with a model trained without
those items, so the test figures reported next to them are not tuned on the test. The
popularity prior (`export.popularity_prior`), which both retrievals add to the cosine, is
chosen first, by single-vector recall at the smallest cut-off, and the other two at it.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from plexus.models.retrieval import KnnEmbedConfig
from plexus.pipelines.retrieval.compare import compare_allocations, fit_knn_embed_query
from plexus.pipelines.retrieval.config import RetrievalExportConfig, RetrievalJobConfig
from plexus.pipelines.retrieval.data import Interactions
from plexus.pipelines.retrieval.user_state import build_user_state
from plexus.platform.errors import ConfigError

MIN_DIVERSITY = 1.2  # "clearly more diverse": a fifth more distinct clusters, mean over K


def tune_knn_embed(
    config: RetrievalJobConfig,
    data: Interactions,
    out: Path,
    *,
    powers: Sequence[float] = (),
    smoothings: Sequence[float] = (),
    priors: Sequence[float] = (),
    min_diversity: float = MIN_DIVERSITY,
) -> tuple[KnnEmbedConfig, RetrievalExportConfig, list[dict[str, Any]]]:
    """Train on the training lists minus a validation item per user (in `out`, reused when
    already there), then score every popularity prior, and every (smoothing, power) pair at the
    chosen prior; an empty list keeps the config's value. Returns the best kNN-Embed config,
    the export config with the best allocation and prior, and one row per setting scored
    (`popularity_prior`, `smoothing`, `power`, `recall` and `distinct_clusters` = kNN-Embed's
    means over `config.eval.ks`, single-vector retrieval's as `single_recall`,
    `single_distinct_clusters`, and its recall at the smallest K as `single_recall@K`).

    The prior is the one with the highest single-vector recall at the smallest K: it reorders
    the top of every list, and single-vector retrieval is the tower's own ranking. The best
    pair is the one with the highest recall among those at least `min_diversity` times
    as diverse as single-vector retrieval (distinct clusters): kNN-Embed is there to cover more
    of a user's interests, and recall alone would pick settings that cover fewer (with little
    smoothing, a mixture keeps to the one or two interests of a short history)."""
    from plexus.pipelines.retrieval.job import train_model

    if min(powers, default=0.0) < 0:
        raise ConfigError(f"--tune-power {list(powers)}: give powers >= 0, e.g. 0.5,0.7,0.85,1")
    if not all(0.0 <= s <= 1.0 for s in smoothings):
        raise ConfigError(f"--tune-smoothing {list(smoothings)}: give weights in [0, 1]")
    if not all(math.isfinite(p) for p in priors):
        raise ConfigError(f"--tune-prior {list(priors)}: give finite weights, e.g. 0,0.002,0.005")
    powers = powers or [config.export.allocation.power]
    smoothings = smoothings or [config.knn_embed.smoothing]
    valid = data.validation()
    model, _ = train_model(config, valid, out)
    head = f"single_recall@{min(config.eval.ks)}"
    rows: list[dict[str, Any]] = []

    def score(
        smoothing: float, prior: float, powers: Sequence[float]
    ) -> list[list[dict[str, Any]]]:
        knn_config = dataclasses.replace(config.knn_embed, smoothing=float(smoothing))
        module, state = fit_knn_embed_query(model, valid, knn_config)
        users = build_user_state(module, state, valid, config.export.stored_user_state)
        allocations = [
            dataclasses.replace(config.export.allocation, power=float(power)) for power in powers
        ]
        return compare_allocations(
            module,
            state,
            valid,
            allocations,
            ks=config.eval.ks,
            users=users,
            popularity_prior=prior,
        )

    def add(smoothing: float, power: float, prior: float, scored: list[dict[str, Any]]) -> None:
        rows.append(
            {
                "popularity_prior": float(prior),
                "smoothing": float(smoothing),
                "power": float(power),
                **_means(scored),
            }
        )
        r = rows[-1]
        print(
            f"[tune] prior {prior:g}, smoothing {smoothing:g}, power {power:g}: validation "
            f"kNN-Embed recall {r['recall']:.4f}, distinct clusters {r['distinct_clusters']:.2f}"
            f" (single: {r['single_recall']:.4f}, {r['single_distinct_clusters']:.2f}; "
            f"{head} {r[head]:.4f})",
            flush=True,
        )

    prior = config.export.popularity_prior
    if priors:
        # At the config's smoothing and power: only single-vector recall decides.
        smoothing, power = config.knn_embed.smoothing, config.export.allocation.power
        for candidate in priors:
            add(smoothing, power, candidate, score(smoothing, candidate, [power])[0])
        prior = max(rows, key=lambda r: r[head])["popularity_prior"]
    at_prior = len(rows)
    for smoothing in smoothings:
        for power, scored in zip(powers, score(smoothing, prior, powers), strict=True):
            add(smoothing, power, prior, scored)
    grid = rows[at_prior:]
    diverse = [
        r for r in grid if r["distinct_clusters"] >= min_diversity * r["single_distinct_clusters"]
    ]
    if not diverse:
        print(
            f"[tune] no setting reached {min_diversity:g}x single-vector retrieval's distinct "
            "clusters; choosing by recall alone (try a lower power or more smoothing)",
            flush=True,
        )
    best = max(diverse or grid, key=lambda r: r["recall"])
    export = dataclasses.replace(
        config.export,
        allocation=dataclasses.replace(config.export.allocation, power=best["power"]),
        popularity_prior=prior,
    )
    return dataclasses.replace(config.knn_embed, smoothing=best["smoothing"]), export, rows


def _means(scored: list[dict[str, Any]]) -> dict[str, float]:
    """Recall and distinct clusters of each method, averaged over the K's, and single-vector
    recall at the smallest K."""
    single = [r for r in scored if r["method"] == "single"]
    first = min(single, key=lambda r: r["k"])
    return {
        **{
            f"{prefix}{key}": statistics.mean(r[key] for r in scored if r["method"] == method)
            for method, prefix in (("knn_embed", ""), ("single", "single_"))
            for key in ("recall", "distinct_clusters")
        },
        f"single_recall@{first['k']}": first["recall"],
    }


__all__ = ["MIN_DIVERSITY", "tune_knn_embed"]
