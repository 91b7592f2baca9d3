"""The end-to-end CTR job: ingest -> train -> evaluate, tracked as one parent MLflow run."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from plexus.pipelines import tracking
from plexus.pipelines.config import JobConfig
from plexus.pipelines.ingest import IngestResult, ingest
from plexus.pipelines.runtime import default_runs_dir
from plexus.pipelines.train.job import TrainResult, train
from plexus.platform import config as config_io


def data_output_dir(job: JobConfig) -> Path:
    """Where `job`'s shards go: `data.output`, else `<runs>/data/<name>-<hash of the data section>`."""
    if job.data.output:
        return Path(job.data.output).resolve()
    runs = Path(job.output).resolve() if job.output else default_runs_dir()
    return runs / "data" / f"{job.name}-{job.fingerprint('data')}"


def run_ingest(job: JobConfig, *, progress: bool = True) -> IngestResult:
    """Ingest `job.data` into its shards folder (reused when the input and config are unchanged)."""
    return ingest(job.data, output=data_output_dir(job), progress=progress)


def log_ingest(result: IngestResult) -> None:
    """Record an ingest in the active MLflow run: counts, rejects and the feature spec."""
    import mlflow

    mlflow.log_params(
        {"data.fingerprint": result.spec.fingerprint, "data.output": str(result.output)}
    )
    mlflow.log_metrics({f"rows_{split}": float(n) for split, n in result.rows.items()})
    mlflow.log_metrics({f"rejects_{reason}": float(n) for reason, n in result.rejects.items()})
    quality = result.quality
    ratios = {
        f"reject_ratio_{split}": float(entry["reject_ratio"])
        for split, entry in quality.get("splits", {}).items()
        if "reject_ratio" in entry
    }
    files = quality.get("files", [])
    if files:  # the worst input file, and every file's figures as an artifact
        ratios["reject_ratio_max_file"] = max(float(f["reject_ratio"]) for f in files)
        mlflow.log_dict(quality, "data/quality.json")
    mlflow.log_metrics(ratios)
    mlflow.log_artifact(str(result.output / "feature_spec.json"), artifact_path="data")
    rejects = result.output / "rejects.jsonl"
    if rejects.is_file() and rejects.stat().st_size:
        mlflow.log_artifact(str(rejects), artifact_path="data")


@dataclasses.dataclass(frozen=True)
class RunResult:
    run_id: str  # the parent MLflow run
    data: IngestResult
    train: TrainResult

    @property
    def metrics_path(self) -> Path:
        return self.train.metrics_path


def run_job(job: JobConfig, *, force: bool = False) -> RunResult:
    """Ingest, train and evaluate `job` under one parent MLflow run; print where results are."""
    tracking.configure(job.tracking.uri)
    import mlflow

    with tracking.run(job.tracking.experiment, f"{job.name}-run") as parent:
        tracking.log_params(config_io.flatten(job))
        with tracking.run(job.tracking.experiment, f"{job.name}-ingest", nested=True):
            data = run_ingest(job)
            log_ingest(data)
        trained = train(job, data, force=force, nested=True)
        mlflow.log_metrics(
            {
                k: v
                for k, v in trained.metrics.items()
                if isinstance(v, float | int) and k != "run_id"
            }
        )
        mlflow.log_artifact(str(trained.output / "training_curves.png"), artifact_path="plots")
        mlflow.log_artifact(str(trained.metrics_path))
    result = RunResult(parent.info.run_id, data, trained)
    summary = {k: result.train.metrics[k] for k in ("test_auc", "test_logloss")}
    print(f"[plexus] test metrics: {json.dumps(summary)}")
    return result
