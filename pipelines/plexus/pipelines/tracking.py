"""MLflow glue: the embedded default store, runs, and figures.

On one machine the default is a SQLite file `./mlflow.db` with artifacts in `./mlartifacts`;
past one machine `MLFLOW_TRACKING_URI` (or the job's `tracking.uri`) points at an MLflow server.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from plexus.pipelines.runtime import quiet_environment

ARTIFACTS_DIRNAME = "mlartifacts"


def default_uri() -> str:
    """`sqlite:///<cwd>/mlflow.db`: the embedded store used when nothing else is configured."""
    return f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


def configure(uri: str | None = None) -> str:
    """Point MLflow's tracking and registry at `uri`, `MLFLOW_TRACKING_URI` or the default."""
    quiet_environment()
    import mlflow

    # MLflow logs a store error's whole traceback before raising it; the job reports the error
    # itself (in one line when the store's disk is full or read-only).
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    resolved = uri or os.environ.get("MLFLOW_TRACKING_URI") or default_uri()
    mlflow.set_tracking_uri(resolved)
    mlflow.set_registry_uri(resolved)
    return resolved


def experiment_id(name: str) -> str:
    """The id of experiment `name`, created on first use.

    With a local SQLite store, artifacts go beside the database (`mlartifacts/`) rather than
    MLflow's relative `./mlruns`, so runs from any working directory land in one place.
    """
    import mlflow

    existing = mlflow.get_experiment_by_name(name)
    if existing is not None:
        return existing.experiment_id
    location = None
    uri = mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///"):
        location = (Path(uri.removeprefix("sqlite:///")).parent / ARTIFACTS_DIRNAME).as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


@contextlib.contextmanager
def run(
    experiment: str,
    run_name: str,
    *,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    nested: bool = False,
) -> Iterator[Any]:
    """Start an MLflow run (nested under the active one if `nested`), logging `params` first."""
    import mlflow

    with mlflow.start_run(
        experiment_id=experiment_id(experiment),
        run_name=run_name,
        nested=nested,
        tags=dict(tags or {}),
    ) as active:
        if params:
            log_params(params)
        yield active


@contextlib.contextmanager
def resumable_run(
    folder: Path, experiment: str, run_name: str, *, nested: bool = False
) -> Iterator[tuple[Any, bool]]:
    """An MLflow run tied to an output folder: the run recorded in `folder/run.json` is
    continued (a crashed job resumes into the same run), else a new one is started and recorded.
    Yields (the active run, whether it was resumed).

    A nested run resumed under a new parent (the rerun of a killed `plexus run`) is moved under
    that parent, so the finished parent has all its children; the killed parent it leaves is
    marked KILLED rather than left RUNNING forever.
    """
    import mlflow
    from plexus.pipelines.files import read_json, write_json

    record = folder / "run.json"
    previous = read_json(record)
    parent = mlflow.active_run() if nested else None
    with mlflow.start_run(
        run_id=previous.get("run_id"),
        experiment_id=None if previous else experiment_id(experiment),
        run_name=run_name,
        nested=nested,
    ) as active:
        if previous and parent is not None:
            _adopt(active.info.run_id, parent.info.run_id)
        write_json(record, {"run_id": active.info.run_id})
        yield active, bool(previous)


def _adopt(run_id: str, parent_id: str) -> None:
    """Make `parent_id` the parent of the resumed run `run_id`; end its old parent as KILLED."""
    import mlflow

    client = mlflow.MlflowClient()
    old = client.get_run(run_id).data.tags.get("mlflow.parentRunId")
    if old == parent_id:
        return
    client.set_tag(run_id, "mlflow.parentRunId", parent_id)
    if old and client.get_run(old).info.status == "RUNNING":
        client.set_terminated(old, status="KILLED")


def log_params(params: Mapping[str, Any]) -> None:
    """Log params in chunks (MLflow caps a batch at 100) with values stringified and truncated."""
    import mlflow

    items = [(k, "" if v is None else str(v)[:6000]) for k, v in params.items()]
    for start in range(0, len(items), 100):
        mlflow.log_params(dict(items[start : start + 100]))


def log_metrics(prefix: str, metrics: Mapping[str, float], *, step: int | None = None) -> None:
    """Log `prefix.name` metrics; names like `recall@20` become `recall_at_20` (MLflow rejects
    '@' in metric names)."""
    import mlflow

    mlflow.log_metrics(
        {f"{prefix}.{name.replace('@', '_at_')}": value for name, value in metrics.items()},
        step=step,
    )


def log_figure(figure: Any, artifact_file: str, *, also_to: Path | None = None) -> Path | None:
    """Log a matplotlib figure as a PNG artifact and optionally write the same PNG to `also_to`."""
    import mlflow

    written = None
    if also_to is not None:
        also_to.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(also_to, dpi=110, bbox_inches="tight")
        written = also_to
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(artifact_file).name
        figure.savefig(path, dpi=110, bbox_inches="tight")
        parent = str(Path(artifact_file).parent)
        mlflow.log_artifact(str(path), artifact_path=None if parent == "." else parent)
    return written
