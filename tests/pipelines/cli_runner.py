"""The `plexus` CLI as the end-to-end tests run it: a subprocess, and the reload of a model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
