"""`plexus bench search`: a search stage's wall time one candidate at a time against in parallel.

The search of a learned method (OptEmbed's evolutionary search) evaluates independent candidates
on Ray actors (`pipelines.train.search.RayFitness`). This re-runs the search stage of a job
whose previous stage has finished (e.g. after `plexus train` of an OptEmbed config), from the
same saved model, once per worker count, and reports the wall times, the speed-up over one
worker and whether every run found the same architecture (the search is deterministic).

Example:
    >>> rows = bench_search("synthetic", ["embedding.method=optembed"], Path("runs/bench/search"),
    ...                     workers=(1, 2))
    >>> rows[1]["speedup"]
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from plexus.models.backbones import build_ctr_model
from plexus.models.embeddings import protocol
from plexus.pipelines.bench.report import markdown_table, write_results
from plexus.pipelines.config import config_path, load_job_config
from plexus.pipelines.jobs import run_ingest
from plexus.pipelines.train.job import run_output_dir
from plexus.pipelines.train.stages import search_stage, stage_start
from plexus.platform.errors import PlexusError


def bench_search(
    config: str | Path,
    overrides: Sequence[str],
    out: Path,
    *,
    workers: Sequence[int] = (1, 0),
    generations: int | None = None,
) -> list[dict[str, Any]]:
    """Time the job's first search stage at each worker count (0: one per core), for
    `generations` generations if given (else the job's own search length)."""
    job = load_job_config(config_path(config), overrides)
    data = run_ingest(job, progress=False)
    stages = protocol.model_stages(build_ctr_model(job.model, job.embedding, data.spec))
    index = next((i for i, s in enumerate(stages) if s.kind is protocol.StageKind.SEARCH), None)
    if index is None or index == 0:
        raise PlexusError(
            f"embedding.method={job.embedding.method.value} has no search stage after a training "
            "stage; use a learned method such as optembed"
        )
    before = stages[index - 1]
    saved = run_output_dir(job, data) / "stages" / f"{index - 1}-{before.name}" / "model.pt"
    if not saved.is_file():
        raise PlexusError(
            f"{saved} is missing: run `plexus train {config}` with the same overrides first "
            f"(its {before.name} stage is what the search starts from)"
        )
    state = torch.load(saved, weights_only=True)
    if generations is not None:  # after locating the folder: its hash covers the options
        options = job.embedding.options
        search = dataclasses.replace(options.search, generations=generations)
        embedding = dataclasses.replace(
            job.embedding, options=dataclasses.replace(options, search=search)
        )
        job = dataclasses.replace(job, embedding=embedding)
    rows: list[dict[str, Any]] = []
    for count in workers:
        model = stage_start(job, data, stages[index], index, state)
        started = time.perf_counter()
        metrics, searched = search_stage(job, data, model, stages[index], workers=count)
        seconds = time.perf_counter() - started
        rows.append({
            "workers": int(metrics["workers"]),
            "seconds": seconds,
            "evaluations": int(metrics["fitness_evaluations"]),
            "evaluations_per_s": metrics["fitness_evaluations"] / seconds,
            "best_fitness": metrics.get("search_fitness"),
            "widths": searched.get("embeddings.widths", torch.empty(0)).tolist(),
        })  # fmt: skip
        print(
            f"[bench search] {rows[-1]['workers']} worker(s): {seconds:.1f} s for "
            f"{rows[-1]['evaluations']} evaluations",
            flush=True,
        )
    for row in rows:
        row["speedup"] = rows[0]["seconds"] / row["seconds"]
        row["same_result"] = row["widths"] == rows[0]["widths"]
    table = markdown_table(
        rows, ["workers", "seconds", "evaluations", "evaluations_per_s", "speedup", "same_result"]
    )
    write_results(out.resolve(), rows, markdown=table)
    print(table)
    return rows
