"""DCN-v2 (Wang et al., 2021), stacked: x0 = [embeddings, dense] -> cross network -> deep network
-> logit. Features may have different widths (e.g. unified chunks): x0 is their concatenation."""

from __future__ import annotations

import torch
from plexus.models.backbones.base import Backbone, CTRModel, ModelConfig, register_backbone
from plexus.models.embeddings import EmbeddingConfig
from plexus.models.layers.interactions import CrossNetV2
from plexus.models.layers.mlp import MLP
from plexus.platform.feature_spec import FeatureSpec
from torch import nn


@register_backbone(Backbone.DCNV2)
class DCNv2(CTRModel):
    """`model.cross_layers` full-rank cross layers, then `model.hidden` ReLU layers, then a logit."""

    def __init__(self, model: ModelConfig, embedding: EmbeddingConfig, spec: FeatureSpec) -> None:
        super().__init__(model, embedding, spec)
        self.embeddings = self.build_tables()
        width = sum(self.embeddings.output_dims().values()) + self.num_dense
        self.cross = CrossNetV2(width, model.cross_layers)
        self.deep = MLP(width, model.hidden, dropout=model.dropout, batch_norm=model.batch_norm)
        self.head = nn.Linear(self.deep.out_dim, 1)

    def interact(
        self, dense: torch.Tensor, embedded: torch.Tensor, first: torch.Tensor | None
    ) -> torch.Tensor:
        x0 = torch.cat([embedded, dense], dim=1)  # (B, D0)
        return self.head(self.deep(self.cross(x0))).squeeze(1)
