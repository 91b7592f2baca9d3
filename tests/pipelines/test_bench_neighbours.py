"""`plexus bench neighbours`: exact and HNSW nearest users measured on the same planted users."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from plexus.pipelines.bench.neighbours import bench_neighbours, planted_users


def test_planted_users_are_unit_vectors_behind_a_zero_padding_row() -> None:
    table = planted_users(500, 16, interests=8)
    assert table.shape == (501, 16) and not table[0].any()
    torch.testing.assert_close(table[1:].norm(dim=1), torch.ones(500))


def test_bench_writes_one_row_per_user_count_with_recall_against_exact(tmp_path: Path) -> None:
    rows = bench_neighbours(tmp_path, users=(1_000, 3_000), dim=16, neighbors=10, queries=300)
    assert [r["users"] for r in rows] == [1_000, 3_000]
    for row in rows:
        assert row["recall"] >= 0.9  # planted users: HNSW finds the exact neighbours
        assert row["hnsw_seconds"] == row["hnsw_build_seconds"] + row["hnsw_search_seconds"]
        assert row["exact_seconds"] > 0 and row["queries"] == 300
    assert json.loads((tmp_path / "results.json").read_text()) == rows
    assert "| planted | 3000 |" in (tmp_path / "results.md").read_text()
