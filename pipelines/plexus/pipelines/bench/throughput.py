"""Training throughput of several models measured back to back, in one process.

Examples/s taken from jobs that ran minutes apart compare the machine's load as much as the
models. Here every model trains on the same pre-built batches (no Ray, no data loading: the
cost of the model and its optimiser alone), the models take turns pass by pass, and each keeps
its best pass, so a burst of load elsewhere slows one pass of every model rather than one model.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pyarrow.parquet as pq
import torch
from plexus.models.backbones import ModelConfig, build_ctr_model
from plexus.models.batch import Batch, batch_from_arrow
from plexus.models.embeddings import EmbeddingConfig, protocol
from plexus.platform.feature_spec import FeatureSpec


def load_batches(
    shards: Sequence[Path], spec: FeatureSpec, *, batch_size: int, limit: int | None = None
) -> list[Batch]:
    """The first `limit` (all if None) full batches of the shards, as model inputs."""
    table = pq.read_table([str(s) for s in shards]) if len(shards) > 1 else pq.read_table(shards[0])
    if limit is not None:
        table = table.slice(0, limit * batch_size)
    starts = range(0, table.num_rows - batch_size + 1, batch_size) or range(1)
    return [batch_from_arrow(table.slice(i, batch_size), spec) for i in starts]


def train_step(
    model: torch.nn.Module, *, lr: float, total_steps: int | None = None
) -> Callable[[Batch], None]:
    """One step of the CTR loss on a batch, as the training loop takes it: a learned method's
    extra loss, its own optimisers and its after-step hook included (the first stage's), with
    `total_steps` the steps the caller plans (a schedule over training, e.g. DSL's)."""
    optimizers = protocol.build_optimizers(model, lr=lr, weight_decay=0.0)
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def step(batch: Batch) -> None:
        loss = loss_fn(model(batch.dense, batch.sparse), batch.labels)
        protocol.training_step(model, loss, optimizers, total_steps=total_steps)

    return step


def interleaved_examples_per_s(
    steps: Mapping[str, Callable[[Batch], None]],
    batches: Sequence[Batch],
    *,
    passes: int = 4,
    warmup: int = 3,
) -> dict[str, float]:
    """Best-of-`passes` examples/s of each named step function over `batches`, round-robin."""
    examples = sum(b.labels.numel() for b in batches)
    for step in steps.values():
        for batch in batches[:warmup]:
            step(batch)
    best = dict.fromkeys(steps, 0.0)
    for _ in range(passes):
        for name, step in steps.items():
            started = time.perf_counter()
            for batch in batches:
                step(batch)
            best[name] = max(best[name], examples / (time.perf_counter() - started))
    return best


def embedding_throughput(
    model: ModelConfig,
    embeddings: Mapping[str, EmbeddingConfig],
    spec: FeatureSpec,
    batches: Sequence[Batch],
    *,
    lr: float = 1e-3,
    seed: int = 0,
    passes: int = 4,
) -> dict[str, float]:
    """Examples/s of `model` over each named embedding config, measured back to back."""
    steps = {}
    planned = (passes + 1) * len(batches)  # warm-up and passes: DSL updates its masks as in a job
    for name, embedding in embeddings.items():
        torch.manual_seed(seed)
        net = build_ctr_model(model, embedding, spec)
        steps[name] = train_step(net, lr=lr, total_steps=planned)
    return interleaved_examples_per_s(steps, batches, passes=passes)


__all__ = ["embedding_throughput", "interleaved_examples_per_s", "load_batches", "train_step"]
