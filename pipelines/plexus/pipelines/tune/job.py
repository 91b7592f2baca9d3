"""`plexus tune CONFIG --space SPACE.yaml`: hyper-parameter search on Ray Tune over the real job.

One parent MLflow run (`<name>-tune`) holds a nested run per trial (per-epoch validation
metrics, every config key as params); the parent gets the best trial's validation AUC and its
test metrics. Trials are sampled at random from the space (seeded), stopped early by ASHA on
the validation AUC each epoch reports, and ranked by their best validation AUC (the mean over
seeds and cross-validation folds when the space has them); the test split is touched once, by the
selected models themselves (each selected trial's best epoch, from its last Tune checkpoint),
evaluated in the driver. `plexus run best.yaml` trains that configuration through
the job into a servable model folder.

Everything lives under `<runs>/<name>/tune-<hash>/` (the hash covers the job config and the
space): Tune's experiment state and trial checkpoints (`tuner/`), the parent run's id, and the
results: `best.yaml` (a job config `plexus run` takes as it is), `trials.json`, `trials.md` and
`summary.json`. A killed tuning is resumed by running the same command again
(`Tuner.restore`: finished trials are kept, unfinished ones continue from their last epoch).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import yaml
from plexus.pipelines import tracking
from plexus.pipelines.bench.report import markdown_table
from plexus.pipelines.config import JobConfig
from plexus.pipelines.files import read_json, write_json
from plexus.pipelines.jobs import run_ingest
from plexus.pipelines.runtime import default_runs_dir, ensure_ray
from plexus.pipelines.tune.space import FOLD_KEY, FOLDS_KEY, RUN_KEYS, SEED_KEY, TuneSpace
from plexus.pipelines.tune.trial import RUN_RECORD, TrialContext, run_trial, trial_job
from plexus.platform import config as config_io
from plexus.platform.errors import ConfigError, PlexusError

METRIC = "valid_auc"
TUNABLE_SECTIONS = ("model", "embedding", "train")


@dataclasses.dataclass(frozen=True)
class TuneResult:
    folder: Path  # <runs>/<name>/tune-<hash>
    run_id: str  # the parent MLflow run
    best_config: Path  # best.yaml
    best: dict[str, Any]  # the best trial's sampled values
    best_valid_auc: float  # the mean over seeds and folds when the space has them
    test_auc: float  # likewise
    test_logloss: float
    trials: list[dict[str, Any]]


def rank_configurations(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Trials grouped by their sampled values without the seed and fold, best mean validation
    AUC first. A configuration with a failed trial ranks below every complete one: the mean of
    the runs that did finish would favour the recipe that crashed on its unlucky seeds."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        config = {k: v for k, v in row["config"].items() if k not in RUN_KEYS}
        groups.setdefault(json.dumps(config, sort_keys=True, default=str), []).append(row)
    configurations = []
    for trials in groups.values():
        ok = all(t["status"] == "ok" for t in trials)
        configurations.append(
            {
                "config": {k: v for k, v in trials[0]["config"].items() if k not in RUN_KEYS},
                "trials": sorted(trials, key=_run_order),
                "status": "ok" if ok else "error",
                METRIC: sum(t[METRIC] for t in trials) / len(trials) if ok else float("-inf"),
            }
        )
    return sorted(configurations, key=lambda c: -c[METRIC])


def _run_order(trial: dict[str, Any]) -> tuple[int, int]:
    return trial["config"].get(FOLD_KEY, 0), trial["config"].get(SEED_KEY, 0)


def fold_jobs(job: JobConfig, space: TuneSpace) -> dict[int, JobConfig]:
    """The job of each cross-validation fold (only the job itself without folds)."""
    if space.folds < 2:
        return {0: job}
    base = config_io.to_dict(job)
    return {
        fold: trial_job(base, {FOLDS_KEY: space.folds, FOLD_KEY: fold})
        for fold in range(space.folds)
    }


def tune_folder(job: JobConfig, space: TuneSpace) -> Path:
    runs = Path(job.output).resolve() if job.output else default_runs_dir()
    key = json.dumps(
        {"job": config_io.to_dict(job), "space": space.to_dict()}, sort_keys=True, default=str
    )
    return runs / job.name / f"tune-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def check_space(job: JobConfig, space: TuneSpace) -> None:
    """Fail before any work when a searched key is not a tunable job-config key or a value is
    invalid for it; the error names the key."""
    base = config_io.to_dict(job)
    for param in space.params:
        section = param.key.split(".")[0]
        if section not in TUNABLE_SECTIONS or "." not in param.key:
            raise ConfigError(
                f"space.{param.key}: only keys of the {', '.join(TUNABLE_SECTIONS)} sections can "
                "be tuned (data keys would need a new ingest per trial), e.g. train.lr"
            )
        for value in param.examples():
            try:
                trial_job(base, {param.key: value})
            except ConfigError as exc:
                raise ConfigError(f"space.{param.key}: value {value!r} is invalid: {exc}") from exc


def tune(
    job: JobConfig,
    space: TuneSpace,
    *,
    trials: int | None = None,
    command: str | None = None,
) -> TuneResult:
    """Search `space` around `job`, pick the best trial on validation AUC, write `best.yaml`
    and report the selected model's test metrics (the only look at the test split)."""
    if trials is not None:
        space = dataclasses.replace(space, trials=trials)
    check_space(job, space)
    folder = tune_folder(job, space)
    folder.mkdir(parents=True, exist_ok=True)
    if space.folds > 1 and job.data.split.cross_validation:
        raise ConfigError("data.split.folds: set folds in the search space, not in the job")
    datas = {
        fold: run_ingest(fold_job, progress=False)
        for fold, fold_job in fold_jobs(job, space).items()
    }
    _reject_staged_methods(job, datas[0])
    tracking.configure(job.tracking.uri)
    import mlflow

    with tracking.resumable_run(folder, job.tracking.experiment, f"{job.name}-tune") as (
        parent,
        resumed,
    ):
        if not resumed:
            tracking.log_params(
                {
                    **{f"base.{k}": v for k, v in config_io.flatten(job).items()},
                    **config_io.flatten(space.to_dict(), "tune."),
                }
            )
        ensure_ray()
        context = TrialContext(
            job=config_io.to_dict(job),
            data_dirs={fold: str(data.output) for fold, data in datas.items()},
            tracking_uri=mlflow.get_tracking_uri(),
            experiment_id=parent.info.experiment_id,
            parent_run_id=parent.info.run_id,
            cpus=space.cpus_per_trial,
        )
        results = _fit(job, space, folder, context)
        rows = _trial_rows(results, context)
        configurations = rank_configurations(rows)
        if not configurations or configurations[0]["status"] != "ok":
            errors = "; ".join(str(r.get("error")) for r in rows)[:2000]
            raise PlexusError(f"every trial failed; see {folder / 'tuner'}: {errors}")
        best = configurations[0]
        best_job = trial_job(config_io.to_dict(job), best["config"])
        seeds = _runs_label(space)
        best_path = _write_best(folder / "best.yaml", best_job, best, command, seeds)
        print(
            f"[plexus tune] best of {len(configurations)} configurations: valid AUC "
            f"{best[METRIC]:.4f}{seeds} {best['config']}"
        )
        tests = []
        for trial in best["trials"]:  # the selected recipe's models, each tested once
            seed_job = trial_job(config_io.to_dict(job), trial["config"])
            fold = seed_job.data.split.fold
            tests.append(_test_selected(results, trial, seed_job, datas[fold]))
            if trial.get("run_id"):
                mlflow.tracking.MlflowClient().log_batch(
                    trial["run_id"],
                    metrics=[
                        mlflow.entities.Metric(k, v, int(time.time() * 1000), 0)
                        for k, v in tests[-1].items()
                    ],
                )
        test = {k: sum(t[k] for t in tests) / len(tests) for k in tests[0]}
        summary = {
            "best_config": best["config"],
            "best_trial": best["trials"][0]["trial"],
            "best_run_id": best["trials"][0].get("run_id"),
            "best_valid_auc": best[METRIC],
            **test,
            "trials": len(rows),
            "configurations": len(configurations),
            "repeats": space.repeats,
            "folds": space.folds,
        }
        if space.runs_per_configuration > 1:
            summary["seeds"] = [
                {
                    "seed": t["config"].get(SEED_KEY, job.train.seed),
                    "fold": t["config"].get(FOLD_KEY),
                    METRIC: t[METRIC],
                    **tested,
                }
                for t, tested in zip(best["trials"], tests, strict=True)
            ]
        write_json(folder / "summary.json", summary)
        write_json(folder / "trials.json", {"trials": rows})
        runs = ({SEED_KEY} if space.repeats > 1 else set()) | (
            {FOLD_KEY} if space.folds > 1 else set()
        )
        keys = sorted({p.key for p in space.params} | runs)
        flat = [
            {**r, **{k: _cell(v) for k, v in r["config"].items()}}
            for r in sorted(rows, key=lambda r: -r[METRIC])
        ]
        table = markdown_table(flat, ["trial", "status", METRIC, "epochs", *keys])
        if space.runs_per_configuration > 1:
            means = [
                {
                    "configuration": i + 1,
                    "runs": len(c["trials"]),
                    f"mean {METRIC}": c[METRIC],
                    **{k: _cell(v) for k, v in c["config"].items()},
                }
                for i, c in enumerate(configurations)
            ]
            columns = ["configuration", "runs", f"mean {METRIC}", *sorted(best["config"])]
            table = markdown_table(means, columns) + "\n\n" + table
        (folder / "trials.md").write_text(table)
        mlflow.log_metrics({"best_valid_auc": best[METRIC], **test, "trials": float(len(rows))})
        for name in ("best.yaml", "trials.md", "trials.json", "summary.json"):
            mlflow.log_artifact(str(folder / name))
        print(table)
        print(
            f"[plexus tune] best configuration: test AUC {test['test_auc']:.4f}  logloss "
            f"{test['test_logloss']:.4f}{seeds} (valid AUC {best[METRIC]:.4f}); plexus run {best_path}"
        )
    return TuneResult(
        folder=folder,
        run_id=parent.info.run_id,
        best_config=best_path,
        best=best["config"],
        best_valid_auc=best[METRIC],
        test_auc=test["test_auc"],
        test_logloss=test["test_logloss"],
        trials=rows,
    )


