"""The two-tower training loop (one process): shuffled (user, positive) pairs, shared uniform
negatives, sparse Adam on the embedding tables. `train_worker` runs it inside a Ray Train worker.

The towers' tables are the platform's `EmbeddingTables` (`embedding.method`); their lookups run
inside `sparse_lookups()`, so the table weights get sparse gradients and `SparseAdam` updates
only the rows a step used (a dense table gradient is ~10x slower here). `train.optimizer=adam`
trains the tables with dense gradients and (fused) Adam instead, as SimpleX's official code
does. The embedding methods' training protocol is honoured as in the CTR loop: `extra_loss` is
added to the loss, `parameter_groups` get their own optimisers (those stepped on validation
batches on the validation task's held-out pairs), `after_step` runs after every step, and a
method's stages run in turn (`retrieval_stages`; its search on the validation task).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import enum
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from plexus.models.embeddings import EmbeddingConfig, protocol
from plexus.models.embeddings.protocol import BatchSource, Stage, StageKind
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


def retrieval_stages(model: TwoTower, data: Interactions | None = None) -> tuple[Stage, ...]:
    """The stages of the towers' tables (one for a plain method), which `train_two_tower` runs.

    A method that searches (OptEmbed's evolution, DNIS's pruning after its bi-level search)
    finds its architecture on the validation task (`Interactions.validation`): every stage up to
    its last `SEARCH` stage trains on the training lists without the hold-out and is scored on
    it, the stages after it train on the whole lists. Given `data`, such a method is refused
    here, before any training, when `data` has no hold-out or is a validation task itself."""
    stages = protocol.model_stages(model)
    if data is not None and last_search(stages) >= 0:
        method = model.embedding.method.value
        if data.validation_task:
            raise ConfigError(
                f"embedding.method={method} searches on the validation hold-out, which this "
                "run already trains and scores on (a tuning run); tune a plain method"
            )
        if not data.has_holdout:
            raise ConfigError(
                f"embedding.method={method} searches on the validation hold-out, which "
                f"{data.name} lacks; set data.interactions.validation_users > 0"
            )
    return stages


def last_search(stages: tuple[Stage, ...]) -> int:
    """The index of the last `SEARCH` stage (-1: none): the stages up to it use the validation
    task."""
    return max((i for i, s in enumerate(stages) if s.kind is StageKind.SEARCH), default=-1)


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

    A method with several stages (`retrieval_stages`) runs them in turn, each from
    `protocol.stage_model`: a training stage with new optimisers and its own schedule over
    `stage.epochs` (default `train.epochs`), its records carrying the `stage` index and epochs
    counted on across stages; a search stage scores candidates by Recall@20 on the validation
    hold-out (`protocol.search`: each tower in turn) and adds its metrics, prefixed with the
    stage's name, to the record of the epoch before it.

    After every epoch `on_checkpoint` gets the whole training state (model, optimisers, schedule,
    random generators, history, stage); passed back as `resume`, training continues after that
    epoch exactly as if it had never stopped (a search stage after it runs again).
    """
    torch.manual_seed(train_cfg.seed)
    use_cpu_threads(min(train_cfg.threads, 2))
    rng = np.random.default_rng(train_cfg.seed)

    def build() -> TwoTower:
        return build_two_tower(data, model_cfg, embedding)

    model = build()
    stages = retrieval_stages(model, data)
    searched_until = last_search(stages)
    validation = data.validation() if searched_until >= 0 else data
    history: list[dict[str, float]] = []
    first = 0
    if resume is not None:
        rng.bit_generator.state = resume["numpy_rng"]
        history = list(resume["history"])
        first = int(resume.get("stage", 0))
        # Before the stage's optimisers are built: which parameters a method optimises can
        # depend on its state (OptEmbed's thresholds stop training once its rows are frozen).
        model.load_state_dict(resume["model"])
    for index in range(first, len(stages)):
        stage = stages[index]
        task = validation if index <= searched_until else data
        if index > first:  # a new stage (a resumed one starts from its checkpoint)
            model = cast(TwoTower, protocol.stage_model(
                build, train_cfg.seed, stage, index, model.state_dict()
            ))  # fmt: skip
        if stage.kind is StageKind.SEARCH:
            metrics = protocol.search(model, stage, recall_fitness(model, task))
            print(f"[retrieval] {stage.name}: {metrics}", flush=True)
            if history:
                history[-1].update({f"{stage.name}.{k}": float(v) for k, v in metrics.items()})
            continue
        _train_stage(
            model,
            task,
            model_cfg,
            train_cfg,
            rng,
            history,
            stage=stage,
            index=index if len(stages) > 1 else None,
            epochs=stage.epochs or train_cfg.epochs,
            on_epoch=on_epoch,
            on_checkpoint=on_checkpoint,
            resume=resume if index == first else None,
        )
    return model.eval(), history


