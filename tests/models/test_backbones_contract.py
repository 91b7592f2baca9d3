"""One contract every registered backbone passes: shapes, gradients, and learning a planted signal."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from plexus.models.backbones import (
    Backbone,
    ModelConfig,
    build_ctr_model,
    registered_backbones,
)
from plexus.models.batch import batch_from_arrow
from plexus.models.embeddings import EmbeddingConfig, EmbeddingMethod
from plexus.platform.errors import ConfigError
from sklearn.metrics import roc_auc_score
from tiny_ctr_data import planted_table, tiny_spec

SMALL = {"hidden": (16, 16), "cross_layers": 2}


def _model(backbone: Backbone, embedding: EmbeddingConfig | None = None, **options):
    torch.manual_seed(0)
    config = ModelConfig(backbone=backbone, **{**SMALL, **options})
    return build_ctr_model(config, embedding or EmbeddingConfig(dim=4), tiny_spec())


def test_every_backbone_is_registered() -> None:
    assert set(registered_backbones()) == set(Backbone)


@pytest.mark.parametrize("backbone", list(Backbone), ids=lambda b: b.value)
@pytest.mark.parametrize("batch_norm", [False, True], ids=["plain", "bn"])
def test_forward_shape_and_backward(backbone: Backbone, batch_norm: bool) -> None:
    model = _model(backbone, batch_norm=batch_norm, dropout=0.1)
    batch = batch_from_arrow(planted_table(32, seed=0), tiny_spec())
    logits = model(batch.dense, batch.sparse)
    assert logits.shape == (32,) and logits.dtype == torch.float32
    torch.nn.functional.binary_cross_entropy_with_logits(logits, batch.labels).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None for g in grads)
    assert all(torch.isfinite(g).all() for g in grads)
    assert model.embeddings.num_parameters() > 0
    assert model.embedding_parameters() >= model.embeddings.num_parameters()


def _train_auc(model: torch.nn.Module, steps: int = 300) -> float:
    """Adam on 256-row batches of a 4096-row planted table, then AUC on 2048 fresh rows."""
    spec = tiny_spec()
    table = planted_table(4096, seed=1)
    batches = [batch_from_arrow(table.slice(i, 256), spec) for i in range(0, 4096, 256)]
    test = batch_from_arrow(planted_table(2048, seed=2), spec)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for step in range(steps):
        batch = batches[step % len(batches)]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            model(batch.dense, batch.sparse), batch.labels
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        scores = model(test.dense, test.sparse).numpy()
    return float(roc_auc_score(test.labels.numpy(), scores))


@pytest.mark.parametrize("backbone", list(Backbone), ids=lambda b: b.value)
def test_learns_a_planted_signal(backbone: Backbone) -> None:
    """The labels follow user, item, one tag and x0 (Bayes AUC ~0.85): Adam must get well past 0.5."""
    assert _train_auc(_model(backbone)) > 0.75


def test_dcnv2_learns_with_unified_chunks_of_different_widths() -> None:
    embedding = EmbeddingConfig(
        method=EmbeddingMethod.UNIFIED, dim=4, budget=0.5, feature_chunks={"user": 2, "item": 2}
    )
    model = _model(Backbone.DCNV2, embedding)
    assert len(set(model.embeddings.output_dims().values())) == 2
    assert _train_auc(model) > 0.75


@pytest.mark.parametrize("backbone", [Backbone.FM, Backbone.DEEPFM], ids=lambda b: b.value)
def test_fm_backbones_reject_unequal_widths(backbone: Backbone) -> None:
    embedding = EmbeddingConfig(
        method=EmbeddingMethod.UNIFIED, dim=4, budget=0.5, feature_chunks={"user": 2}
    )
    with pytest.raises(ConfigError, match="same embedding width"):
        _model(backbone, embedding)


def test_fm_pairwise_matches_the_explicit_sum() -> None:
    from plexus.models.layers.interactions import fm_pairwise

    fields = torch.randn(3, 5, 4, dtype=torch.float64)
    explicit = sum((fields[:, i] * fields[:, j]).sum(1) for i in range(5) for j in range(i + 1, 5))
    torch.testing.assert_close(fm_pairwise(fields), explicit)


def test_cross_layer_follows_dcnv2() -> None:
    from plexus.models.layers.interactions import CrossNetV2

    net = CrossNetV2(6, num_layers=2)
    x0 = torch.randn(3, 6)
    x1 = x0 * net.layers[0](x0) + x0
    torch.testing.assert_close(net(x0), x0 * net.layers[1](x1) + x1)


def test_model_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match="model.hidden"):
        ModelConfig(hidden=(0,))
    with pytest.raises(ConfigError, match="model.dropout"):
        ModelConfig(dropout=1.0)
    with pytest.raises(ConfigError, match="model.backbone"):
        ModelConfig(backbone="xdeepfm")


def test_lr_uses_one_weight_per_id() -> None:
    model = _model(Backbone.LR)
    assert model.embeddings.num_parameters() == 10 + 10 + 10 + 3
    assert np.isclose(sum(p.numel() for p in model.parameters()), 33 + 2 + 1)


def test_first_order_budget_cuts_the_linear_tables_alone() -> None:
    full = _model(Backbone.DEEPFM)
    cut = _model(Backbone.DEEPFM, EmbeddingConfig(dim=4, first_order_budget=0.25))
    assert cut.embeddings.num_parameters() == full.embeddings.num_parameters() == 33 * 4
    assert full.first_order.num_parameters() == 33  # one weight per id
    assert abs(cut.first_order.num_parameters() - 0.25 * 33) <= 1  # one shared table, 1 wide
    assert cut.embedding_bytes() < full.embedding_bytes()
    assert _train_auc(cut) > 0.75
    with pytest.raises(ConfigError, match="embedding.first_order_budget"):
        EmbeddingConfig(first_order_budget=0.0)


def test_the_tables_take_their_own_weight_decay_apart_from_the_network() -> None:
    from plexus.models.embeddings import protocol

    model = _model(Backbone.DEEPFM)
    table_ids = {id(p) for t in protocol.embedding_tables(model) for p in t.parameters()}
    (shared,) = protocol.build_optimizers(model, lr=1e-3, weight_decay=1e-5)
    assert [g["weight_decay"] for g in shared.param_groups] == [1e-5]  # one group, as before

    (split,) = protocol.build_optimizers(model, lr=1e-3, weight_decay=1e-5, table_weight_decay=0.1)
    tables, dense = split.param_groups
    assert tables["weight_decay"] == 0.1 and dense["weight_decay"] == 1e-5
    assert {id(p) for p in tables["params"]} == table_ids
    assert not table_ids & {id(p) for p in dense["params"]} and dense["params"]

    batch = batch_from_arrow(planted_table(64, seed=0), tiny_spec())
    norms = {}
    for decay in (0.0, 1.0):
        model = _model(Backbone.DEEPFM)
        (adam,) = protocol.build_optimizers(
            model, lr=1e-2, weight_decay=0.0, table_weight_decay=decay
        )
        for _ in range(50):
            adam.zero_grad()
            logits = model(batch.dense, batch.sparse)
            torch.nn.functional.binary_cross_entropy_with_logits(logits, batch.labels).backward()
            adam.step()
        norms[decay] = sum(
            p.norm() for t in protocol.embedding_tables(model) for p in t.parameters()
        )
    assert norms[1.0] < 0.5 * norms[0.0]  # the decay reaches the tables
