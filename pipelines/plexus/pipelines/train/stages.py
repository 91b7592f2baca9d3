"""Multi-stage training of learned embedding methods (`EmbeddingTables.stages()`).

Each stage is a nested MLflow run under the training run and a folder
`<train output>/stages/<i>-<name>/` holding its start state (`init.pt`), its Ray Train
checkpoints, its result (`model.pt`, the best model of a `TRAIN` stage or the searched model
of a `SEARCH` stage), the method's plots after a `SEARCH` stage (`EmbeddingTables.figures`,
also logged to the stage's MLflow run) and `stage.json` (its metrics, written last). A finished
stage is reused, so a crashed run resumes at the first unfinished stage, and a `TRAIN` stage
killed mid-way resumes from its last epoch checkpoint.

The weights a `TRAIN` stage starts from follow `Stage.init`: the previous stage's (continue),
the first stage's initial weights, rebuilt from the same seed (rewind), or a new draw (fresh);
the method's own state (a found architecture) is carried over by `EmbeddingTables.begin_stage`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from plexus.models.backbones import build_ctr_model
from plexus.models.embeddings import protocol
from plexus.models.embeddings.protocol import Stage, StageInit, StageKind
from plexus.pipelines import tracking
from plexus.pipelines.config import JobConfig
from plexus.pipelines.files import read_json, write_json
from plexus.pipelines.ingest import IngestResult
from plexus.pipelines.train.search import RayFitness

STAGE_FILE = "stage.json"
FRESH_SEED_OFFSET = 1_000_003  # a fresh stage i draws with seed + i * this


def run_stages(
    job: JobConfig,
    data: IngestResult,
    out: Path,
    stages: Sequence[Stage],
    fit: Callable[..., Any],
    load_final_state: Callable[[Any], tuple[list[dict[str, float]], dict[str, torch.Tensor]]],
) -> tuple[list[dict[str, float]], dict[str, torch.Tensor], dict[str, float]]:
    """Run `stages` in order; returns the last `TRAIN` stage's history, the final state and
    every stage's metrics as `<stage>.<metric>`.

    `fit(job, data, folder, run_id, init_state=..., stage=...)` runs the training loop on Ray
    Train and `load_final_state(result)` reads its best model, as for a single-stage job.
    """
    import mlflow

    previous: dict[str, torch.Tensor] | None = None
    history: list[dict[str, float]] = []
    summary: dict[str, float] = {}
    for i, stage in enumerate(stages):
        folder = out / "stages" / f"{i}-{stage.name}"
        folder.mkdir(parents=True, exist_ok=True)
        done = folder / STAGE_FILE
        if done.is_file():
            saved = read_json(done)
            state = torch.load(folder / "model.pt", weights_only=True)
            print(f"[plexus] stage {i + 1}/{len(stages)} {stage.name}: finished earlier, reused")
        else:
            print(f"[plexus] stage {i + 1}/{len(stages)} {stage.name} ({stage.kind.value})")
            with tracking.resumable_run(
                folder, job.tracking.experiment, f"{job.name}-{stage.name}", nested=True
            ) as (active, _):
                mlflow.set_tags({"plexus.stage": stage.name, "plexus.stage_index": str(i)})
                model = stage_start(job, data, stage, i, previous)
                started = time.perf_counter()
                if stage.kind is StageKind.TRAIN:
                    init = folder / "init.pt"
                    _save_state(init, model.state_dict())
                    result = fit(
                        job,
                        data,
                        folder,
                        active.info.run_id,
                        init_state=str(init),
                        stage=stage.name,
                    )
                    stage_history, state = load_final_state(result)
                    best = max(stage_history, key=lambda h: h["valid_auc"])
                    metrics = {
                        "best_valid_auc": best["valid_auc"],
                        "best_epoch": best["epoch"],
                        "epochs_run": float(len(stage_history)),
                    }
                else:
                    stage_history = []
                    metrics, state = search_stage(job, data, model, stage)
                    for name, figure in protocol.figures(model).items():
                        tracking.log_figure(
                            figure, f"plots/{name}.png", also_to=folder / f"{name}.png"
                        )
                metrics["seconds"] = time.perf_counter() - started
                mlflow.log_metrics(metrics)
                _save_state(folder / "model.pt", state)
                saved = {"metrics": metrics, "history": stage_history}
                write_json(done, saved)
        if stage.kind is StageKind.TRAIN:
            history = saved["history"]
        summary.update({f"{stage.name}.{k}": float(v) for k, v in saved["metrics"].items()})
        previous = state
    assert previous is not None
    return history, previous, summary


def stage_start(
    job: JobConfig,
    data: IngestResult,
    stage: Stage,
    index: int,
    previous: dict[str, torch.Tensor] | None,
) -> torch.nn.Module:
    """The model a stage starts from (see the module docstring for `Stage.init`)."""
    fresh = stage.kind is StageKind.TRAIN and stage.init is StageInit.FRESH
    torch.manual_seed(job.train.seed + (index * FRESH_SEED_OFFSET if fresh else 0))
    model = build_ctr_model(job.model, job.embedding, data.spec)
    before = None
    if previous is not None:
        before = build_ctr_model(job.model, job.embedding, data.spec)
        before.load_state_dict(previous)
        if stage.kind is StageKind.SEARCH or stage.init is StageInit.CONTINUE:
            model.load_state_dict(previous)
    protocol.begin_stage(model, stage, before)
    return model


def search_stage(
    job: JobConfig,
    data: IngestResult,
    model: torch.nn.Module,
    stage: Stage,
    *,
    workers: int | None = None,
) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """Run a `SEARCH` stage on `model` with Ray actors (`workers`, default
    `train.search_workers`); returns its metrics and the searched model's state."""
    count = job.train.search_workers if workers is None else workers
    fitness = RayFitness(job, data, model, workers=count)
    try:
        metrics = protocol.search(model, stage, fitness)
    finally:
        fitness.close()
    metrics.update(
        {
            "workers": float(fitness.workers),
            "fitness_seconds": fitness.seconds,
            "fitness_evaluations": float(fitness.evaluations),
        }
    )
    return metrics, {k: v.detach().clone() for k, v in model.state_dict().items()}


def _save_state(path: Path, state: dict[str, torch.Tensor]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
