"""The per-worker training loop run by Ray Train's `TorchTrainer`.

Each epoch: train over this worker's shard of the training set, evaluate on the full validation
set (every worker sees all of it, so all reach the same early-stopping decision without talking),
then report metrics with a checkpoint. The checkpoint holds the model, the optimiser, the epoch,
the early-stopping state and the best model so far, so a restarted worker (or a re-run job)
resumes exactly where the last report left it.

Learned embedding methods plug in through the tables' hooks (`plexus.models.embeddings.protocol`):
their extra loss term, their own optimisers and an after-step callback. A stage of a multi-stage
method starts from the state dict the job gives as `init_state`. Optimisers of parameter groups
driven by validation batches (`BatchSource.VALID`, DNIS's alpha) step after each training step
on the next validation batch (cycled, shuffled like the training set), in a second
forward-backward; a stage with `freeze_rest` trains only the tables' parameter groups.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from plexus.models.backbones import build_ctr_model
from plexus.models.batch import batch_from_arrow
from plexus.models.embeddings import protocol
from plexus.models.threads import restores_cpu_state, use_cpu_threads
from plexus.pipelines.train import sharding
from plexus.pipelines.train.evaluate import evaluate
from plexus.platform.errors import ConfigError
from plexus.platform.feature_spec import FeatureSpec

STATE_FILE = "state.pt"
PROGRESS_SECONDS = 30.0  # a progress line this often within a long epoch


@dataclasses.dataclass
class LoopState:
    """Everything needed to resume: saved in every checkpoint."""

    epoch: int = 0  # epochs completed
    best_auc: float = float("-inf")
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list[dict[str, float]] = dataclasses.field(default_factory=list)


@restores_cpu_state()
def train_loop(loop_config: dict[str, Any], session: LoopSession | None = None) -> None:
    """Ray Train entry point; `loop_config` carries plain data (configs as objects, paths as str).

    `session` is where datasets, checkpoints and reports go: Ray Train's (the default) or a
    Ray Tune trial's (`plexus.pipelines.tune.trial`), which runs this loop in its own process.
    """
    from plexus.pipelines.runtime import quiet_ray_data

    quiet_ray_data()
    job = loop_config["job"]
    train_cfg = job.train
    session = session or RayTrainSession()
    rank, world = session.rank, session.world
    threads = train_cfg.threads_per_worker or max(1, (os.cpu_count() or 1) // world)
    use_cpu_threads(threads)
    torch.manual_seed(train_cfg.seed)

    spec = FeatureSpec.load(loop_config["spec_path"])
    model = build_ctr_model(job.model, job.embedding, spec)
    if loop_config.get("init_state"):
        model.load_state_dict(torch.load(loop_config["init_state"], weights_only=True))
    stage = protocol.stage_named(model, loop_config.get("stage"))
    epochs = stage.epochs if stage is not None and stage.epochs else train_cfg.epochs
    label = f"[plexus] {loop_config['stage']}: " if loop_config.get("stage") else "[plexus] "
    state = LoopState()
    checkpoint = session.get_checkpoint()
    resume_dir = checkpoint.to_directory() if checkpoint else loop_config.get("resume_from")
    saved = torch.load(Path(resume_dir) / STATE_FILE, weights_only=False) if resume_dir else None
    if saved is not None:  # the replicated part; a sharded model's shards come after sharding
        model.load_state_dict(saved["model"], strict=not saved.get("sharded_ranks"))
    model, module, sharded = _distribute(model, train_cfg, world, rank, label)
    optimizers = protocol.build_optimizers(
        module,
        lr=train_cfg.lr,
        weight_decay=train_cfg.weight_decay,
        table_weight_decay=train_cfg.embedding_weight_decay,
        stage=stage,
        parameters=sharding.dense_parameters(model) if sharded else None,
    )
    valid_optimizers = [
        o for o in optimizers if protocol.optimizer_batches(o) is protocol.BatchSource.VALID
    ]
    train_optimizers = [o for o in optimizers if o not in valid_optimizers]
    best_pieces: sharding.Pieces = {}
    if saved is not None:
        for optimizer, saved_state in zip(optimizers, saved["optimizers"], strict=True):
            optimizer.load_state_dict(saved_state)
        state = LoopState(**saved["loop"])
        if "torch_rng" in saved:  # dropout's draws go on as if the run had never stopped
            torch.set_rng_state(saved["torch_rng"])
        best_model = saved["best_model"]
        if sharded:
            shards = sharding.read_shards(Path(resume_dir), rank)
            sharding.restore_pieces(model, shards["current"])
            best_pieces = shards["best"]
        if rank == 0:
            print(f"{label}resumed after epoch {state.epoch} (best valid AUC {state.best_auc:.4f})")
    else:
        best_model, best_pieces = _snapshot(module, model if sharded else None)

    table_bytes = sharding.held_table_bytes(module)
    train_shard = session.dataset("train")
    valid_shard = session.dataset("valid")
    tracker = _MetricsLogger(
        loop_config.get("tracking_uri"), loop_config.get("mlflow_run_id"), rank
    )
    loss_fn = torch.nn.BCEWithLogitsLoss()
    per_epoch = loop_config.get("steps_per_epoch")  # this worker's batches per epoch, if known
    planned_steps = per_epoch * epochs if per_epoch else None

    if stage is not None and stage.keep_start and not resume_dir:  # the start is epoch 0
        start = evaluate(module, _valid_batches(valid_shard, spec, train_cfg))
        state.best_auc = start["auc"]
        if rank == 0:
            print(f"{label}start  valid AUC {start['auc']:.4f}  logloss {start['logloss']:.4f}")
            tracker.log({"valid_auc": start["auc"], "valid_logloss": start["logloss"]}, step=0)

    while state.epoch < epochs and state.bad_epochs <= train_cfg.patience:
        epoch = state.epoch + 1
        model.train()
        started, examples, loss_sum, steps = time.perf_counter(), 0, 0.0, 0
        last_line = started
        valid_draws = _cycle(valid_shard, spec, train_cfg, epoch) if valid_optimizers else None
        for table in train_shard.iter_batches(
            batch_size=train_cfg.batch_size,
            batch_format="pyarrow",
            local_shuffle_buffer_size=train_cfg.shuffle_buffer or None,
            local_shuffle_seed=train_cfg.seed + epoch if train_cfg.shuffle_buffer else None,
            prefetch_batches=2,
        ):
            batch = batch_from_arrow(table, spec)
            task_loss = loss_fn(model(batch.dense, batch.sparse), batch.labels)
            protocol.training_step(
                module, task_loss, optimizers, step=train_optimizers, total_steps=planned_steps
            )
            if valid_draws is not None:  # the bi-level step on a validation batch
                held_out = next(valid_draws)
                valid_loss = loss_fn(model(held_out.dense, held_out.sparse), held_out.labels)
                protocol.training_step(module, valid_loss, optimizers, step=valid_optimizers)
            examples += batch.labels.numel()
            loss_sum += float(task_loss.detach())
            steps += 1
            if rank == 0 and time.perf_counter() - last_line >= PROGRESS_SECONDS:
                last_line = time.perf_counter()
                print(
                    f"{label}epoch {epoch}: {examples * world:,} examples  "
                    f"loss {loss_sum / steps:.4f}  "
                    f"{examples * world / (last_line - started):,.0f} ex/s",
                    flush=True,
                )
        seconds = time.perf_counter() - started
        if valid_draws is not None:
            valid_draws.close()
        valid = _agreed(evaluate(module, _valid_batches(valid_shard, spec, train_cfg)), world)
        metrics = {
            "epoch": float(epoch),
            "train_loss": loss_sum / max(steps, 1),
            "valid_auc": valid["auc"],
            "valid_logloss": valid["logloss"],
            "examples_per_s": examples * world / max(seconds, 1e-9),
            "epoch_seconds": seconds,
            **_worker_memory(table_bytes, world),
        }
        metrics["lr"] = _learning_rate(optimizers)
        improved = valid["auc"] > state.best_auc
        if improved:
            state.best_auc, state.best_epoch, state.bad_epochs = valid["auc"], epoch, 0
            best_model, best_pieces = _snapshot(module, model if sharded else None)
        else:
            state.bad_epochs += 1
            factor = train_cfg.reduce_lr_on_plateau
            due = state.bad_epochs % train_cfg.reduce_lr_patience == 0
            if factor and due and state.bad_epochs <= train_cfg.patience and epoch < epochs:
                lr = _reduce_lr(optimizers, factor)
                _restore(module, model if sharded else None, best_model, best_pieces)
                if rank == 0:
                    print(
                        f"{label}no better valid AUC: learning rate x{factor:g} -> {lr:.2e}, "
                        f"back to the best weights (epoch {state.best_epoch})",
                        flush=True,
                    )
        state.epoch = epoch
        state.history.append(metrics)
        if rank == 0:
            print(
                f"{label}epoch {epoch}/{epochs}  loss {metrics['train_loss']:.4f}  "
                f"valid AUC {valid['auc']:.4f}  logloss {valid['logloss']:.4f}  "
                f"{metrics['examples_per_s']:,.0f} ex/s  {seconds:.1f}s"
                + ("  *" if improved else ""),
                flush=True,
            )
            tracker.log(metrics, step=epoch)
        with tempfile.TemporaryDirectory() as tmp:
            if rank == 0:
                torch.save(
                    {
                        "model": sharding.dense_state(module) if sharded else module.state_dict(),
                        "optimizers": [o.state_dict() for o in optimizers],
                        "loop": dataclasses.asdict(state),
                        "best_model": best_model,
                        "sharded_ranks": world if sharded else 0,
                        "torch_rng": torch.get_rng_state(),
                    },
                    Path(tmp) / STATE_FILE,
                )
            if sharded:  # every worker writes its own shards into the same checkpoint
                current = sharding.local_pieces(model)
                sharding.write_shards(Path(tmp), rank, {"current": current, "best": best_pieces})
            session.report(metrics, tmp if rank == 0 or sharded else None)
        if state.bad_epochs > train_cfg.patience and rank == 0:
            print(
                f"{label}early stop: no better valid AUC for {state.bad_epochs} epochs",
                flush=True,
            )
    if rank == 0 and epochs > 1 and state.epoch >= epochs and state.best_epoch == state.epoch:
        # The cap, not early stopping, ended a still-improving model (Plexus's LR at lr 1e-3 on
        # MovieLens stopped 0.026 AUC short of its optimum this way): say so.
        print(
            f"{label}stopped at train.epochs={epochs} with valid AUC still improving: "
            "raise train.epochs or train.lr (or tune them: plexus tune)",
            flush=True,
        )


def _distribute(
    model: torch.nn.Module, train_cfg: Any, world: int, rank: int, label: str
) -> tuple[torch.nn.Module, torch.nn.Module, bool]:
    """(the model to train, the plain module inside it, whether its tables are sharded).

    One worker: the model itself. Several: tables sharded through TorchRec
    (`sharding.shard_model`), or, for methods that cannot shard, the whole model replicated
    (DDP), said once.
    """
    if world == 1:
        return model, model, False
    import ray.train.torch

    reason = sharding.replication_reason(model)
    if reason is None:
        unknown = list(sharding.unknown_plan_keys(model, train_cfg.sharding))
        if unknown:
            raise ConfigError(
                f"train.sharding.plan names no table of this model: {unknown[0]!r}; tables are "
                "named <collection path>.<table>, e.g. embeddings.ebc.t_user"
            )
        decay = train_cfg.embedding_weight_decay
        sharded = sharding.shard_model(
            model,
            train_cfg.sharding,
            lr=train_cfg.lr,
            weight_decay=train_cfg.weight_decay if decay is None else decay,
        )
        if rank == 0:
            print(f"{label}tables sharded over {world} workers:\n{sharding.describe_plan(sharded)}")
        return sharded, sharded.module, True
    if rank == 0:
        print(f"{label}tables replicated on each of {world} workers (data parallel): {reason}")
    wrapped = ray.train.torch.prepare_model(model, move_to_device=False)
    return wrapped, model, False


def _snapshot(
    module: torch.nn.Module, sharded: Any | None
) -> tuple[dict[str, torch.Tensor], sharding.Pieces]:
    """The best model so far: the state dict (without the shards, if sharded) and this
    worker's shards' weights."""
    if sharded is None:
        return {k: v.detach().clone() for k, v in module.state_dict().items()}, {}
    return sharding.dense_state(module), sharding.local_pieces(sharded, optimizer=False)


MIN_LR = 1e-6  # the floor of reduce_lr_on_plateau, as FuxiCTR's


def _learning_rate(optimizers: list[torch.optim.Optimizer]) -> float:
    """The main optimiser's learning rate (the last one: Adam over the network)."""
    return float(optimizers[-1].param_groups[0]["lr"]) if optimizers else 0.0


