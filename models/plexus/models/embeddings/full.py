"""Full per-field tables: one `cardinality x dim` TorchRec table per sparse feature (no sharing)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from plexus.models.embeddings.base import (
    EmbeddingConfig,
    EmbeddingMethod,
    EmbeddingTables,
    init_weight,
    pool_padded,
)
from plexus.models.embeddings.hashed import Plan, identity_plan
from plexus.models.embeddings.registry import register_embedding
from plexus.models.layers.lookup import keyed_values, pooled_key_blocks
from plexus.platform.errors import DataError
from plexus.platform.feature_spec import Feature
from torch.nn import functional
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor, KeyedTensor


@register_embedding(EmbeddingMethod.FULL)
class FullEmbeddingTables(EmbeddingTables):
    """The uncompressed baseline: ids index their own field's table directly, `(B, F * dim)` out."""

    shards_through_torchrec = True

    def __init__(self, config: EmbeddingConfig, features: Sequence[Feature]) -> None:
        super().__init__(config, features)
        self.ebc = EmbeddingBagCollection(
            tables=[
                EmbeddingBagConfig(
                    name=f"t_{f.name}",
                    embedding_dim=config.dim,
                    num_embeddings=f.cardinality,
                    feature_names=[f.name],
                    pooling=config.pooling_type,
                    init_fn=init_weight,
                )
                for f in self.features
            ]
        )

    @staticmethod
    def plan(config: EmbeddingConfig, features: Sequence[Feature]) -> Plan:
        """The same tables as a probe plan (what a learned method over full tables builds on)."""
        return identity_plan(features)

    def output_dims(self) -> dict[str, int]:
        return {name: self.config.dim for name in self.feature_names}

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        if type(self.ebc) is not EmbeddingBagCollection:  # sharded by DistributedModelParallel
            return self._keyed(keyed_values(self.ebc(features), self.feature_names))
        # Unsharded: the same lookups as the EBC, with the cheaper table gradient of
        # `pooled_lookup` (the one every embedding method uses, so they compare like for like).
        keys = features.keys()
        blocks = []
        for name in self.feature_names:
            try:
                k = keys.index(name)
            except ValueError as exc:
                raise DataError(
                    f"sparse input lacks feature {name!r}: needs {list(self.feature_names)}, "
                    f"got {keys}"
                ) from exc
            blocks.append((k, 1, self.ebc.embedding_bags[f"t_{name}"].weight))
        return self._keyed(torch.cat(pooled_key_blocks(features, blocks, self.config.pooling), 1))

    def _keyed(self, values: torch.Tensor) -> KeyedTensor:
        return KeyedTensor(
            keys=list(self.feature_names),
            length_per_key=[self.config.dim] * len(self.feature_names),
            values=values,
        )

    def forward_padded(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        pooled = [
            pool_padded(
                functional.embedding(ids[:, i, :], self.ebc.embedding_bags[f"t_{name}"].weight),
                lengths[:, i],
                self.config.pooling,
            )
            for i, name in enumerate(self.feature_names)
        ]
        return torch.cat(pooled, dim=1)  # (B, F * dim)
