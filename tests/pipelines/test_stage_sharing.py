"""Where a multi-stage job keeps each stage: a stage that ignores the budget's options lives in
a folder that jobs differing only in those options share; every other stage is the run's own."""

from __future__ import annotations

from pathlib import Path

from plexus.models.embeddings.protocol import Stage
from plexus.pipelines.config import bundled_config, load_job_config
from plexus.pipelines.train.stages import stage_folder

STAGES = (Stage("dense", ignores=("density", "byte_budget")), Stage("finetune"))


def _folder(*overrides: str, index: int = 0, data: str = "spec-a") -> Path | None:
    job = load_job_config(
        bundled_config("synthetic"), ["embedding.method=magnitude_pruning", *overrides]
    )
    return stage_folder(job, data, Path("/runs/synthetic/train-x"), STAGES, index)


def test_jobs_that_differ_only_in_ignored_options_share_the_stage() -> None:
    quarter = _folder("embedding.options.byte_budget=0.25")
    assert quarter is not None and quarter.parent == Path("/runs/synthetic/stages")
    assert quarter.name.startswith("dense-")
    assert _folder("embedding.options.byte_budget=0.015625") == quarter
    assert _folder("embedding.options.density=0.3") == quarter
    assert _folder() == quarter  # the option's default


def test_anything_else_the_stage_reads_gives_its_own_folder() -> None:
    quarter = _folder("embedding.options.byte_budget=0.25")
    for other in (
        ["embedding.options.scope=table"],
        ["embedding.dim=8"],
        ["train.seed=1"],
        ["train.lr=0.01"],
        ["model.hidden=[64]"],
        ["use_ray=false"],
    ):
        assert _folder("embedding.options.byte_budget=0.25", *other) != quarter, other
    assert _folder("embedding.options.byte_budget=0.25", data="spec-b") != quarter


def test_a_stage_after_one_that_reads_the_budget_is_the_runs_own() -> None:
    assert _folder("embedding.options.byte_budget=0.25", index=1) is None
    stages = (Stage("search"), Stage("retrain", ignores=("byte_budget",)))
    job = load_job_config(bundled_config("synthetic"), ["embedding.method=magnitude_pruning"])
    assert stage_folder(job, "spec-a", Path("/runs/s/train-x"), stages, 1) is None
