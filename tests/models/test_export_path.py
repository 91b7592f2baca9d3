"""`forward_padded` (plain gathers, hash in the graph) equals the TorchRec path, in torch and in
onnxruntime after export: training and serving compute the same logits from the same raw ids."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from plexus.models.backbones import Backbone, ModelConfig, build_ctr_model
from plexus.models.batch import batch_from_arrow, pad_sparse
from plexus.models.embeddings import EmbeddingConfig, EmbeddingMethod, registered_methods
from tiny_ctr_data import onnxruntime_logits, planted_table, tiny_spec

SPARSE = [f.name for f in tiny_spec().sparse]


def _embedding(method: str, budget: float = 0.5, **options) -> EmbeddingConfig:
    """`method` at `budget`, or at 1 when it builds on full tables (its default base)."""
    on_full = EmbeddingConfig(method=method, **options).base_method is EmbeddingMethod.FULL
    return EmbeddingConfig(method=method, dim=4, budget=1.0 if on_full else budget, **options)


def _trained_looking(model: torch.nn.Module) -> torch.nn.Module:
    """Perturb every parameter so a wrong row or column cannot hide behind a tiny init."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model.eval()


@pytest.mark.parametrize("method", [m.value for m in registered_methods()])
@pytest.mark.parametrize("backbone", [Backbone.DEEPFM, Backbone.DCNV2, Backbone.LR], ids=str)
@pytest.mark.parametrize("pooling", ["sum", "mean"])
def test_padded_path_equals_torchrec_path(method: str, backbone: Backbone, pooling: str) -> None:
    torch.manual_seed(0)
    model = build_ctr_model(
        ModelConfig(backbone=backbone, hidden=(8,)),
        _embedding(method, pooling=pooling),
        tiny_spec(),
    )
    model = _trained_looking(model)
    batch = batch_from_arrow(planted_table(64, seed=4), tiny_spec())
    ids, lengths = pad_sparse(batch.sparse, SPARSE)
    with torch.no_grad():
        expected = model(batch.dense, batch.sparse)
        torch.testing.assert_close(model.forward_padded(batch.dense, ids, lengths), expected)


@pytest.mark.parametrize(
    "embedding",
    [
        _embedding("unified", feature_chunks={"tags": 3}, num_tables=2),
        _embedding("hashing", budget=0.9),  # "hour" keeps all 3 rows: its ids pass unhashed
        _embedding("multiplexed", probes=3, pooling="mean"),
    ],
    ids=["unified-unequal-chunks", "hashing-identity-rows", "multiplexed-3-probes"],
)
def test_method_options_through_the_padded_path(embedding: EmbeddingConfig) -> None:
    torch.manual_seed(0)
    model = _trained_looking(
        build_ctr_model(ModelConfig(backbone=Backbone.DCNV2, hidden=(8,)), embedding, tiny_spec())
    )
    batch = batch_from_arrow(planted_table(64, seed=5), tiny_spec())
    ids, lengths = pad_sparse(batch.sparse, SPARSE)
    with torch.no_grad():
        torch.testing.assert_close(
            model.forward_padded(batch.dense, ids, lengths), model(batch.dense, batch.sparse)
        )


@pytest.mark.parametrize(
    "embedding",
    [
        _embedding("unified", chunks=2, num_tables=2),
        pytest.param(_embedding("hashing", budget=0.9), marks=pytest.mark.slow),
        pytest.param(_embedding("full"), marks=pytest.mark.slow),
    ],
    ids=["unified", "hashing", "full"],
)
def test_onnxruntime_serves_the_trained_logits(embedding: EmbeddingConfig, tmp_path) -> None:
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = _trained_looking(
        build_ctr_model(ModelConfig(backbone=Backbone.DEEPFM, hidden=(8,)), embedding, tiny_spec())
    )
    batch = batch_from_arrow(planted_table(64, seed=6), tiny_spec())
    ids, lengths = pad_sparse(batch.sparse, SPARSE, max_length=3)
    served = onnxruntime_logits(model, batch.dense, ids, lengths, tmp_path / "ctr.onnx")
    with torch.no_grad():
        trained = model(batch.dense, batch.sparse).numpy()
    np.testing.assert_allclose(served, trained, rtol=1e-5, atol=1e-5)
