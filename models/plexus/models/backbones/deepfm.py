"""DeepFM (Guo et al., 2017): an FM part and a DNN part over the same (shared) field embeddings,
logit = first-order + FM pairwise + DNN. Dense features feed the linear part and the DNN."""

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
from plexus.models.layers.mlp import MLP
from plexus.platform.feature_spec import FeatureSpec


@register_backbone(Backbone.DEEPFM)
class DeepFM(CTRModel):
    """Needs equal feature widths (see `require_equal_widths`)."""

    def __init__(self, model: ModelConfig, embedding: EmbeddingConfig, spec: FeatureSpec) -> None:
        super().__init__(model, embedding, spec)
        self.embeddings = self.build_tables()
        require_equal_widths(self.embeddings, Backbone.DEEPFM)
        self.first_order = self.build_first_order()  # w_f, under the same base and budget
        self.linear = FirstOrder(self.num_dense)
        width = sum(self.embeddings.output_dims().values()) + self.num_dense
        self.dnn = MLP(
            width, model.hidden, dropout=model.dropout, batch_norm=model.batch_norm, out_dim=1
        )

    def interact(
        self, dense: torch.Tensor, embedded: torch.Tensor, first: torch.Tensor | None
    ) -> torch.Tensor:
        assert first is not None
        fm = fm_pairwise(stack_fields(embedded, self.embeddings))  # embedded: (B, F * D)
        deep = self.dnn(torch.cat([embedded, dense], dim=1)).squeeze(1)
        return self.linear(dense, first) + fm + deep
