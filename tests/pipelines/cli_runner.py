"""The `plexus` CLI as the end-to-end tests run it: a subprocess, and the reload of a model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from plexus.pipelines import reaper

PLEXUS = [sys.executable, "-m", "plexus.pipelines.cli"]


def plexus(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PLEXUS, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def evaluate_saved_model(tmp: Path, metrics_path: Path) -> dict[str, float]:
    """`plexus evaluate` of the model a finished training wrote, on its ingested data (the one
    folder under `tmp/runs/data`): the metrics it prints."""
    data = next((tmp / "runs" / "data").iterdir())
    done = plexus(
        "evaluate", "--model", str(metrics_path.parent / "model"), "--data", str(data), cwd=tmp
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def tiny_ctr_job(tmp: Path, name: str, *, rows: int, seed: int, sections: str) -> Path:
    """A job YAML over `rows` synthetic Criteo lines written in `tmp` (20/20 % valid/test
    split), tracked in `tmp/mlflow.db` with outputs under `tmp/runs`; `sections` gives the
    model, embedding and train sections as YAML lines."""
    from plexus.pipelines.data.synth import synth_criteo

    raw = synth_criteo(tmp / "day.tsv", rows=rows, seed=seed)
    config = tmp / "job.yaml"
    config.write_text(
        f"name: {name}\n"
        f"data: {{format: criteo, path: {raw}, min_count: 2, "
        "split: {valid: 0.2, test: 0.2, seed: 1}}\n"
        f"{sections.strip()}\n"
        f'tracking: {{uri: "sqlite:///{tmp / "mlflow.db"}", experiment: {name}}}\n'
        f"output: {tmp / 'runs'}\n"
    )
    return config


def kill_train_workers_after(
    proc: subprocess.Popen, log: Path, marker: str, *, only_one: bool = False
) -> None:
    """Once `log` shows `marker` (the first epoch's report: its checkpoint is then registered),
    SIGKILL every RayTrainWorker process of the job `proc` (`only_one`: the last started),
    in the middle of the next epoch."""
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and marker not in log.read_text(errors="replace"):
        assert proc.poll() is None, log.read_text()[-3000:]
        time.sleep(0.2)
    assert marker in log.read_text(errors="replace"), log.read_text()[-3000:]
    time.sleep(2)
    workers = [
        pid
        for pid, _ in reaper.descendants(proc.pid)
        if b"RayTrainWorker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    assert workers, "no Ray Train worker found among the driver's processes"
    for pid in sorted(workers)[-1:] if only_one else workers:
        os.kill(pid, signal.SIGKILL)


def kill_driver_and_check_nothing_is_left(
    proc: subprocess.Popen, tmp: Path, marker: str, signum: int
) -> None:
    """Read the job's output until `marker` (an epoch's line) and its checkpoint under `tmp`,
    send `signum` to the driver alone, and check that every process it had started (Ray's
    GCS, raylet, workers, ...) is gone within a minute."""
    seen: set[reaper.Process] = set()
    output = ""
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline:  # until the first epoch is checkpointed
        seen |= reaper.descendants(proc.pid)
        line = proc.stdout.readline()
        output += line
        if marker in line or not line:
            break
    assert marker in output, output[-3000:]
    deadline = time.monotonic() + 180  # the epoch's checkpoint lands just after its line
    while time.monotonic() < deadline and not any(tmp.glob("**/checkpoint_*/state.pt")):
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