def _reduce_lr(optimizers: list[torch.optim.Optimizer], factor: float) -> float:
    """Every optimiser's learning rates times `factor`, at least `MIN_LR`; the main one's."""
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["lr"] = max(group["lr"] * factor, MIN_LR)
    return _learning_rate(optimizers)


def _restore(
    module: torch.nn.Module,
    sharded: Any | None,
    best: dict[str, torch.Tensor],
    pieces: sharding.Pieces,
) -> None:
    """The model back to its `_snapshot` (the optimisers keep their state, as in FuxiCTR)."""
    module.load_state_dict(best, strict=sharded is None)
    if sharded is not None:
        sharding.restore_pieces(sharded, pieces, optimizer=False)


def _agreed(metrics: dict[str, float], world: int) -> dict[str, float]:
    """Rank 0's validation metrics on every worker, so that all take the same early-stopping
    and best-model decisions (each evaluates the full validation set; summation order in
    collectives may still differ in the last bit)."""
    if world == 1:
        return metrics
    import torch.distributed as dist

    keys = sorted(metrics)
    values = torch.tensor([metrics[k] for k in keys], dtype=torch.float64)
    dist.broadcast(values, src=0)
    return dict(zip(keys, values.tolist(), strict=True))


def _worker_memory(table_bytes: int, world: int) -> dict[str, float]:
    """The largest worker's peak resident memory and embedding-table bytes (each worker holds
    only its shards of sharded tables)."""
    from plexus.pipelines.runtime import process_memory

    values = torch.tensor([process_memory()["peak"], table_bytes], dtype=torch.float64)
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(values, op=dist.ReduceOp.MAX)
    peak, tables = values.tolist()
    return {"worker_peak_rss_bytes": peak, "worker_table_bytes": tables}


