"""A killed driver leaves no process behind: Ray's processes of a `plexus train` end with it,
and the rerun finishes from the checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from cli_runner import PLEXUS, kill_driver_and_check_nothing_is_left, plexus, tiny_ctr_job


@pytest.mark.reliability(
    "fault", "driver killed after its first epoch: no process left, the rerun resumes"
)
@pytest.mark.parametrize(
    "signum",
    # Slow (80-110 s each): the default suite stays under its 15 minutes on 2 cores.
    [
        pytest.param(signal.SIGKILL, marks=pytest.mark.slow),
        pytest.param(signal.SIGTERM, marks=pytest.mark.slow),
    ],
    ids=["SIGKILL", "SIGTERM"],
)
def test_a_killed_driver_leaves_no_process_and_the_rerun_finishes(
    tmp_path: Path, signum: int
) -> None:
    config = tiny_ctr_job(
        tmp_path,
        "killed",
        rows=6_000,
        seed=2,
        sections="""
model: {backbone: lr}
embedding: {method: full, dim: 4}
train: {batch_size: 256, epochs: 3, threads_per_worker: 1}
""",
    )
    proc = subprocess.Popen(
        [*PLEXUS, "train", str(config)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    kill_driver_and_check_nothing_is_left(proc, tmp_path, "epoch 1/3", signum)

    rerun = plexus("train", str(config), cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-3000:]
    assert "resumed after epoch" in rerun.stdout + rerun.stderr


@pytest.mark.reliability(
    "fault", "driver of plexus bench (2 sharded workers) killed mid-training: nothing left"
)
@pytest.mark.slow
def test_a_killed_bench_driver_leaves_no_process_and_no_results(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    command = ["bench", "train", "--out", str(out), "--rows", "20000", "--workers", "2"]
    proc = subprocess.Popen(
        [*PLEXUS, *command],
        cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    kill_driver_and_check_nothing_is_left(proc, tmp_path, "epoch 1/2", signal.SIGKILL)
    assert not (out / "results.json").exists()  # nothing half-done passes for a result

    rerun = plexus(*command, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-3000:]
    (row,) = json.loads((out / "results.json").read_text())["by_workers"]
    assert row["workers"] == 2 and row["examples_per_s"] > 0
