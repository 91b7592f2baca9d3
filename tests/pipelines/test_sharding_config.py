"""Which models shard, and `train.sharding` validation (no processes started: fast)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from plexus.models.backbones import Backbone, ModelConfig, build_ctr_model
from plexus.models.embeddings import EmbeddingConfig
from plexus.pipelines.train.sharding import ShardingConfig, replication_reason, unknown_plan_keys
from plexus.platform.config import from_dict
from plexus.platform.errors import ConfigError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from tiny_ctr_data import tiny_spec  # noqa: E402


def _model(method: str, **options):
    embedding = EmbeddingConfig(method=method, dim=8, **options)
    return build_ctr_model(
        ModelConfig(backbone=Backbone.DEEPFM, hidden=(8,)), embedding, tiny_spec()
    )


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("full", {}),
        ("hashing", {"budget": 0.5}),
        ("multiplexed", {"budget": 0.5}),
        ("unified", {"budget": 0.5}),
    ],
)
def test_plain_tables_shard_through_torchrec(method: str, options: dict) -> None:
    assert replication_reason(_model(method, **options)) is None


@pytest.mark.parametrize("method", ["dsl", "magnitude_pruning", "optembed", "dnis"])
def test_learned_methods_are_replicated_with_a_reason(method: str) -> None:
    reason = replication_reason(_model(method))
    assert reason is not None and "fused sharded kernels" in reason


def test_a_plan_key_must_name_a_table_of_the_model() -> None:
    config = ShardingConfig(plan={"embeddings.ebc.t_user": "table_wise", "t_item": "column_wise"})
    assert list(unknown_plan_keys(_model("full"), config)) == ["t_item"]


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"types": ["diagonal"]}, "train.sharding.types"),
        ({"plan": {"embeddings.ebc.t_user": "rows"}}, "train.sharding.plan"),
        ({"optimizer": "lamb"}, "train.sharding.optimizer"),
        ({"lr": -1.0}, "train.sharding.lr"),
        ({"column_width": 6}, "train.sharding.column_width"),
        ({"types": []}, "train.sharding.types"),
    ],
)
def test_bad_sharding_settings_name_their_key(section: dict, key: str) -> None:
    from plexus.pipelines.config import TrainConfig

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        from_dict(TrainConfig, {"workers": 2, "sharding": section}, path="train")
