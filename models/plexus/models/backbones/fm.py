"""Factorization machine (Rendle, 2010): first-order terms + sum_{i<j} <v_i, v_j> over the sparse
fields, with the O(F D) sum-square trick. Dense features enter the linear part only."""

from __future__ import annotations

import torch
from plexus.models.backbones.base import (
    Backbone,
    CTRModel,
    ModelConfig,
    register_backbone,
    require_equal_widths,
    stack_fields,
)
from plexus.models.embeddings import EmbeddingConfig
from plexus.models.layers.interactions import fm_pairwise
from plexus.models.layers.linear import FirstOrder
from plexus.platform.feature_spec import FeatureSpec


@register_backbone(Backbone.FM)
class FM(CTRModel):
    """Needs equal feature widths (see `require_equal_widths`)."""

    def __init__(self, model: ModelConfig, embedding: EmbeddingConfig, spec: FeatureSpec) -> None:
        super().__init__(model, embedding, spec)
        self.embeddings = self.build_tables()
        require_equal_widths(self.embeddings, Backbone.FM)
        self.first_order = self.build_first_order()  # w_f, under the same base and budget
        self.linear = FirstOrder(self.num_dense)

    def interact(
        self, dense: torch.Tensor, embedded: torch.Tensor, first: torch.Tensor | None
    ) -> torch.Tensor:
        assert first is not None
        fields = stack_fields(embedded, self.embeddings)  # (B, F, D)
        return self.linear(dense, first) + fm_pairwise(fields)
