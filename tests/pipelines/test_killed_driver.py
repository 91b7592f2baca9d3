"""A killed driver leaves no process behind: Ray's processes of a `plexus train` end with it,
and the rerun finishes from the checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from cli_runner import PLEXUS, plexus, tiny_ctr_job
from plexus.pipelines import reaper


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
    seen: set[reaper.Process] = set()
    output = ""
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline:  # until the first epoch is checkpointed
        seen |= reaper.descendants(proc.pid)
        line = proc.stdout.readline()
        output += line
        if "epoch 1/3" in line or not line:
            break
    assert "epoch 1/3" in output, output[-3000:]
    deadline = time.monotonic() + 180  # the epoch's checkpoint lands just after its line
    while time.monotonic() < deadline and not any(tmp_path.glob("runs/**/checkpoint_*/state.pt")):
        seen |= reaper.descendants(proc.pid)
        time.sleep(0.2)
    time.sleep(2)  # let it be written whole
    seen |= reaper.descendants(proc.pid)
    assert len(seen) >= 3  # the GCS, the raylet, workers, ...: a real local Ray
    os.kill(proc.pid, signum)  # the driver only, not its process group
    proc.wait(timeout=120)

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(reaper.alive(p) for p in seen):
        time.sleep(0.5)
    left = [p for p in seen if reaper.alive(p)]
    names = [Path(f"/proc/{pid}/cmdline").read_bytes()[:80] for pid, _ in left]
    assert not left, names

    rerun = plexus("train", str(config), cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-3000:]
    assert "resumed after epoch" in rerun.stdout + rerun.stderr
