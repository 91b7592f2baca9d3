"""Tiny synthetic features, KJTs and a planted-signal dataset shared by the models tests."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch
from plexus.platform.feature_spec import Encoding, Feature, FeatureKind, FeatureSpec
from torchrec import KeyedJaggedTensor

CARD = 10


def sparse_features() -> tuple[Feature, ...]:
    """Three single-valued fields (10, 10, 3 ids) and one multi-valued field (10 ids, <= 3 each)."""
    single = FeatureKind.CATEGORICAL
    return (
        Feature(name="user", kind=single, encoding=Encoding.VOCAB, cardinality=CARD),
        Feature(name="item", kind=single, encoding=Encoding.VOCAB, cardinality=CARD),
        Feature(
            name="tags",
            kind=FeatureKind.MULTI_CATEGORICAL,
            encoding=Encoding.VOCAB,
            cardinality=CARD,
            max_length=3,
        ),
        Feature(name="hour", kind=single, encoding=Encoding.BUCKETIZE, cardinality=3),
    )


def tiny_spec(num_dense: int = 2) -> FeatureSpec:
    dense = tuple(
        Feature(name=f"x{i}", kind=FeatureKind.NUMERIC, encoding=Encoding.NORMALIZE)
        for i in range(num_dense)
    )
    return FeatureSpec(
        name="tiny",
        label="click",
        features=(*sparse_features()[:2], *dense, *sparse_features()[2:]),
    )


def random_kjt(batch: int, seed: int = 0, *, empty_bags: bool = True) -> KeyedJaggedTensor:
    """Ids for `sparse_features()`, keys in that order; multi-valued lengths in 0..3."""
    g = torch.Generator().manual_seed(seed)
    values, lengths = [], []
    for f in sparse_features():
        if f.is_multi_valued:
            lens = torch.randint(0 if empty_bags else 1, 4, (batch,), generator=g)
        else:
            lens = torch.ones(batch, dtype=torch.int64)
        lengths.append(lens)
        values.append(torch.randint(0, f.cardinality, (int(lens.sum()),), generator=g))
    return KeyedJaggedTensor.from_lengths_sync(
        keys=[f.name for f in sparse_features()],
        values=torch.cat(values),
        lengths=torch.cat(lengths).to(torch.int32),
    )


def planted_table(rows: int, seed: int) -> pa.Table:
    """Encoded rows whose click probability depends on user, item, one tag and x0."""
    rng = np.random.default_rng(seed)
    user = rng.integers(0, CARD, rows)
    item = rng.integers(0, CARD, rows)
    hour = rng.integers(0, 3, rows)
    lens = rng.integers(0, 4, rows)
    tags = [rng.integers(0, CARD, n).tolist() for n in lens]
    x = rng.normal(size=(rows, 2)).astype(np.float32)
    effect = np.linspace(-2.0, 2.0, CARD)
    logit = effect[user] - effect[item] + np.array([1.5 * (3 in t) for t in tags]) + x[:, 0]
    click = (rng.random(rows) < 1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
    return pa.table(
        {
            "user": pa.array(user, pa.int64()),
            "item": pa.array(item, pa.int64()),
            "x0": pa.array(x[:, 0]),
            "x1": pa.array(x[:, 1]),
            "tags": pa.array(tags, pa.list_(pa.int64())),
            "hour": pa.array(hour, pa.int64()),
            "click": pa.array(click),
        }
    )


def onnxruntime_logits(model, dense: torch.Tensor, ids: torch.Tensor, lengths: torch.Tensor, path):
    """Export `model.forward_padded` (batch dimension dynamic) to ONNX at `path` and run it in
    onnxruntime on the same inputs: the logits a served model computes, as numpy."""
    import onnxruntime as ort

    class Served(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, dense, ids, lengths):  # noqa: ANN001, ANN202
            return self.model.forward_padded(dense, ids, lengths)

    rows = torch.export.Dim("rows")
    torch.onnx.export(
        Served(),
        (dense, ids, lengths),
        str(path),
        dynamo=True,
        input_names=["dense", "ids", "lengths"],
        dynamic_shapes=({0: rows}, {0: rows}, {0: rows}),
        verbose=False,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {"dense": dense.numpy(), "ids": ids.numpy(), "lengths": lengths.numpy()}
    return session.run(None, feeds)[0]
