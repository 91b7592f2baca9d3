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

A stage that declares `Stage.ignores` (magnitude pruning's dense stage ignores the budget) lives
in `<runs>/<name>/stages/<stage>-<hash>/`, the hash covering the job's config without those
options and the data; the run's `stages/<i>-<name>` links to it. Jobs at other budgets then
reuse it, and a lock keeps two jobs from training it at once. Its MLflow run is nested under
the job that trained it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from plexus.models.backbones import build_ctr_model
from plexus.models.embeddings import protocol
from plexus.models.embeddings.protocol import Stage, StageKind
from plexus.pipelines import tracking
from plexus.pipelines.config import JobConfig
from plexus.pipelines.files import read_json, write_json
from plexus.pipelines.ingest import IngestResult
from plexus.pipelines.train.search import RayFitness

STAGE_FILE = "stage.json"


def run_stages(
    job: JobConfig,
    data: IngestResult,
    out: Path,
    stages: Sequence[Stage],
    fit: Callable[..., Any],
    load_final_state: Callable[[Any], tuple[list[dict[str, float]], dict[str, torch.Tensor]]],
    *,
    share: bool = True,
) -> tuple[list[dict[str, float]], dict[str, torch.Tensor], dict[str, float]]:
    """Run `stages` in order; returns the last `TRAIN` stage's history, the final state and
    every stage's metrics as `<stage>.<metric>`. `share`: reuse (and offer) the stages that
    ignore some options (see the module docstring); False trains every stage in `out`.

    `fit(job, data, folder, run_id, init_state=..., stage=...)` runs the training loop on Ray
    Train and `load_final_state(result)` reads its best model, as for a single-stage job.
    """
    previous: dict[str, torch.Tensor] | None = None
    history: list[dict[str, float]] = []
    summary: dict[str, float] = {}
    for i, stage in enumerate(stages):
        own = out / "stages" / f"{i}-{stage.name}"
        mine = own.is_dir() and not own.is_symlink()  # begun in this run's folder: resume it
        shared = (
            None if mine or not share else stage_folder(job, data.spec.fingerprint, out, stages, i)
        )
        folder = shared or own
        folder.mkdir(parents=True, exist_ok=True)
        if shared is not None and not own.is_symlink():
            own.parent.mkdir(parents=True, exist_ok=True)
            own.symlink_to(shared.resolve(), target_is_directory=True)
        with _locked(folder):
            saved, state = _run_stage(job, data, stages, i, folder, previous, fit, load_final_state)
        if stage.kind is StageKind.TRAIN:
            history = saved["history"]
        summary.update({f"{stage.name}.{k}": float(v) for k, v in saved["metrics"].items()})
        previous = state
    assert previous is not None
    return history, previous, summary


def _run_stage(
    job: JobConfig,
    data: IngestResult,
    stages: Sequence[Stage],
    i: int,
    folder: Path,
    previous: dict[str, torch.Tensor] | None,
    fit: Callable[..., Any],
    load_final_state: Callable[[Any], tuple[list[dict[str, float]], dict[str, torch.Tensor]]],
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Stage `i` in `folder`, or its result from an earlier run: (`stage.json`, state)."""
    import mlflow

    stage = stages[i]
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
                    tracking.log_figure(figure, f"plots/{name}.png", also_to=folder / f"{name}.png")
            metrics["seconds"] = time.perf_counter() - started
            mlflow.log_metrics(metrics)
            _save_state(folder / "model.pt", state)
            saved = {"metrics": metrics, "history": stage_history}
            write_json(done, saved)
    return saved, state


def stage_folder(
    job: JobConfig, data_fingerprint: str, out: Path, stages: Sequence[Stage], index: int
) -> Path | None:
    """The shared folder of stage `index` of the run in `out` when it and every stage before
    it ignore some options (`Stage.ignores`), else None (the stage is the run's own). Its key
    is the job's config with those options at their defaults, the data's feature-spec
    fingerprint and the stage's place."""
    options = job.embedding.options
    ignored = set.intersection(*(set(s.ignores) for s in stages[: index + 1]))
    if not ignored or options is None:
        return None
    defaults = {
        f.name: f.default
        for f in dataclasses.fields(options)
        if f.name in ignored and f.default is not dataclasses.MISSING
    }
    general = dataclasses.replace(
        job,
        embedding=dataclasses.replace(
            job.embedding, options=dataclasses.replace(options, **defaults)
        ),
    )
    stage = stages[index]
    text = f"{general.training_key(data_fingerprint)}:{index}-{stage.name}"
    return out.parent / "stages" / f"{stage.name}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold `folder`'s lock: a job at another budget waits for a shared stage, then reuses it."""
    with (folder / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def stage_start(
    job: JobConfig,
    data: IngestResult,
    stage: Stage,
    index: int,
    previous: dict[str, torch.Tensor] | None,
) -> torch.nn.Module:
    """The CTR model a stage starts from (`protocol.stage_model`; see the module docstring)."""
    return protocol.stage_model(
        lambda: build_ctr_model(job.model, job.embedding, data.spec),
        job.train.seed,
        stage,
        index,
        previous,
    )


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