def recall_fitness(model: TwoTower, task: Interactions) -> protocol.Evaluate:
    """A search's fitness on `task` (the validation task): each candidate given to `model`,
    then its Recall@20 over the task's held-out items (full ranking, training items excluded)."""
    from plexus.pipelines.retrieval.evaluate import evaluate_tower

    def evaluate(candidates: list[Any]) -> list[float]:
        scores = []
        for candidate in candidates:
            protocol.apply_candidate(model, candidate)
            scores.append(evaluate_tower(model, task, ks=(20,))["recall@20"])
        return scores

    return evaluate


def _train_stage(
    model: TwoTower,
    data: Interactions,
    model_cfg: TwoTowerConfig,
    train_cfg: RetrievalTrainConfig,
    rng: np.random.Generator,
    history: list[dict[str, float]],
    *,
    stage: Stage,
    index: int | None,
    epochs: int,
    on_epoch: Callable[[dict[str, float], TwoTower], None] | None,
    on_checkpoint: Callable[[dict[str, Any]], None] | None,
    resume: dict[str, Any] | None,
) -> None:
    """Train `model` for the epochs of `stage` that `history` lacks, appending a record each
    (`index`: the stage's, recorded when the method has several). Parameter groups stepped on
    validation batches (DNIS's alpha) step after each training step on a batch of the
    validation task's held-out pairs (`data` is then that task). Every optimiser follows the
    stage's learning-rate schedule, a method's own ones included (OptEmbed's thresholds,
    DNIS's alpha), and the recorded loss is the task's, without `extra_loss`."""
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
    optimizers = retrieval_optimizers(
        model, lookups, lr=train_cfg.lr, dense_tables=dense_tables, stage=stage
    )
    on_valid = [o for o in optimizers if protocol.optimizer_batches(o) is BatchSource.VALID]
    on_train = [o for o in optimizers if o not in on_valid]
    if on_valid and not data.validation_task:
        raise ConfigError(
            f"stage {stage.name!r} steps parameters on validation batches, but trains on the "
            "whole lists (a stage after the last search stage)"
        )
    valid_users = np.repeat(np.arange(data.num_users + 1), np.diff(data.test_indptr))
    steps_per_epoch = -(-users.size // train_cfg.batch_size)
    schedules = [_lr_schedule(opt, train_cfg, steps_per_epoch, epochs) for opt in optimizers]
    if resume is not None:  # (the model's state: loaded by `train_two_tower`)
        for opt, saved in zip(optimizers, resume["optimizers"], strict=True):
            opt.load_state_dict(saved)
        for schedule, saved in zip(schedules, resume["schedules"], strict=True):
            schedule.load_state_dict(saved)
        torch.set_rng_state(resume["torch_rng"])

    def pairs_loss(u: np.ndarray, pos_items: np.ndarray) -> torch.Tensor:
        """The retrieval loss of (user, positive) pairs, the positive masked out of the history."""
        user = torch.from_numpy(u)
        pos = torch.from_numpy(pos_items)
        hist = histories[user]
        mask = ((hist > 0) & (hist != pos.unsqueeze(1))).float()
        neg = torch.randint(1, data.num_items + 1, (train_cfg.num_negatives,))
        with forward, model.shared_side_means():
            return retrieval_loss(
                train_cfg.loss,
                model.user_vectors(user, hist, mask),
                model.item_vectors(pos),
                model.item_vectors(neg),
                margin=train_cfg.margin,
                negative_weight=train_cfg.negative_weight,
                temperature=train_cfg.temperature,
            )

    done = sum(1 for h in history if h.get("stage") == index)
    planned = epochs * steps_per_epoch
    for _ in range(done + 1, epochs + 1):
        start = time.perf_counter()
        order = rng.permutation(users.size)
        held = _cycled_batches(rng, valid_users.size, train_cfg.batch_size) if on_valid else None
        total = 0.0
        steps = 0
        update_seconds = 0.0  # backward, optimiser steps and `after_step` (DSL's masks)
        model.train()
        for lo in range(0, order.size, train_cfg.batch_size):
            idx = order[lo : lo + train_cfg.batch_size]
            loss = pairs_loss(users[idx], items[idx])
            tick = time.perf_counter()
            protocol.training_step(model, loss, optimizers, step=on_train, total_steps=planned)
            if held is not None:  # the bi-level step on held-out pairs
                v = next(held)
                valid_loss = pairs_loss(valid_users[v], data.test_items[v])
                protocol.training_step(model, valid_loss, optimizers, step=on_valid)
            update_seconds += time.perf_counter() - tick
            for schedule in schedules:
                schedule.step()
            total += float(loss.detach())
            steps += 1
        record = {"epoch": float(len(history) + 1), "loss": total / max(steps, 1)}
        if index is not None:
            record["stage"] = index
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
                "stage": index or 0,
            }))  # fmt: skip


def _cycled_batches(rng: np.random.Generator, count: int, size: int) -> Iterator[np.ndarray]:
    """Endless batches of indices into `count` pairs: each pass a new permutation."""
    while True:
        order = rng.permutation(count)
        for lo in range(0, count, size):
            yield order[lo : lo + size]


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
