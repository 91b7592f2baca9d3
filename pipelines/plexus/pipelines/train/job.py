"""The training job (driver side): Ray Train fit (or in-process with `use_ray: false`), test
evaluation, MLflow logging, outputs.

Outputs go to `<runs>/<name>/train-<hash>/`, the hash covering the data, model, embedding and
train sections and the fingerprint of the ingested data's feature spec (which covers the input
files' contents): edited input data means a new training, never the old model. A finished
folder (`metrics.json` present) is reused unless `force`; an
unfinished one (a crash) resumes from its last checkpoint and continues the same MLflow run.

A learned embedding method with several stages (`EmbeddingTables.stages()`, e.g. OptEmbed's
supernet, search and retrain) runs them through `stages.run_stages`, each a nested MLflow run;
the final stage's model is the one evaluated, saved and served.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import yaml
from plexus.models.backbones import build_ctr_model
from plexus.models.embeddings import protocol
from plexus.models.threads import restores_cpu_state, use_cpu_threads
from plexus.pipelines import plots, tracking
from plexus.pipelines.config import JobConfig
from plexus.pipelines.files import storage_error, write_json
from plexus.pipelines.ingest import IngestResult
from plexus.pipelines.runtime import default_runs_dir, ensure_ray
from plexus.pipelines.train import local, sharding
from plexus.pipelines.train.evaluate import evaluate, iter_batches
from plexus.pipelines.train.loop import STATE_FILE, train_loop
from plexus.pipelines.train.stages import run_stages
from plexus.platform import config as config_io
from plexus.platform.errors import PlexusError

METRICS_FILE = "metrics.json"
MODEL_DIR = "model"


@dataclasses.dataclass(frozen=True)
class TrainResult:
    output: Path  # the run's output folder
    run_id: str  # MLflow run id
    metrics: dict[str, float]  # test_auc, test_logloss, valid_auc, ... params
    history: list[dict[str, float]]
    skipped: bool = False

    @property
    def metrics_path(self) -> Path:
        return self.output / METRICS_FILE


def run_output_dir(job: JobConfig, data: IngestResult, *, init: str | None = None) -> Path:
    """`<runs>/<name>/train-<hash>`: one folder per (config, ingested data, initial weights)."""
    runs = Path(job.output).resolve() if job.output else default_runs_dir()
    key_text = job.training_key(data.spec.fingerprint, init=init)
    key = hashlib.sha256(key_text.encode()).hexdigest()[:12]
    return runs / job.name / f"train-{key}"


def train(
    job: JobConfig,
    data: IngestResult,
    *,
    force: bool = False,
    nested: bool = False,
    init_state: Path | None = None,
) -> TrainResult:
    """Train `job`'s model on ingested `data`, evaluate on the test split, track it all in MLflow.

    `init_state`: a saved state dict to start from instead of a fresh initialisation (a warm
    start, e.g. yesterday's model); its content is part of the output folder's key.
    """
    init = hashlib.sha256(init_state.read_bytes()).hexdigest()[:16] if init_state else None
    out = run_output_dir(job, data, init=init)
    if (out / METRICS_FILE).is_file() and not force:
        saved = json.loads((out / METRICS_FILE).read_text())
        print(f"[plexus] reusing finished training run {out} (pass --force to retrain)")
        return TrainResult(out, saved["run_id"], saved, saved.get("history", []), skipped=True)
    if force and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)

    tracking.configure(job.tracking.uri)
    import mlflow

    with tracking.resumable_run(
        out, job.tracking.experiment, f"{job.name}-train", nested=nested
    ) as (active, resumed):
        run_id = active.info.run_id
        if not resumed:
            tracking.log_params(config_io.flatten(job))
            mlflow.log_param("data.fingerprint", data.spec.fingerprint)
            if init:
                mlflow.log_param("init_state", f"{init_state} (sha256 {init})")
            mlflow.log_artifact(str(data.output / "feature_spec.json"), artifact_path=MODEL_DIR)
        model = build_ctr_model(job.model, job.embedding, data.spec)
        stages = protocol.model_stages(model)
        stage_metrics: dict[str, float] = {}
        if stages == protocol.SINGLE_STAGE:
            start = str(init_state) if init_state else None
            history, best_state = _load_final_state(_fit(job, data, out, run_id, init_state=start))
        elif init_state is not None:
            raise PlexusError(
                f"embedding.method={job.embedding.method.value} trains in several stages, each "
                "from the previous one's weights; a warm start applies to single-stage methods"
            )
        else:
            history, best_state, stage_metrics = run_stages(
                job, data, out, stages, _fit, _load_final_state, share=not force
            )
        model.load_state_dict(best_state)
        metrics = {**_final_metrics(job, data, model, history), **stage_metrics}
        mlflow.log_metrics(metrics)
        _save_model(out / MODEL_DIR, job, data, model)
        mlflow.log_artifacts(str(out / MODEL_DIR), artifact_path=MODEL_DIR)
        figure = plots.training_curves(history, title=f"{job.name}: {job.model.backbone.value}")
        tracking.log_figure(
            figure, "plots/training_curves.png", also_to=out / "training_curves.png"
        )

        summary = {**metrics, "run_id": run_id, "history": history}
        write_json(out / METRICS_FILE, summary)
        mlflow.log_artifact(str(out / METRICS_FILE))
    return TrainResult(out, run_id, summary, history)


def _fit(
    job: JobConfig,
    data: IngestResult,
    out: Path,
    run_id: str,
    *,
    init_state: str | None = None,
    stage: str | None = None,
) -> Any:
    """The training loop on Ray Train (checkpoints under `out/ray`), or in this process with
    `use_ray: false` (`train.local`, checkpoints under `out/checkpoints`); per-epoch metrics go
    into MLflow run `run_id`; `init_state` and `stage` as in `loop.train_loop`."""
    import mlflow

    storage = out / ("ray" if job.use_ray else local.CHECKPOINTS_DIR)
    loop_config = {
        "job": job,
        "spec_path": str(data.output / "feature_spec.json"),
        "tracking_uri": mlflow.get_tracking_uri(),
        "mlflow_run_id": run_id,
        "resume_from": _latest_checkpoint(storage),
        "init_state": init_state,
        "stage": stage,
        "steps_per_epoch": _steps_per_epoch(job, data),
    }
    try:
        if not job.use_ray:
            shards = {split: _shards(data, split) for split in ("train", "valid")}
            return local.fit_in_process(loop_config, shards, out)
        return _fit_on_ray(job, data, out, loop_config)
    except Exception as exc:  # a checkpoint could not be written: name where
        disk = storage_error(exc)
        if disk is None or disk.filename:
            raise
        raise OSError(disk.errno, disk.strerror or str(disk), str(out)) from exc


def _fit_on_ray(job: JobConfig, data: IngestResult, out: Path, loop_config: dict) -> Any:
    ensure_ray()
    import ray.train
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        train_loop,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=job.train.workers,
            use_gpu=False,
            resources_per_worker={"CPU": _cpus_per_worker(job.train.workers)},
        ),
        run_config=ray.train.RunConfig(
            name="ray",
            storage_path=str(out),
            failure_config=ray.train.FailureConfig(max_failures=job.train.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
        datasets=ray_datasets(data),
        dataset_config=ray_data_config(),
    )
    return trainer.fit()


def ray_datasets(data: IngestResult) -> dict[str, Any]:
    """The training shards as a stream of read tasks; the validation rows read once, in file
    order, into Ray's object store (spilled to disk past it), so that drawing them needs no task.

    A method that steps on validation batches during an epoch (DNIS's alpha) drew them from a
    second stream of read tasks while the training stream's read task, paused by back-pressure,
    held the one CPU left for reads: on 5M rows the search waited forever for its first batch."""
    import ray.data

    def read(split: str) -> ray.data.Dataset:
        return ray.data.read_parquet([str(p) for p in _shards(data, split)])

    valid = read("valid")
    valid.context.execution_options.preserve_order = True  # the same batches in every run
    return {"train": read("train"), "valid": valid.materialize()}


def ray_data_config() -> Any:
    """How Ray Train hands `ray_datasets` to its workers: the training set split among them,
    its blocks in file order.

    Ray Train replaces each dataset's execution options with these. By default blocks come in
    the order their read tasks finish, which changes from run to run once read tasks overlap
    (5M rows: the same job gave test AUC 0.7998 and 0.8006 from identical shards), and the
    shuffle buffer then draws other batches. In file order a one-worker job sees the same
    batches in every run; with several workers, which blocks each gets still depends on which
    asks first."""
    import ray.train

    options = ray.train.DataConfig.default_ingest_options()
    options.preserve_order = True
    return ray.train.DataConfig(datasets_to_split=["train"], execution_options=options)


def _shards(data: IngestResult, split: str) -> list[Path]:
    shards = data.shards(split)
    if not shards:
        raise PlexusError(f"ingested data at {data.output} has no {split!r} shards; re-run ingest")
    return shards


def _cpus_per_worker(workers: int) -> float:
    """At most one logical CPU per worker, leaving one for Ray Data's read tasks: on a 2-core
    machine two workers holding a CPU each left the shards unread and the job waiting forever.
    A worker's torch threads are `train.threads_per_worker`, whatever it reserves."""
    import ray

    cpus = float(ray.cluster_resources().get("CPU", 1.0))
    return min(1.0, max(0.25, (cpus - 1.0) / workers))


def _steps_per_epoch(job: JobConfig, data: IngestResult) -> int | None:
    """Batches per epoch of one worker (the planned steps of `StepContext`), None if unknown."""
    rows = data.rows.get("train", 0)
    return -(-rows // (job.train.workers * job.train.batch_size)) if rows else None


def _latest_checkpoint(storage: Path) -> str | None:
    """The newest readable checkpoint folder a previous (crashed) attempt left, if any.

    A checkpoint torn by a kill (truncated or empty `state.pt`, a worker's shard file missing
    or torn) is skipped with a warning, so
    the job resumes from the previous good one instead of failing on it.
    """
    candidates = sorted(storage.glob("**/checkpoint_*/" + STATE_FILE)) if storage.exists() else []
    epochs: dict[Path, int] = {}
    for path in candidates:
        try:
            saved = torch.load(path, weights_only=False)
            for rank in range(saved.get("sharded_ranks", 0)):  # every worker's shards, readable
                sharding.read_shards(path.parent, rank)
            epochs[path] = int(saved["loop"]["epoch"])
        except Exception as exc:  # a torn file: EOFError, a zip error, a missing key, ...
            print(f"[plexus] skipping unreadable checkpoint {path.parent}: {exc!r}", flush=True)
    if not epochs:
        return None
    return str(max(epochs, key=lambda p: (epochs[p], str(p))).parent)


def _load_final_state(result: Any) -> tuple[list[dict[str, float]], dict[str, torch.Tensor]]:
    if result.checkpoint is None:
        raise PlexusError(f"training produced no checkpoint: {getattr(result, 'error', None)}")
    with result.checkpoint.as_directory() as folder:
        saved = torch.load(Path(folder) / STATE_FILE, weights_only=False)
        best = saved["best_model"]
        if saved.get("sharded_ranks"):  # the full tables, from every worker's shards
            best = sharding.assemble_state(Path(folder), saved["sharded_ranks"], "best", best)
    return saved["loop"]["history"], best


@restores_cpu_state()
def _final_metrics(
    job: JobConfig, data: IngestResult, model: torch.nn.Module, history: list[dict[str, float]]
) -> dict[str, float]:
    use_cpu_threads(os.cpu_count() or 1)
    batch = job.train.eval_batch_size
    valid = evaluate(model, iter_batches(data.shards("valid"), data.spec, batch))
    test = evaluate(model, iter_batches(data.shards("test"), data.spec, batch))
    best = max(history, key=lambda h: h["valid_auc"])
    return {
        "test_auc": test["auc"],
        "test_logloss": test["logloss"],
        "best_valid_auc": valid["auc"],
        "best_valid_logloss": valid["logloss"],
        "best_epoch": best["epoch"],
        "epochs_run": float(len(history)),
        "train_examples_per_s": sum(h["examples_per_s"] for h in history) / len(history),
        "embedding_parameters": float(model.embeddings.num_parameters()),
        "embedding_params": float(model.embedding_parameters()),  # all tables, serving form
        "embedding_bytes": float(model.embedding_bytes()),
        "parameters": float(sum(p.numel() for p in model.parameters())),
    }


def _save_model(folder: Path, job: JobConfig, data: IngestResult, model: torch.nn.Module) -> None:
    """A self-describing model folder: weights, the job config and the feature spec."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(model.state_dict(), tmp / "model.pt")
    (tmp / "job.yaml").write_text(yaml.safe_dump(config_io.to_dict(job), sort_keys=False))
    shutil.copy2(data.output / "feature_spec.json", tmp / "feature_spec.json")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.replace(folder)


def load_model(folder: str | Path) -> tuple[torch.nn.Module, JobConfig]:
    """Rebuild a trained model from the folder `train` wrote (or its MLflow `model/` artifact)."""
    from plexus.pipelines.config import load_job_config
    from plexus.platform.feature_spec import FeatureSpec

    folder = Path(folder)
    if not (folder / "model.pt").is_file():
        raise PlexusError(
            f"{folder} is not a Plexus model folder (no model.pt); pass the run's model/ folder"
        )
    job = load_job_config(folder / "job.yaml")
    model = build_ctr_model(job.model, job.embedding, FeatureSpec.load(folder))
    model.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
    return model, job
