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


# ---- the reliability table (`make test-reliability`) --------------------------------------------
# A test marked `@pytest.mark.reliability(kind, case)` is one row of the README's reliability
# table: `kind` is "fault", "input", "bundle" or "soak". Tests add figures with
# `record_property(name, value)`; numeric figures recorded several times (once per hypothesis
# example, say) are summed. With PLEXUS_RELIABILITY_OUT set, the rows go to
# $PLEXUS_RELIABILITY_OUT/results.json and results.md when the session ends.
_RELIABILITY: list[dict] = []


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "reliability(kind, case): a row of the reliability table (make test-reliability)"
    )
    config.addinivalue_line("markers", "disk_size(size): the size of the small_disk tmpfs")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    outcome = yield
    report = outcome.get_result()
    marker = item.get_closest_marker("reliability")
    if marker is None or report.when != "call":
        return
    kind, case = marker.args
    param = getattr(item, "callspec", None)
    figures: dict = {}
    for name, value in item.user_properties:
        if isinstance(value, int | float) and not isinstance(value, bool):
            figures[name] = figures.get(name, 0) + value
        else:
            figures[name] = value
    _RELIABILITY.append(
        {
            "kind": kind,
            "case": case + (f" [{param.id}]" if param is not None else ""),
            "test": item.nodeid,
            "outcome": report.outcome,
            "seconds": round(report.duration, 1),
            **figures,
        }
    )


def pytest_sessionfinish(session: pytest.Session) -> None:
    out = os.environ.get("PLEXUS_RELIABILITY_OUT")
    if not out or not _RELIABILITY:
        return
    import json

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(_RELIABILITY, indent=1))
    order = {"fault": 0, "input": 1, "bundle": 2, "soak": 3}
    rows = sorted(_RELIABILITY, key=lambda r: (order.get(r["kind"], 9), r["case"]))
    lines = ["| kind | case | result | figures | seconds |", "|---|---|---|---|---:|"]
    for row in rows:
        extra = ", ".join(
            f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}"
            for k, v in row.items()
            if k not in ("kind", "case", "test", "outcome", "seconds")
        )
        result = "survived" if row["outcome"] == "passed" else f"**{row['outcome'].upper()}**"
        lines.append(f"| {row['kind']} | {row['case']} | {result} | {extra} | {row['seconds']} |")
    passed = sum(r["outcome"] == "passed" for r in rows)
    lines.append(f"\n{passed} of {len(rows)} cases survived.")
    (folder / "results.md").write_text("\n".join(lines) + "\n")
