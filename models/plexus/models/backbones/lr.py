"""Logistic regression: first-order terms only, logit = w0 + sum_i w_{f_i} + <w, x_dense>."""

from __future__ import annotations

import torch
from plexus.models.backbones.base import Backbone, CTRModel, ModelConfig, register_backbone
from plexus.models.embeddings import EmbeddingConfig
from plexus.models.layers.linear import FirstOrder
from plexus.platform.feature_spec import FeatureSpec


@register_backbone(Backbone.LR)
class LR(CTRModel):
    """The per-id weights are the embedding tables at width 1 (the config's `dim` is not used)."""

    def __init__(self, model: ModelConfig, embedding: EmbeddingConfig, spec: FeatureSpec) -> None:
        super().__init__(model, embedding, spec)
        self.embeddings = self.build_tables(dim=1)
        self.linear = FirstOrder(self.num_dense)

    def interact(
        self, dense: torch.Tensor, embedded: torch.Tensor, first: torch.Tensor | None
    ) -> torch.Tensor:
        return self.linear(dense, embedded)
