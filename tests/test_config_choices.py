"""Every enum field of a config takes its plain value and rejects unknown ones by key.

Code compares these fields with `is Member`, so a plain string that slipped through would
silently take the other branch (a `loss="cosine_contrastive"` once trained with softmax).
"""

from __future__ import annotations

import enum
from typing import Any

import pytest
from plexus.models.backbones.base import Backbone, ModelConfig
from plexus.models.embeddings.base import EmbeddingConfig, EmbeddingMethod
from plexus.models.retrieval import (
    HistoryPick,
    KnnEmbedConfig,
    LossKind,
    QueryVariant,
    TwoTowerConfig,
)
from plexus.pipelines.ingest.config import HoldOut, InteractionsConfig, InteractionSplit
from plexus.pipelines.promote import GateMetric, PromoteConfig
from plexus.pipelines.retrieval.train import LrSchedule, RetrievalTrainConfig, TableOptimizer
from plexus.platform.errors import ConfigError
from plexus.serving.config import Batching, ServeConfig

CHOICES: list[tuple[type, dict[str, Any], str, type[enum.Enum], str]] = [
    (ModelConfig, {}, "backbone", Backbone, "model.backbone"),
    (EmbeddingConfig, {}, "method", EmbeddingMethod, "embedding.method"),
    (RetrievalTrainConfig, {}, "loss", LossKind, "train.loss"),
    (RetrievalTrainConfig, {}, "lr_schedule", LrSchedule, "train.lr_schedule"),
    (RetrievalTrainConfig, {}, "optimizer", TableOptimizer, "train.optimizer"),
    (TwoTowerConfig, {}, "history_pick", HistoryPick, "model.history_pick"),
    (InteractionsConfig, {}, "split", InteractionSplit, "data.interactions.split"),
    (InteractionsConfig, {}, "validation_pick", HoldOut, "data.interactions.validation_pick"),
    (KnnEmbedConfig, {}, "query_variant", QueryVariant, "knn_embed.query_variant"),
    (ServeConfig, {"model": "m@champion"}, "batching", Batching, "serve.batching"),
    (PromoteConfig, {}, "metric", GateMetric, "promote.metric"),
]


@pytest.mark.parametrize(("cls", "required", "field", "choices", "key"), CHOICES)
def test_plain_values_become_members_and_unknown_ones_name_the_key(
    cls: type, required: dict[str, Any], field: str, choices: type[enum.Enum], key: str
) -> None:
    for member in choices:
        assert getattr(cls(**required, **{field: member.value}), field) is member
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        cls(**required, **{field: "no-such-choice"})
