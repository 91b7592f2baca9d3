"""CTR backbones (LR, FM, DeepFM, DCN-v2), one file each, selected by `model.backbone`.

Example:
    >>> model = build_ctr_model(ModelConfig(backbone="deepfm", hidden=(64, 64)), EmbeddingConfig(dim=16), spec)
    >>> logits = model(batch.dense, batch.sparse)   # (B,)
"""

from plexus.models.backbones import dcnv2, deepfm, fm, lr  # noqa: F401  (registers the backbones)
from plexus.models.backbones.base import (
    Backbone,
    CTRModel,
    ModelConfig,
    build_ctr_model,
    register_backbone,
    registered_backbones,
)

__all__ = [
    "Backbone",
    "CTRModel",
    "ModelConfig",
    "build_ctr_model",
    "register_backbone",
    "registered_backbones",
]
