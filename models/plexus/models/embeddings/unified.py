"""Unified Embedding (Coleman et al., NeurIPS 2023): multiplexed chunks, concatenated per feature.

Feature f gets `c_f` chunks (`embedding.feature_chunks[f]`, else `embedding.chunks`). Chunk j of
id x is row `hash_bucket(x, feature_seed(f, j), rows_t)` of physical table t; the (feature, chunk)
lookups are dealt round-robin over `num_tables` shared tables in feature order, and the chunk
vectors are concatenated, so feature f is `c_f * dim` wide (give important or high-cardinality
features more chunks). Multi-valued features pool within each chunk. The tables hold
`round(budget * sum(cardinality))` rows of `dim` in total, split as evenly as possible: the
parameter count follows from the budget, never from vocabulary sizes.

Widths differ when chunk counts do: DCN-v2 concatenates them, FM/DeepFM require equal widths.
"""

from __future__ import annotations

from collections.abc import Sequence

from plexus.models.embeddings.base import EmbeddingConfig, EmbeddingMethod, budget_rows
from plexus.models.embeddings.hashed import HashedEmbeddingTables, Plan, Probe
from plexus.models.embeddings.registry import register_embedding
from plexus.platform.errors import ConfigError
from plexus.platform.feature_spec import Feature


@register_embedding(EmbeddingMethod.UNIFIED)
class UnifiedEmbeddingTables(HashedEmbeddingTables):
    """Chunks of every feature spread over `num_tables` shared tables: `(B, sum_f c_f * dim)` out."""

    shards_through_torchrec = True

    def __init__(self, config: EmbeddingConfig, features: Sequence[Feature]) -> None:
        super().__init__(config, features)
        self._build(*self.plan(config, self.features))

    @staticmethod
    def plan(config: EmbeddingConfig, features: Sequence[Feature]) -> Plan:
        return unified_plan(config, features)


def unified_plan(config: EmbeddingConfig, features: Sequence[Feature]) -> Plan:
    """The probes (one per feature and chunk, dealt round-robin over the tables) and table rows."""
    unknown = sorted(set(config.feature_chunks) - {f.name for f in features})
    if unknown:
        raise ConfigError(
            f"embedding.feature_chunks names unknown features {unknown}; "
            f"sparse features are: {', '.join(f.name for f in features)}"
        )
    total = budget_rows(features, config.budget)
    tables = config.num_tables
    if total < tables:
        raise ConfigError(
            f"embedding.budget={config.budget} gives {total} rows, fewer than "
            f"embedding.num_tables={tables}: raise the budget or use fewer tables"
        )
    names = [f"shared_{t}" for t in range(tables)]
    rows = {name: total // tables + (t < total % tables) for t, name in enumerate(names)}
    probes: list[Probe] = []
    for f in features:
        for chunk in range(config.feature_chunks.get(f.name, config.chunks)):
            probes.append(Probe(f.name, chunk, names[len(probes) % tables]))
    used = {p.table for p in probes}
    if len(used) < tables:
        raise ConfigError(
            f"embedding.num_tables={tables} exceeds the {len(probes)} chunks in all; "
            "use fewer tables or more chunks"
        )
    return Plan(tuple(probes), rows, "concat")
