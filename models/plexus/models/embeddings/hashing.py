"""The hashing trick per feature: each feature hashed into its own, smaller table.

The budget's `round(budget * sum(cardinality))` rows are split over the features in proportion
to their cardinality (largest remainder, at least one row each), so the total embedding
parameters equal the budget fraction of the full tables exactly. A feature whose share covers its
whole vocabulary keeps its ids unhashed (no needless collisions); the others hash each raw id with
`hash_bucket(id, feature_seed(feature, 0), rows)` (Weinberger et al., 2009; the per-feature
baseline of Coleman et al., 2023).
"""

from __future__ import annotations

from collections.abc import Sequence

from plexus.models.embeddings.base import (
    EmbeddingConfig,
    EmbeddingMethod,
    budget_rows,
)
from plexus.models.embeddings.hashed import HashedEmbeddingTables, Plan, Probe, split_rows
from plexus.models.embeddings.registry import register_embedding
from plexus.platform.errors import ConfigError
from plexus.platform.feature_spec import Feature


@register_embedding(EmbeddingMethod.HASHING)
class HashingEmbeddingTables(HashedEmbeddingTables):
    """One hashed `rows_f x dim` table per feature, `sum(rows_f) = budget_rows`; `(B, F * dim)` out."""

    shards_through_torchrec = True

    def __init__(self, config: EmbeddingConfig, features: Sequence[Feature]) -> None:
        super().__init__(config, features)
        self._build(*self.plan(config, self.features))

    @staticmethod
    def plan(config: EmbeddingConfig, features: Sequence[Feature]) -> Plan:
        """One table per feature, rows in proportion to cardinality; unhashed where they fit."""
        total = budget_rows(features, config.budget)
        cards = [f.cardinality for f in features]
        if total < len(cards):
            raise ConfigError(
                f"embedding.budget={config.budget} gives {total} rows for {len(cards)} features; "
                "the hashing trick needs at least one row per feature: raise the budget"
            )
        rows = split_rows(total, cards)
        probes = tuple(
            Probe(f.name, 0, f"t_{f.name}", identity=r >= f.cardinality)
            for f, r in zip(features, rows, strict=True)
        )
        return Plan(probes, {p.table: r for p, r in zip(probes, rows, strict=True)}, "concat")
