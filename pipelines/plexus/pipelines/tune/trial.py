"""One Ray Tune trial: the job's own training loop, run in the trial's process.

Why in-process rather than a `TorchTrainer` per trial (which Ray supports: a Tune function
trainable may call `TorchTrainer.fit()` and forward reports with
`ray.tune.integration.ray_train.TuneReportCallback`): a nested trainer adds a Train controller,
a worker-group actor and Ray Data split coordinators to every trial, ~10 s of start-up and two
extra processes per trial on a 2-core machine (measured: README, `plexus tune`), and its Ray Data
read tasks need CPUs that the trials themselves hold (with every CPU given to trials, they wait
forever). The in-process trial runs `plexus.pipelines.train.loop.train_loop` itself, the same
code the job runs, through a `TuneSession`: the shards are read once into Arrow tables, each
epoch reports validation AUC (ASHA's signal) with a checkpoint to Tune, and a restored trial
resumes from its last checkpoint exactly as a crashed job does.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from plexus.pipelines.files import read_json, write_json
from plexus.pipelines.train.local import ArrowDataset
from plexus.pipelines.train.loop import LoopSession, train_loop
from plexus.platform import config as config_io

RUN_RECORD = "mlflow_run.json"


@dataclasses.dataclass(frozen=True)
class TrialContext:
    """What every trial shares (plain data, shipped once through the object store)."""

    job: dict[str, Any]  # the base job config as plain data (`config_io.to_dict`)
    data_dirs: dict[int, str]  # the ingested shards and feature spec, by cross-validation fold
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    cpus: int  # torch threads of a trial (its Ray CPU resources)


class TuneSession(LoopSession):
    """The training loop's session inside a Tune trial: one process, Tune's reports."""

    def __init__(self, data_dir: Path) -> None:
        self.rank, self.world = 0, 1
        self._datasets = {
            split: ArrowDataset(sorted((data_dir / split).glob("part-*.parquet")))
            for split in ("train", "valid")
        }

    def dataset(self, split: str) -> ArrowDataset:
        return self._datasets[split]

    def get_checkpoint(self) -> Any:
        import ray.tune

        return ray.tune.get_checkpoint()

    def report(self, metrics: dict[str, float], folder: str | None) -> None:
        import ray.tune

        checkpoint = ray.tune.Checkpoint.from_directory(folder) if folder else None
        ray.tune.report(dict(metrics), checkpoint=checkpoint)


def trial_job(base: dict[str, Any], overrides: dict[str, Any]) -> Any:
    """The job config of one trial: `base` with the sampled `section.key` values set."""
    from plexus.pipelines.config import JobConfig

    data = _deep_copy(base)
    for key, value in overrides.items():
        node = data
        *sections, last = key.split(".")
        for part in sections:
            node = node.setdefault(part, {})
        node[last] = value
    return config_io.from_dict(JobConfig, data)


def run_trial(sampled: dict[str, Any], context: TrialContext) -> None:
    """Ray Tune function trainable: train one sampled configuration, reporting every epoch."""
    import ray.tune
    from mlflow.tracking import MlflowClient
    from plexus.pipelines.runtime import quiet_environment

    quiet_environment()
    overrides = dict(sampled)
    if not context.job.get("train", {}).get("threads_per_worker"):
        overrides.setdefault("train.threads_per_worker", context.cpus)
    job = trial_job(context.job, overrides)
    trial = ray.tune.get_context()
    record = Path(trial.get_trial_dir()) / RUN_RECORD
    client = MlflowClient(tracking_uri=context.tracking_uri)
    run_id = read_json(record).get("run_id")
    if run_id is None:  # a restored trial continues its own nested run
        run = client.create_run(
            context.experiment_id,
            run_name=f"{job.name}-{trial.get_trial_name()}",
            tags={
                "mlflow.parentRunId": context.parent_run_id,
                "plexus.trial": trial.get_trial_id(),
            },
        )
        run_id = run.info.run_id
        write_json(record, {"run_id": run_id})
        params = config_io.flatten(job)
        items = [(k, "" if v is None else str(v)[:6000]) for k, v in params.items()]
        from mlflow.entities import Param

        for start in range(0, len(items), 100):
            client.log_batch(run_id, params=[Param(k, v) for k, v in items[start : start + 100]])
    data_dir = Path(context.data_dirs[job.data.split.fold])
    train_rows = sum(
        pq.ParquetFile(p).metadata.num_rows for p in (data_dir / "train").glob("part-*.parquet")
    )
    train_loop(
        {
            "job": job,
            "spec_path": str(data_dir / "feature_spec.json"),
            "tracking_uri": context.tracking_uri,
            "mlflow_run_id": run_id,
            "resume_from": None,
            "init_state": None,
            "stage": None,
            "steps_per_epoch": -(-train_rows // job.train.batch_size),
        },
        TuneSession(data_dir),
    )
    client.set_terminated(run_id, "FINISHED")


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data
