"""The two-tower training loop (one process): shuffled (user, positive) pairs, shared uniform
negatives, sparse Adam on the embedding tables. `train_worker` runs it inside a Ray Train worker.

The towers' tables are the platform's `EmbeddingTables` (`embedding.method`); their lookups run
inside `sparse_lookups()`, so the table weights get sparse gradients and `SparseAdam` updates
only the rows a step used (a dense table gradient is ~10x slower here). `train.optimizer=adam`
trains the tables with dense gradients and (fused) Adam instead, as SimpleX's official code
does. The embedding methods' training protocol is honoured as in the CTR loop: `extra_loss` is
added to the loss, `parameter_groups` get their own optimisers, `after_step` runs after every
step, and a method's training stages run in turn (`retrieval_stages`: all but search stages).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import enum
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from plexus.models.embeddings import EmbeddingConfig, protocol
from plexus.models.embeddings.protocol import Stage, StageKind
from plexus.models.retrieval import LossKind, TwoTower, TwoTowerConfig, retrieval_loss
from plexus.models.retrieval.sparse import retrieval_optimizers, sparse_lookups
from plexus.models.threads import restores_cpu_state, use_cpu_threads
from plexus.pipelines.retrieval.data import Interactions
from plexus.platform.config import coerce_choice
from plexus.platform.errors import ConfigError

STATE_FILE = "train_state.pt"


class LrSchedule(enum.StrEnum):
    """`constant`: `lr` throughout; `cosine`: from `lr` down to 0 over all steps (per batch).
    Either is multiplied by `lr_drop_factor` after each epoch in `lr_drops`: constant with drops
    is SimpleX's schedule (its official runs divide the rate by 10 when the metric stalls, worth
    +0.01 Recall@20 on Gowalla in its MF-CCL log)."""

    CONSTANT = "constant"
    COSINE = "cosine"


class TableOptimizer(enum.StrEnum):
    """`sparse_adam`: `SparseAdam` steps only the rows a batch looked up (their moments too);
    `adam`: dense Adam over whole tables, as SimpleX's official code trains them: every row
    keeps moving on its momentum after a use, and unused rows' second moments decay. Dense
    table gradients cost a pass over every table per step."""

    SPARSE_ADAM = "sparse_adam"
    ADAM = "adam"


@dataclasses.dataclass(frozen=True, kw_only=True)
class RetrievalTrainConfig:
    """Optimisation of the two-tower model (SimpleX-style cosine contrastive loss by default)."""

    epochs: int = 20
    batch_size: int = 1024
    lr: float = 5e-3
    lr_schedule: LrSchedule = LrSchedule.CONSTANT
    lr_drops: tuple[int, ...] = ()  # epochs after which the rate is multiplied by the factor
    lr_drop_factor: float = 0.1
    optimizer: TableOptimizer = TableOptimizer.SPARSE_ADAM
    num_negatives: int = 1024
    loss: LossKind = LossKind.COSINE_CONTRASTIVE
    margin: float = 0.9
    negative_weight: float = 150.0
    temperature: float = 0.07
    threads: int = 2
    seed: int = 0
    eval_every: int = 0  # epochs between in-training Recall@20 checks; 0 = only at the end
    max_failures: int = 1  # Ray Train worker restarts from the last checkpoint before failing

    def __post_init__(self) -> None:
        for key in ("epochs", "batch_size", "num_negatives", "threads"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key}: must be >= 1, got {getattr(self, key)}")
        if self.max_failures < 0:
            raise ConfigError(f"train.max_failures: must be >= 0, got {self.max_failures}")
        if self.lr <= 0:
            raise ConfigError(f"train.lr: must be > 0, got {self.lr}")
        if self.temperature <= 0:
            raise ConfigError(f"train.temperature: must be > 0, got {self.temperature}")
        coerce_choice(self, "loss", LossKind, "train.loss")
        coerce_choice(self, "lr_schedule", LrSchedule, "train.lr_schedule")
        coerce_choice(self, "optimizer", TableOptimizer, "train.optimizer")
        if any(not 1 <= e < self.epochs for e in self.lr_drops):
            raise ConfigError(
                f"train.lr_drops: each must be an epoch in [1, train.epochs={self.epochs}), "
                f"got {list(self.lr_drops)}"
            )
        if not 0.0 < self.lr_drop_factor < 1.0:
            raise ConfigError(f"train.lr_drop_factor: must be in (0, 1), got {self.lr_drop_factor}")


def build_two_tower(
    data: Interactions, model_cfg: TwoTowerConfig, embedding: EmbeddingConfig | None = None
) -> TwoTower:
    """The untrained towers for `data`: its users and items, with its side features (and
    catalog items) when it has them and `model.side_features` is on."""
    return TwoTower(
        model_cfg,
        num_users=data.num_users,
        num_items=data.num_items,
        embedding=embedding,
        side=data.side,
    )


def retrieval_stages(model: TwoTower) -> tuple[Stage, ...]:
    """The training stages of the towers' tables (one for a plain method), each trained on the
    training pairs by this loop. Refused with the reason: a `SEARCH` stage (OptEmbed's
    evolution and DNIS's pruning score candidates by a CTR model's validation AUC) and a stage
    that trains only the tables' own groups (`freeze_rest`: DNIS's bi-level search on
    validation batches, which the retrieval loop does not draw)."""
    stages = protocol.model_stages(model)
    for stage in stages:
        if stage.kind is StageKind.SEARCH or stage.freeze_rest:
            why = (
                "searches"
                if stage.kind is StageKind.SEARCH
                else "trains its search on validation batches"
            )
            raise ConfigError(
                f"embedding.method={model.embedding.method.value}: its {stage.name!r} stage "
                f"{why}, which the retrieval job does not run (of its stages "
                f"{[s.name for s in stages]}); the retrieval towers train methods whose stages "
                "all train on the training pairs (the plain methods, dsl, magnitude_pruning)"
            )
    return stages


@restores_cpu_state()
def train_two_tower(
    data: Interactions,
    model_cfg: TwoTowerConfig,
    train_cfg: RetrievalTrainConfig,
    *,
    on_epoch: Callable[[dict[str, float], TwoTower], None] | None = None,
    on_checkpoint: Callable[[dict[str, Any]], None] | None = None,
    resume: dict[str, Any] | None = None,
    embedding: EmbeddingConfig | None = None,
) -> tuple[TwoTower, list[dict[str, float]]]:
    """Train on all training pairs of `data`; returns the model and one record per epoch.

    The user tower sees the user's last `history_len` training items with the positive itself
    masked out, so it learns to predict an item from the *rest* of the history.

    A method with several training stages (`retrieval_stages`; magnitude pruning: dense, then
    fine-tuned under the pruned mask) runs them in turn, each from `protocol.stage_model` with
    new optimisers and its own schedule over `stage.epochs` (default `train.epochs`); their
    records carry the `stage` index and count epochs on across stages.

    After every epoch `on_checkpoint` gets the whole training state (model, optimisers, schedule,
    random generators, history, stage); passed back as `resume`, training continues after that
    epoch exactly as if it had never stopped.
    """
    torch.manual_seed(train_cfg.seed)
    use_cpu_threads(min(train_cfg.threads, 2))
    rng = np.random.default_rng(train_cfg.seed)

    def build() -> TwoTower:
        return build_two_tower(data, model_cfg, embedding)

    model = build()
    stages = retrieval_stages(model)
    history: list[dict[str, float]] = []
    first = 0
    if resume is not None:
        rng.bit_generator.state = resume["numpy_rng"]
        history = list(resume["history"])
        first = int(resume.get("stage", 0))
    for index in range(first, len(stages)):
        if index > first:  # a new stage (a resumed one starts from its checkpoint)
            model = cast(TwoTower, protocol.stage_model(
                build, train_cfg.seed, stages[index], index, model.state_dict()
            ))  # fmt: skip
        _train_stage(
            model,
            data,
            model_cfg,
            train_cfg,
            rng,
            history,
            stage=index if len(stages) > 1 else None,
            epochs=stages[index].epochs or train_cfg.epochs,
            on_epoch=on_epoch,
            on_checkpoint=on_checkpoint,
            resume=resume if index == first else None,
        )
    return model.eval(), history


def _train_stage(
    model: TwoTower,
    data: Interactions,
    model_cfg: TwoTowerConfig,
    train_cfg: RetrievalTrainConfig,
    rng: np.random.Generator,
    history: list[dict[str, float]],
    *,
    stage: int | None,
    epochs: int,
    on_epoch: Callable[[dict[str, float], TwoTower], None] | None,
    on_checkpoint: Callable[[dict[str, Any]], None] | None,
    resume: dict[str, Any] | None,
) -> None:
    """Train `model` for the epochs of one stage that `history` lacks, appending a record
    each (`stage`: its index, recorded when the method has several)."""
    histories = torch.from_numpy(data.model_histories(model_cfg))
    users = np.repeat(np.arange(data.num_users + 1), np.diff(data.train_indptr))
    items = data.train_items
    lookups = sparse_lookups()
    with lookups, torch.no_grad():  # which weights the towers look up: they get sparse grads
        one = torch.ones(1, 1, dtype=torch.int64)
        model.user_vectors(one[0], one, one.float())
        model.item_vectors(torch.ones(1, dtype=torch.int64))
    # Dense Adam: the tables get dense gradients, so the forward leaves the lookups as they are.
    dense_tables = train_cfg.optimizer is TableOptimizer.ADAM
    forward = contextlib.nullcontext() if dense_tables else lookups
    optimizers = retrieval_optimizers(model, lookups, lr=train_cfg.lr, dense_tables=dense_tables)
    steps_per_epoch = -(-users.size // train_cfg.batch_size)
    schedules = [_lr_schedule(opt, train_cfg, steps_per_epoch, epochs) for opt in optimizers]
    if resume is not None:
        model.load_state_dict(resume["model"])
        for opt, saved in zip(optimizers, resume["optimizers"], strict=True):
            opt.load_state_dict(saved)
        for schedule, saved in zip(schedules, resume["schedules"], strict=True):
            schedule.load_state_dict(saved)
        torch.set_rng_state(resume["torch_rng"])
    done = sum(1 for h in history if h.get("stage") == stage)
    for _ in range(done + 1, epochs + 1):
        start = time.perf_counter()
        order = rng.permutation(users.size)
        total = 0.0
        steps = 0
        update_seconds = 0.0  # backward, optimiser steps and `after_step` (DSL's masks)
        model.train()
        for lo in range(0, order.size, train_cfg.batch_size):
            idx = order[lo : lo + train_cfg.batch_size]
            u = torch.from_numpy(users[idx])
            pos = torch.from_numpy(items[idx])
            hist = histories[u]
            mask = ((hist > 0) & (hist != pos.unsqueeze(1))).float()
            neg = torch.randint(1, data.num_items + 1, (train_cfg.num_negatives,))
            with forward:
                uvec = model.user_vectors(u, hist, mask)
                loss = retrieval_loss(
                    train_cfg.loss,
                    uvec,
                    model.item_vectors(pos),
                    model.item_vectors(neg),
                    margin=train_cfg.margin,
                    negative_weight=train_cfg.negative_weight,
                    temperature=train_cfg.temperature,
                )
                if (extra := protocol.extra_loss(model)) is not None:
                    loss = loss + extra
            tick = time.perf_counter()
            for opt in optimizers:
                opt.zero_grad()
            loss.backward()
            for opt in optimizers:
                opt.step()
            protocol.after_step(model, optimizers, total_steps=epochs * steps_per_epoch)
            update_seconds += time.perf_counter() - tick
            for schedule in schedules:
                schedule.step()
            total += float(loss.detach())
            steps += 1
        record = {"epoch": float(len(history) + 1), "loss": total / max(steps, 1)}
        if stage is not None:
            record["stage"] = stage
        record["lr"] = optimizers[-1].param_groups[0]["lr"]
        record["epoch_seconds"] = time.perf_counter() - start
        record["step_ms"] = 1000.0 * record["epoch_seconds"] / max(steps, 1)
        record["update_ms"] = 1000.0 * update_seconds / max(steps, 1)  # backward and updates
        if on_epoch is not None:
            on_epoch(record, model)
        history.append(record)
        if on_checkpoint is not None:
            on_checkpoint(copy.deepcopy({  # a snapshot: state dicts alias the live tensors
                "model": model.state_dict(),
                "optimizers": [opt.state_dict() for opt in optimizers],
                "schedules": [schedule.state_dict() for schedule in schedules],
                "numpy_rng": rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(),
                "history": history,
                "stage": stage or 0,
            }))  # fmt: skip


def _lr_schedule(
    optimizer: torch.optim.Optimizer, cfg: RetrievalTrainConfig, steps_per_epoch: int, epochs: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step multiplier of the base learning rate over a stage of `epochs`."""
    total_steps = epochs * steps_per_epoch

    def factor(step: int) -> float:
        drops = sum(step >= e * steps_per_epoch for e in cfg.lr_drops)
        if cfg.lr_schedule is LrSchedule.COSINE:
            step = min(step, total_steps)
            return cfg.lr_drop_factor**drops * 0.5 * (1.0 + math.cos(math.pi * step / total_steps))
        return cfg.lr_drop_factor**drops

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def epoch_reporter(
    data: Interactions, eval_every: int
) -> Callable[[dict[str, float], TwoTower], None]:
    """An `on_epoch` that prints each epoch's record, with Recall@20 every `eval_every` epochs."""

    def on_epoch(record: dict[str, float], model: TwoTower) -> None:
        if eval_every and int(record["epoch"]) % eval_every == 0:
            from plexus.pipelines.retrieval.evaluate import evaluate_tower

            record.update(evaluate_tower(model, data, ks=(20,)))  # the next epoch re-enters train()
        print(f"[retrieval] {record}", flush=True)

    return on_epoch


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train entry: read the ingested shards (`config["data_path"]`; the validation task of
    them with `config["validation"]`) and train, reporting a checkpoint of the whole training
    state every epoch; resumes from Ray's checkpoint after a worker restart, or from
    `config["resume_from"]` (a crashed earlier run's latest checkpoint folder)."""
    import tempfile

    import ray.train
    from plexus.pipelines.retrieval.data import load_interactions

    data = load_interactions(config["data_path"])
    if config.get("validation"):
        data = data.validation()
    model_cfg: TwoTowerConfig = config["model"]
    train_cfg: RetrievalTrainConfig = config["train"]
    checkpoint = ray.train.get_checkpoint()
    resume_dir = checkpoint.to_directory() if checkpoint else config.get("resume_from")
    resume = torch.load(Path(resume_dir) / STATE_FILE, weights_only=False) if resume_dir else None
    if resume is not None:
        print(f"[retrieval] resumed after epoch {len(resume['history'])}", flush=True)

    reported = False

    def on_checkpoint(state: dict[str, Any]) -> None:
        nonlocal reported
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(state, Path(tmp) / STATE_FILE)
            ray.train.report(
                state["history"][-1], checkpoint=ray.train.Checkpoint.from_directory(tmp)
            )
        reported = True

    train_two_tower(
        data,
        model_cfg,
        train_cfg,
        on_epoch=epoch_reporter(data, train_cfg.eval_every),
        on_checkpoint=on_checkpoint,
        resume=resume,
        embedding=config.get("embedding"),
    )
    if not reported and resume is not None:  # the crashed run had already finished every epoch
        on_checkpoint(resume)


def latest_checkpoint(storage: Path) -> str | None:
    """The folder of the newest epoch checkpoint that an earlier (crashed) run left, if any."""
    found = sorted(storage.glob("**/checkpoint_*/" + STATE_FILE)) if storage.exists() else []
    if not found:
        return None
    # mmap: only the history is read, not the model and optimiser tensors beside it.
    epochs = {p: len(torch.load(p, weights_only=False, mmap=True)["history"]) for p in found}
    return str(max(found, key=lambda p: (epochs[p], str(p))).parent)