def _fit(job: JobConfig, space: TuneSpace, folder: Path, context: TrialContext) -> Any:
    """Run (or resume) the Tune experiment under `folder/tuner`; returns its ResultGrid."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    trainable = tune.with_resources(
        tune.with_parameters(run_trial, context=context), {"cpu": space.cpus_per_trial}
    )
    path = folder / "tuner"
    if tune.Tuner.can_restore(path):
        print(f"[plexus tune] resuming the tuning at {path}", flush=True)
        tuner = tune.Tuner.restore(
            str(path), trainable, resume_unfinished=True, resume_errored=True
        )
        return tuner.fit()
    epochs = max(
        [job.train.epochs]
        + [v for p in space.params if p.key == "train.epochs" for v in p.examples()]
    )
    cpus = int(os.cpu_count() or 1)
    tuner = tune.Tuner(
        trainable,
        param_space=space.param_space(job.train.seed),
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode="max",
            num_samples=space.trials,
            scheduler=ASHAScheduler(
                time_attr="training_iteration",
                max_t=int(epochs),
                grace_period=space.scheduler.grace_period,
                reduction_factor=space.scheduler.reduction_factor,
            ),
            search_alg=BasicVariantGenerator(  # each sample runs every grid value (and seed)
                random_state=space.seed,
                max_concurrent=max(1, cpus // space.cpus_per_trial),
                constant_grid_search=True,
            ),
        ),
        run_config=tune.RunConfig(
            name=path.name,
            storage_path=str(folder),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=1),
            verbose=0,
        ),
    )
    return tuner.fit()


def _trial_rows(results: Any, context: TrialContext) -> list[dict[str, Any]]:
    """One row per trial: sampled config, best validation AUC over its epochs, epochs run;
    each trial's MLflow run is closed (ASHA stops a trial mid-way, before it closes it)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=context.tracking_uri)
    rows = []
    for result in results:
        history = result.metrics_dataframe
        config = {k: v for k, v in (result.config or {}).items()}
        row: dict[str, Any] = {
            "trial": (result.metrics or {}).get("trial_id", "?"),
            "config": config,
            METRIC: float("-inf"),
            "epochs": 0,
            "status": "ok",
        }
        if history is not None and METRIC in history:
            row[METRIC] = float(history[METRIC].max())
            row["epochs"] = int(history["epoch"].max())
        if result.error is not None or row["epochs"] == 0:
            row["status"], row["error"] = "error", str(result.error)[:500]
        run_id = read_json(Path(result.path) / RUN_RECORD).get("run_id") if result.path else None
        if run_id:
            if client.get_run(run_id).info.status == "RUNNING":
                client.set_terminated(run_id, "FINISHED" if row["status"] == "ok" else "FAILED")
            if row["status"] == "ok":
                client.log_metric(run_id, f"best_{METRIC}", row[METRIC])
            row["run_id"] = run_id
        rows.append(row)
    return rows


