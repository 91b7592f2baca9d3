"""Prediction and metrics over Parquet shards, in-process (no Ray), for test sets and `plexus evaluate`."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from plexus.models.batch import Batch, batch_from_arrow
from plexus.pipelines.train.metrics import auc, logloss
from plexus.platform.feature_spec import FeatureSpec


def iter_batches(shards: Sequence[Path], spec: FeatureSpec, batch_size: int) -> Iterator[Batch]:
    """Model batches read straight from Parquet shards, in file order."""
    for shard in shards:
        for record_batch in pq.ParquetFile(shard).iter_batches(batch_size=batch_size):
            yield batch_from_arrow(pa.Table.from_batches([record_batch]), spec)


@torch.no_grad()
def predict(model: torch.nn.Module, batches: Iterable[Batch]) -> tuple[np.ndarray, np.ndarray]:
    """Labels and predicted click probabilities over all batches, with the model in eval mode."""
    was_training = model.training
    model.eval()
    labels, probabilities = [], []
    try:
        for batch in batches:
            probabilities.append(torch.sigmoid(model(batch.dense, batch.sparse)).numpy())
            labels.append(batch.labels.numpy())
    finally:
        model.train(was_training)
    if not labels:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    return np.concatenate(labels), np.concatenate(probabilities)


def evaluate(model: torch.nn.Module, batches: Iterable[Batch]) -> dict[str, float]:
    """AUC, logloss and row count of `model` over `batches`."""
    labels, probabilities = predict(model, batches)
    return {
        "auc": auc(labels, probabilities),
        "logloss": logloss(labels, probabilities),
        "rows": float(labels.size),
    }
