"""Feature multiplexing (Coleman et al., NeurIPS 2023): every feature shares one `rows x dim` table.

Feature f's id x goes to row `hash_bucket(x, feature_seed(f, p), rows)` of the shared table for
each probe p < `probes`; the probes' vectors are summed, so every feature is `dim` wide. The
per-(feature, probe) seed keeps features distinguishable while they share capacity. `rows` =
`round(budget * sum(cardinality))`, so the parameters are the budget fraction of the full tables.
With `probes=1` this is the paper's single-probe multiplexing baseline.

Through TorchRec, the shared table is one `EmbeddingBagConfig` whose `feature_names` are all the
probe keys (`"<feature>#<probe>"`) of the hashed `KeyedJaggedTensor`.
"""

from __future__ import annotations

from collections.abc import Sequence

from plexus.models.embeddings.base import EmbeddingConfig, EmbeddingMethod, budget_rows
from plexus.models.embeddings.hashed import HashedEmbeddingTables, Plan, Probe
from plexus.models.embeddings.registry import register_embedding
from plexus.platform.feature_spec import Feature

SHARED_TABLE = "shared"


@register_embedding(EmbeddingMethod.MULTIPLEXED)
class MultiplexedEmbeddingTables(HashedEmbeddingTables):
    """One shared hashed table, `probes` summed lookups per feature: `(B, F * dim)` out."""

    shards_through_torchrec = True

    def __init__(self, config: EmbeddingConfig, features: Sequence[Feature]) -> None:
        super().__init__(config, features)
        self._build(*self.plan(config, self.features))

    @staticmethod
    def plan(config: EmbeddingConfig, features: Sequence[Feature]) -> Plan:
        return multiplexed_plan(config, features)


def multiplexed_plan(config: EmbeddingConfig, features: Sequence[Feature]) -> Plan:
    """`probes` lookups per feature into one shared table of the budget's rows, summed."""
    probes = tuple(Probe(f.name, p, SHARED_TABLE) for f in features for p in range(config.probes))
    return Plan(probes, {SHARED_TABLE: budget_rows(features, config.budget)}, "sum")