def _runs_label(space: TuneSpace) -> str:
    """' (mean of 3 seeds)', ' (mean of 6 runs: 2 seeds x 3 folds)' or ''."""
    if space.runs_per_configuration == 1:
        return ""
    if space.folds == 1:
        return f" (mean of {space.repeats} seeds)"
    if space.repeats == 1:
        return f" (mean of {space.folds} folds)"
    return f" (mean of {space.runs_per_configuration} runs: {space.repeats} seeds x {space.folds} folds)"


def _cell(value: Any) -> str:
    """A sampled value for the trials table (4 significant digits: 1e-05 stays readable)."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _test_selected(
    results: Any, trial: dict[str, Any], job: JobConfig, data: Any
) -> dict[str, float]:
    """Test AUC and logloss of a selected model: the trial's best epoch (the loop keeps it in
    every checkpoint as `best_model`), evaluated once, in this process."""
    import torch
    from plexus.models.backbones import build_ctr_model
    from plexus.models.threads import restores_cpu_state, use_cpu_threads
    from plexus.pipelines.train.evaluate import evaluate, iter_batches
    from plexus.pipelines.train.loop import STATE_FILE

    result = next(r for r in results if (r.metrics or {}).get("trial_id") == trial["trial"])
    if result.checkpoint is None:
        raise PlexusError(f"the best trial {trial['trial']} left no checkpoint under {result.path}")
    with result.checkpoint.as_directory() as folder:
        saved = torch.load(Path(folder) / STATE_FILE, weights_only=False)
    model = build_ctr_model(job.model, job.embedding, data.spec)
    model.load_state_dict(saved["best_model"])
    with restores_cpu_state():
        use_cpu_threads(os.cpu_count() or 1)
        batches = iter_batches(data.shards("test"), data.spec, job.train.eval_batch_size)
        test = evaluate(model, batches)
    return {"test_auc": test["auc"], "test_logloss": test["logloss"]}


def _write_best(
    path: Path, job: JobConfig, best: dict[str, Any], command: str | None, runs: str
) -> Path:
    header = [
        f"# Tuned by plexus tune: best validation AUC {best[METRIC]:.4f}{runs} of the search"
        + (f" `{command}`" if command else ""),
        "# Searched values: " + json.dumps(best["config"], sort_keys=True),
    ]
    text = "\n".join(header) + "\n" + yaml.safe_dump(config_io.to_dict(job), sort_keys=False)
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def _reject_staged_methods(job: JobConfig, data: Any) -> None:
    from plexus.models.backbones import build_ctr_model
    from plexus.models.embeddings import protocol

    model = build_ctr_model(job.model, job.embedding, data.spec)
    if protocol.model_stages(model) != protocol.SINGLE_STAGE:
        raise ConfigError(
            f"embedding.method={job.embedding.method.value} trains in several stages; plexus "
            "tune runs single-stage models: tune its base method, then run the learned one"
        )
