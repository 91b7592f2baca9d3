"""The retrieval job: ingest -> train (Ray Train) -> kNN-Embed fit -> evaluate -> export ->
register (-> promotion gate with `promote.gate`: `plexus.pipelines.promote`), in one parent
MLflow run. Also `export_retrieval` (re-export a trained run folder).

Outputs under `<output>/<name>-retrieval-<config hash>/`: model.pt, config.json, results.json /
results.md / retrieval.png (the kNN-Embed comparison) and bundle/ (also logged to MLflow as the
run's `bundle/` artifacts and registered as a new version of `export.registered_model`).
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from plexus.models.retrieval import TwoTower
from plexus.models.threads import restores_cpu_state, use_cpu_threads
from plexus.pipelines.retrieval.compare import compare_retrieval, fit_knn_embed_query
from plexus.pipelines.retrieval.config import RetrievalJobConfig
from plexus.pipelines.retrieval.data import Interactions, ingest_interactions
from plexus.pipelines.retrieval.evaluate import evaluate_tower
from plexus.pipelines.retrieval.export import write_retrieval_bundle
from plexus.pipelines.retrieval.report import flat_metrics, write_report
from plexus.pipelines.retrieval.train import (
    STATE_FILE,
    build_two_tower,
    epoch_reporter,
    latest_checkpoint,
    retrieval_stages,
    train_two_tower,
    train_worker,
)
from plexus.pipelines.retrieval.user_state import build_user_state
from plexus.platform import config as config_io
from plexus.platform.errors import PlexusError, RegistryError

MODEL_FILE = "model.pt"


def run_dir(config: RetrievalJobConfig) -> Path:
    """Where a job with this config writes: same data/model/train config -> same folder."""
    from plexus.pipelines.runtime import default_runs_dir

    # Absolute: Ray Train's storage_path takes a URI or an absolute path, never a relative one.
    root = Path(config.output).resolve() if config.output else default_runs_dir()
    fingerprint = config.fingerprint("data", "model", "embedding", "train")
    return root / f"{config.name}-retrieval-{fingerprint}"


def data_dir(config: RetrievalJobConfig) -> Path:
    """Where the log's shards go, as for a CTR job: `data.output`, else
    `<runs>/data/<name>-<hash of the data section>` (reused while input and config match)."""
    from plexus.pipelines.runtime import default_runs_dir

    if config.data.output:
        return Path(config.data.output).resolve()
    root = Path(config.output).resolve() if config.output else default_runs_dir()
    return root / "data" / f"{config.name}-{config.fingerprint('data')}"


def load_data(config: RetrievalJobConfig, *, log: bool = False) -> Interactions:
    """Ingest the job's log (reused when unchanged) and build its CSR lists; `log`: record the
    ingest (counts, rejects, feature spec) in a nested `<name>-ingest` MLflow run under the
    active one, as the CTR job does."""
    if not log:
        return ingest_interactions(config.data, data_dir(config))[1]
    from plexus.pipelines import tracking
    from plexus.pipelines.jobs import log_ingest

    with tracking.run(config.tracking.experiment, f"{config.name}-ingest", nested=True):
        result, data = ingest_interactions(config.data, data_dir(config))
        log_ingest(result)
    return data


def train_model(
    config: RetrievalJobConfig, data: Interactions, out: Path
) -> tuple[TwoTower, list[dict[str, float]]]:
    """Train through Ray Train with one worker (or in-process if `use_ray` is false), then save
    `model.pt` in `out`; a folder that already holds a model for the same config is reused."""
    out.mkdir(parents=True, exist_ok=True)
    saved = out / MODEL_FILE
    if saved.is_file():
        return load_model(out, data)
    if not config.use_ray:
        model, history = _train_in_process(config, data, out)
    else:
        # Built before training: a config the towers refuse (a width mismatch, a search without
        # a hold-out) fails here, not in a Ray worker that `train.max_failures` would restart.
        model = build_two_tower(data, config.model, config.embedding)
        retrieval_stages(model, data)
        state, history = _train_with_ray(config, data, out)
        model.load_state_dict(state)
    (out / "config.json").write_text(json.dumps(config_io.to_dict(config), indent=1))
    tmp = saved.with_suffix(".pt.tmp")  # model.pt marks the folder done: write it whole or not
    saved_config = {
        "model": config_io.to_dict(config.model),
        "embedding": None if config.embedding is None else config_io.to_dict(config.embedding),
    }
    torch.save({"state": model.state_dict(), "history": history, **saved_config}, tmp)
    tmp.replace(saved)
    (out / STATE_FILE).unlink(missing_ok=True)  # the in-process checkpoint is no longer needed
    return model.eval(), history


def load_model(folder: Path, data: Interactions) -> tuple[TwoTower, list[dict[str, float]]]:
    """Reload a trained two-tower model written by `train_model`."""
    from plexus.models.embeddings import EmbeddingConfig
    from plexus.models.retrieval import TwoTowerConfig

    file = folder / MODEL_FILE
    if not file.is_file():
        raise RegistryError(f"no trained model at {file}; run `plexus run` with the config first")
    saved = torch.load(file, weights_only=False)
    embedding = saved.get("embedding")
    model = build_two_tower(
        data,
        config_io.from_dict(TwoTowerConfig, saved["model"]),
        None if embedding is None else config_io.from_dict(EmbeddingConfig, embedding),
    )
    model.load_state_dict(saved["state"])
    return model.eval(), saved["history"]


def _train_in_process(
    config: RetrievalJobConfig, data: Interactions, out: Path
) -> tuple[TwoTower, list[dict[str, float]]]:
    """Train in this process (`use_ray: false`), saving the whole training state to
    `out/train_state.pt` after every epoch, so that a killed run resumes after its last epoch."""
    state_file = out / STATE_FILE
    resume = torch.load(state_file, weights_only=False) if state_file.is_file() else None
    if resume is not None:
        print(f"[retrieval] resumed after epoch {len(resume['history'])}", flush=True)

    def on_checkpoint(state: dict[str, Any]) -> None:
        tmp = state_file.with_suffix(".pt.tmp")
        torch.save(state, tmp)
        tmp.replace(state_file)

    return train_two_tower(
        data,
        config.model,
        config.train,
        on_epoch=epoch_reporter(data, config.train.eval_every),
        on_checkpoint=on_checkpoint,
        resume=resume,
        embedding=config.embedding,
    )


def _train_with_ray(
    config: RetrievalJobConfig, data: Interactions, out: Path
) -> tuple[dict[str, torch.Tensor], list[dict[str, float]]]:
    from plexus.pipelines.runtime import ensure_ray

    ensure_ray()  # starts worker processes at niceness 0 (see runtime._QUIET_ENV)
    import ray.train
    from ray.train.torch import TorchTrainer

    if data.spec is None or data.source is None:
        raise PlexusError(f"{data.name}: Ray training reads ingested shards; ingest the log first")
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={
            "data_path": str(data.source),
            "validation": data.validation_task,
            "model": config.model,
            "embedding": config.embedding,
            "train": config.train,
            "resume_from": latest_checkpoint(out / "ray"),
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=1, use_gpu=False, resources_per_worker={"CPU": 1}
        ),
        run_config=ray.train.RunConfig(
            name="ray",
            storage_path=str(out),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            failure_config=ray.train.FailureConfig(max_failures=config.train.max_failures),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise PlexusError(
            f"retrieval training produced no checkpoint: {getattr(result, 'error', None)}"
        )
    with result.checkpoint.as_directory() as folder:
        saved = torch.load(Path(folder) / STATE_FILE, weights_only=False)
    return saved["model"], saved["history"]


def _export_and_register(
    config: RetrievalJobConfig,
    data: Interactions,
    model: TwoTower,
    out: Path,
    *,
    evaluate: bool,
) -> dict[str, Any]:
    """kNN-Embed fit (+ comparison), bundle, MLflow artifacts + a new registered version.
    Must run inside an active MLflow run. With `promote.gate` the new version is registered
    without `export.alias` and the promotion gate decides whether the alias moves to it."""
    import mlflow
    from plexus.pipelines import tracking

    start = time.perf_counter()
    module, state = fit_knn_embed_query(model, data, config.knn_embed)
    users = build_user_state(module, state, data, config.export.stored_user_state)
    mlflow.log_metric("knn_embed_fit_seconds", time.perf_counter() - start)
    metrics: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    if evaluate:
        start = time.perf_counter()
        rows = compare_retrieval(
            module,
            state,
            data,
            ks=config.eval.ks,
            allocation=config.export.allocation,
            users=users,
            popularity_prior=config.export.popularity_prior,
        )
        mlflow.log_metric("compare_seconds", time.perf_counter() - start)
        metrics = flat_metrics(rows)
        mlflow.log_metrics(metrics)
        write_report(rows, out, title=f"{config.name}: kNN-Embed vs single-vector retrieval")
        for name in ("results.json", "results.md", "retrieval.png"):
            mlflow.log_artifact(str(out / name), artifact_path="report")
    bundle, info = write_retrieval_bundle(
        out / "bundle",
        name=config.export.registered_model,
        module=module,
        state=state,
        data=data,
        users=users,
        history_len=config.model.history_len,
        allocation=config.export.allocation,
        nprobe=config.export.nprobe,
        popularity_prior=config.export.popularity_prior,
        metrics=metrics,
        config=config_io.to_dict(config),
    )
    mlflow.log_metric("onnx_max_abs_diff", info["onnx_max_abs_diff"])
    mlflow.log_metric("embedding_bytes", info["embedding_bytes"])  # the graph's tables, served
    for k, recall in info["index_recall_vs_exact"].items():
        mlflow.log_metric(f"index_recall_at_{k}", recall)
    gated = config.promote.gate  # then the gate, not the export, moves the alias
    alias = None if gated else config.export.alias
    version = register_bundle(bundle, config.export.registered_model, alias=alias)
    result = {"bundle": str(bundle), "version": version, "export": info, "results": rows, **metrics}
    if gated:
        from plexus.pipelines.promote import promote

        promotion = promote(config, candidate=version, data=data)
        print(f"[plexus] promotion gate: {promotion.summary()}", flush=True)
        mlflow.set_tag("plexus.promote.decision", promotion.decision)
        for side, values in (
            ("candidate", promotion.candidate_metrics),
            ("champion", promotion.champion_metrics or {}),
        ):
            tracking.log_metrics(f"promote.{side}", values)
        result["promotion"] = dataclasses.asdict(promotion)
    return result


def register_bundle(bundle: Path, name: str, *, alias: str | None = None) -> str:
    """Log `bundle` as the active run's `bundle/` artifacts and register it as a new version of
    `name` (MLflow 3: a model version whose source is that artifact folder); returns the version."""
    import mlflow
    from mlflow.exceptions import MlflowException

    run = mlflow.active_run()
    if run is None:
        raise RegistryError("register_bundle needs an active MLflow run")
    mlflow.log_artifacts(str(bundle), artifact_path="bundle")
    client = mlflow.MlflowClient()
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="Plexus kNN-Embed retrieval bundle")
    version = client.create_model_version(
        name, source=mlflow.get_artifact_uri("bundle"), run_id=run.info.run_id
    ).version
    record = {"name": name, "version": str(version), "run_id": run.info.run_id}
    (bundle / "registry.json").write_text(json.dumps(record))
    mlflow.log_artifact(str(bundle / "registry.json"), artifact_path="bundle")
    if alias:
        client.set_registered_model_alias(name, alias, version)
    return str(version)


@restores_cpu_state()
def run_retrieval_job(config: RetrievalJobConfig) -> dict[str, Any]:
    """The whole retrieval job in one parent MLflow run; returns run id, version, metrics."""
    from plexus.pipelines import tracking

    tracking.configure(config.tracking.uri)
    import mlflow
    from plexus.serving.index import set_threads

    use_cpu_threads(config.train.threads)
    set_threads(config.train.threads)
    out = run_dir(config)
    params = config_io.flatten(config)
    with tracking.run(config.tracking.experiment, f"{config.name}-retrieval", params=params) as run:
        start = time.perf_counter()
        data = load_data(config, log=True)
        mlflow.log_metrics(
            {
                "data.users": data.num_users,
                "data.items": data.num_items,
                "data.catalog_items": 0 if data.catalog_ids is None else data.catalog_ids.size,
                "data.train": int(data.train_items.size),
                "data.test": int(data.test_items.size),
                "ingest_seconds": time.perf_counter() - start,
            }
        )
        start = time.perf_counter()
        mlflow.set_tag("model_reused", str((out / MODEL_FILE).is_file()).lower())
        model, history = train_model(config, data, out)
        for record in history:
            values = {k: v for k, v in record.items() if k != "epoch"}
            tracking.log_metrics("train", values, step=int(record["epoch"]))
        mlflow.log_metric("train_seconds", time.perf_counter() - start)
        start = time.perf_counter()
        tower = evaluate_tower(model, data, ks=config.eval.ks)
        tracking.log_metrics("tower", tower)
        mlflow.log_metric("evaluate_seconds", time.perf_counter() - start)
        result = _export_and_register(config, data, model, out, evaluate=True)
        summary = {
            "run_id": run.info.run_id,
            "model_name": config.export.registered_model,
            "output": str(out),
            "tower": tower,
            **result,
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
        mlflow.log_artifact(str(out / "summary.json"))
    return summary


def export_retrieval(config: RetrievalJobConfig, *, evaluate: bool = False) -> dict[str, Any]:
    """Re-export the model trained by `run_retrieval_job(config)` (same config -> same folder)
    as a new registered bundle version, in its own MLflow run; returns {"version", ...}."""
    from plexus.pipelines import tracking

    tracking.configure(config.tracking.uri)
    out = run_dir(config)
    data = load_data(config)
    model, _ = load_model(out, data)
    with (
        tracking.run(
            config.tracking.experiment, f"{config.name}-export", params=config_io.flatten(config)
        ) as run,
        tempfile.TemporaryDirectory() as tmp,
    ):
        result = _export_and_register(config, data, model, Path(tmp), evaluate=evaluate)
        result["bundle"] = f"runs:/{run.info.run_id}/bundle"
    return {"run_id": run.info.run_id, "model_name": config.export.registered_model, **result}
