"""Shared fixtures: a quiet, sandboxed environment and one local Ray per test session."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Tools write into $HOME and phone home unless told otherwise: point them at a temp folder.
_SANDBOX = Path(tempfile.mkdtemp(prefix="plexus-tests-"))
for key, value in {
    "RAY_AUTH_MODE": "disabled",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "RAY_USAGE_STATS_ENABLED": "0",
    "XDG_CACHE_HOME": str(_SANDBOX / "cache"),
    "TORCHINDUCTOR_CACHE_DIR": str(_SANDBOX / "inductor"),
    "PLEXUS_RUNS_DIR": str(_SANDBOX / "runs"),
}.items():
    os.environ.setdefault(key, value)
os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray (2 CPUs) shared by every test that trains or reads through Ray."""
    import ray
    from plexus.pipelines.runtime import ensure_ray

    ensure_ray(num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture
def mlflow_uri(tmp_path: Path) -> str:
    """A fresh embedded MLflow store (SQLite + local artifacts) for one test."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"