def _valid_batches(shard: Any, spec: FeatureSpec, train_cfg: Any) -> Iterator[Any]:
    for table in shard.iter_batches(batch_size=train_cfg.eval_batch_size, batch_format="pyarrow"):
        yield batch_from_arrow(table, spec)


def _cycle(shard: Any, spec: FeatureSpec, train_cfg: Any, epoch: int) -> Iterator[Any]:
    """Validation batches of the training batch size, endlessly (each pass reshuffled)."""
    passes = 0
    while True:
        passes += 1
        seed = train_cfg.seed + 7919 * epoch + passes
        for table in shard.iter_batches(
            batch_size=train_cfg.batch_size,
            batch_format="pyarrow",
            local_shuffle_buffer_size=train_cfg.shuffle_buffer or None,
            local_shuffle_seed=seed if train_cfg.shuffle_buffer else None,
        ):
            yield batch_from_arrow(table, spec)


class LoopSession:
    """The loop's view of what runs it: rank and world size, its datasets (objects with Ray
    Data's `iter_batches`), the checkpoint to resume from, and the per-epoch report."""

    rank: int = 0
    world: int = 1

    def dataset(self, split: str) -> Any:
        raise NotImplementedError

    def get_checkpoint(self) -> Any:
        """A `ray.train.Checkpoint` to resume from, or None."""
        raise NotImplementedError

    def report(self, metrics: dict[str, float], folder: str | None) -> None:
        """Report an epoch's metrics with the checkpoint written to `folder` (None: no checkpoint)."""
        raise NotImplementedError


class RayTrainSession(LoopSession):
    """A `TorchTrainer` worker's session: Ray Train's context, dataset shards and reports."""

    def __init__(self) -> None:
        import ray.train

        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()

    def dataset(self, split: str) -> Any:
        import ray.train

        return ray.train.get_dataset_shard(split)

    def get_checkpoint(self) -> Any:
        import ray.train

        return ray.train.get_checkpoint()

    def report(self, metrics: dict[str, float], folder: str | None) -> None:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(folder) if folder else None
        ray.train.report(metrics, checkpoint=checkpoint)


class _MetricsLogger:
    """Per-epoch metrics straight into the job's MLflow run (rank 0 only)."""

    def __init__(self, uri: str | None, run_id: str | None, rank: int) -> None:
        self._client = None
        self._run_id = run_id
        if uri and run_id and rank == 0:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=uri)

    def log(self, metrics: dict[str, float], *, step: int) -> None:
        if self._client is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._client.log_batch(
            self._run_id,
            metrics=[Metric(k, float(v), now, step) for k, v in metrics.items() if k != "epoch"],
        )
