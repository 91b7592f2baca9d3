"""`plexus bench serve --soak`: steady load, the alias moved under it, memory sampled."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_runner import plexus


@pytest.mark.slow
@pytest.mark.reliability(
    "soak", "steady load with alias moves: no failed request, only loaded versions"
)
def test_a_short_soak_has_no_failed_request_and_flat_memory(
    tmp_path: Path, record_property
) -> None:
    done = plexus(
        "bench", "serve", "--soak", "40", "--swap-every", "10", "--items", "20000",
        "--users", "5000", "--concurrency", "4", "--out", str(tmp_path / "soak"),
        cwd=tmp_path, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "soak" / "results.json").read_text())
    for key in ("requests", "failed_requests", "alias_moves", "rss_drift_bytes"):
        record_property(key, result[key])
    assert result["failed_requests"] == 0 and result["requests"] > 500
    assert result["alias_moves"] >= 3 and not result["unknown_versions_served"]
    assert set(result["versions_served"]) == set(result["versions_registered"])
    low = int(result["swaps_seen_per_client"].split("-")[0])
    assert low >= 2, result  # every client saw the versions change under it
    assert result["rss_drift_bytes"] < 64 << 20, result
