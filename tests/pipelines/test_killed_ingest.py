"""A killed `plexus ingest` (SIGKILL and SIGTERM at several points): nothing half-written is
read as done, no process is left, and the rerun's outputs are byte-identical to those of an
ingest that was never interrupted."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from cli_runner import PLEXUS, plexus
from plexus.pipelines import reaper

pytestmark = pytest.mark.slow


def _digests(runs: Path) -> dict[str, str]:
    """sha256 of every file of the (one) ingested data folder, by relative path."""
    (folder,) = (runs / "data").iterdir()
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "manifest.json"  # it records the run's own timings
    }


@pytest.fixture(scope="module")
def day(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from plexus.pipelines.data.synth import synth_criteo

    return synth_criteo(tmp_path_factory.mktemp("raw") / "day.tsv", rows=600_000, seed=7)


def _config(folder: Path, day: Path) -> Path:
    config = folder / "job.yaml"
    config.write_text(
        f"name: killed\ndata: {{format: criteo, path: {day}, min_count: 2}}\n"
        f"output: {folder / 'runs'}\n"
    )
    return config


@pytest.mark.reliability(
    "fault", "ingest driver killed part-way: no process left, rerun byte-identical"
)
@pytest.mark.parametrize(
    ("signum", "after"),
    [(signal.SIGKILL, 2.0), (signal.SIGKILL, 6.0), (signal.SIGTERM, 4.0)],
    ids=["SIGKILL after 2 s", "SIGKILL after 6 s", "SIGTERM after 4 s"],
)
def test_a_killed_ingest_reruns_to_the_same_bytes(
    tmp_path: Path, day: Path, signum: int, after: float
) -> None:
    calm = tmp_path / "calm"
    calm.mkdir()
    done = plexus("ingest", str(_config(calm, day)), cwd=calm)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = _digests(calm / "runs")

    killed = tmp_path / "killed"
    killed.mkdir()
    config = _config(killed, day)
    proc = subprocess.Popen(
        [*PLEXUS, "ingest", str(config)], cwd=killed, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    seen: set[reaper.Process] = set()
    deadline = time.monotonic() + after
    while time.monotonic() < deadline and proc.poll() is None:
        seen |= reaper.descendants(proc.pid)
        time.sleep(0.1)
    if proc.poll() is None:
        os.kill(proc.pid, signum)
    proc.wait(timeout=60)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(reaper.alive(p) for p in seen):
        time.sleep(0.5)
    assert not [p for p in seen if reaper.alive(p)], "processes of the killed ingest are left"

    rerun = plexus("ingest", str(config), cwd=killed)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert _digests(killed / "runs") == expected
    leftovers = [p.name for p in (killed / "runs" / "data").iterdir() if ".tmp" in p.name]
    assert not leftovers, f"the killed ingest's temporary folders are left: {leftovers}"
