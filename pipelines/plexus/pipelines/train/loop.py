"""The per-worker training loop run by Ray Train's `TorchTrainer`.

Each epoch: train over this worker's shard of the training set, evaluate on the full validation
set (every worker sees all of it, so all reach the same early-stopping decision without talking),
then report metrics with a checkpoint. The checkpoint holds the model, the optimiser, the epoch,
the early-stopping state and the best model so far, so a restarted worker (or a re-run job)
resumes exactly where the last report left it.

Learned embedding methods plug in through the tables' hooks (`plexus.models.embeddings.protocol`):
their extra loss term, their own optimisers and an after-step callback. A stage of a multi-stage
method starts from the state dict the job gives as `init_state`.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from plexus.models.backbones import build_ctr_model
from plexus.models.batch import batch_from_arrow
from plexus.models.embeddings import protocol
from plexus.pipelines.train.evaluate import evaluate
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


def train_loop(loop_config: dict[str, Any]) -> None:
    """Ray Train entry point; `loop_config` carries plain data (configs as objects, paths as str)."""
    import ray.train
    import ray.train.torch
    from plexus.pipelines.runtime import quiet_ray_data

    quiet_ray_data()
    job = loop_config["job"]
    train_cfg = job.train
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    threads = train_cfg.threads_per_worker or max(1, (os.cpu_count() or 1) // world)
    torch.set_num_threads(threads)
    torch.manual_seed(train_cfg.seed)

    spec = FeatureSpec.load(loop_config["spec_path"])
    model = build_ctr_model(job.model, job.embedding, spec)
    if loop_config.get("init_state"):
        model.load_state_dict(torch.load(loop_config["init_state"], weights_only=True))
    optimizers = protocol.build_optimizers(
        model, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay
    )
    label = f"[plexus] {loop_config['stage']}: " if loop_config.get("stage") else "[plexus] "
    state = LoopState()
    checkpoint = ray.train.get_checkpoint()
    resume_dir = checkpoint.to_directory() if checkpoint else loop_config.get("resume_from")
    if resume_dir:
        saved = torch.load(Path(resume_dir) / STATE_FILE, weights_only=False)
        model.load_state_dict(saved["model"])
        for optimizer, saved_state in zip(optimizers, saved["optimizers"], strict=True):
            optimizer.load_state_dict(saved_state)
        state = LoopState(**saved["loop"])
        best_model = saved["best_model"]
        if rank == 0:
            print(f"{label}resumed after epoch {state.epoch} (best valid AUC {state.best_auc:.4f})")
    else:
        best_model = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if world > 1:
        model = ray.train.torch.prepare_model(model, move_to_device=False)
    module = model.module if hasattr(model, "module") else model

    train_shard = ray.train.get_dataset_shard("train")
    valid_shard = ray.train.get_dataset_shard("valid")
    tracker = _MetricsLogger(
        loop_config.get("tracking_uri"), loop_config.get("mlflow_run_id"), rank
    )
    loss_fn = torch.nn.BCEWithLogitsLoss()

    while state.epoch < train_cfg.epochs and state.bad_epochs <= train_cfg.patience:
        epoch = state.epoch + 1
        model.train()
        started, examples, loss_sum, steps = time.perf_counter(), 0, 0.0, 0
        last_line = started
        for table in train_shard.iter_batches(
            batch_size=train_cfg.batch_size,
            batch_format="pyarrow",
            local_shuffle_buffer_size=train_cfg.shuffle_buffer or None,
            local_shuffle_seed=train_cfg.seed + epoch if train_cfg.shuffle_buffer else None,
            prefetch_batches=2,
        ):
            batch = batch_from_arrow(table, spec)
            task_loss = loss_fn(model(batch.dense, batch.sparse), batch.labels)
            extra = protocol.extra_loss(module)
            loss = task_loss if extra is None else task_loss + extra
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for optimizer in optimizers:
                optimizer.step()
            protocol.after_step(module)
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
        valid = evaluate(
            module,
            (
                batch_from_arrow(t, spec)
                for t in valid_shard.iter_batches(
                    batch_size=train_cfg.eval_batch_size, batch_format="pyarrow"
                )
            ),
        )
        metrics = {
            "epoch": float(epoch),
            "train_loss": loss_sum / max(steps, 1),
            "valid_auc": valid["auc"],
            "valid_logloss": valid["logloss"],
            "examples_per_s": examples * world / max(seconds, 1e-9),
            "epoch_seconds": seconds,
        }
        improved = valid["auc"] > state.best_auc
        if improved:
            state.best_auc, state.best_epoch, state.bad_epochs = valid["auc"], epoch, 0
            best_model = {k: v.detach().clone() for k, v in module.state_dict().items()}
        else:
            state.bad_epochs += 1
        state.epoch = epoch
        state.history.append(metrics)
        if rank == 0:
            print(
                f"{label}epoch {epoch}/{train_cfg.epochs}  loss {metrics['train_loss']:.4f}  "
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
                        "model": module.state_dict(),
                        "optimizers": [o.state_dict() for o in optimizers],
                        "loop": dataclasses.asdict(state),
                        "best_model": best_model,
                    },
                    Path(tmp) / STATE_FILE,
                )
            report_checkpoint = ray.train.Checkpoint.from_directory(tmp) if rank == 0 else None
            ray.train.report(metrics, checkpoint=report_checkpoint)
        if state.bad_epochs > train_cfg.patience and rank == 0:
            print(
                f"{label}early stop: no better valid AUC for {state.bad_epochs} epochs",
                flush=True,
            )


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
