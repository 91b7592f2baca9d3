"""`plexus bench ingest`: results.json rows carry peak_rss_bytes, and the streamed ingest's peak
memory does not grow with the input (4x the rows, about the same peak)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from plexus.pipelines.bench.ingest import bench_ingest


@pytest.mark.slow  # two synthetic files and four child processes: about a minute on 2 cores
def test_peak_memory_does_not_grow_with_rows(tmp_path: Path) -> None:
    small = bench_ingest(tmp_path / "small", rows=300_000, repeats=1)
    large = bench_ingest(tmp_path / "large", rows=1_200_000, repeats=1)
    saved = json.loads((tmp_path / "large" / "results.json").read_text())
    assert saved["peak_rss_bytes"] == large["peak_rss_bytes"] > 100 * 2**20
    # The bare parse holds the whole frame: it grows ~4x; the ingest holds a few blocks.
    assert large["baseline_peak_rss_bytes"] > 2.5 * small["baseline_peak_rss_bytes"] - 400 * 2**20
    assert large["peak_rss_bytes"] < small["peak_rss_bytes"] + 250 * 2**20
    assert large["splits"]["train"] > 900_000 and large["ratio"] > 0
