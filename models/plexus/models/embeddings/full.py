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
from plexus.models.embeddings.registry import register_embedding
from plexus.platform.feature_spec import Feature
from torch.nn import functional
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor, KeyedTensor


@register_embedding(EmbeddingMethod.FULL)
class FullEmbeddingTables(EmbeddingTables):
    """The uncompressed baseline: ids index their own field's table directly, `(B, F * dim)` out."""

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

    def output_dims(self) -> dict[str, int]:
        return {name: self.config.dim for name in self.feature_names}

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        return self.ebc(features)

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
