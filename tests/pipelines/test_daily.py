"""Day after day: stable rows, admission, eviction, row reuse, warm starts, and the daily job."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from plexus.pipelines.daily.ids import DailyConfig, IdState, load_states, save_states
from plexus.pipelines.daily.job import warm_start_state
from plexus.platform.errors import ConfigError

CONFIG = DailyConfig(admit_after=2, evict_after_days=2, headroom=0.5)


def _day(state: IdState, day: int, counts: dict[str, int]):
    return state.update(day, ["", *counts], np.array([0, *counts.values()]), CONFIG)


def test_values_keep_their_rows_and_new_ones_wait_for_admission() -> None:
    state = IdState.empty()
    first = _day(state, 0, {"a": 5, "b": 1, "c": 2})
    assert (first.admitted, first.pending) == (2, 1)  # b seen once: OOV until seen again
    rows = {v: state.row(v) for v in "abc"}
    assert rows["b"] == 0 and rows["a"] > 0 and rows["c"] > 0
    _day(state, 1, {"c": 1, "b": 1, "d": 3})
    assert state.row("a") == rows["a"] and state.row("c") == rows["c"]  # rows are stable
    assert state.row("b") > 0 and state.row("d") > 0  # b's counts add up over days
    assert state.lookup(["", "a", "zz"]).tolist() == [0, rows["a"], 0]


def test_stale_values_are_evicted_and_their_rows_reused() -> None:
    state = IdState.empty()
    _day(state, 0, {"a": 3, "b": 3})
    a_row = state.row("a")
    _day(state, 1, {"b": 3})
    change = _day(state, 2, {"b": 3, "e": 9})  # a unseen since day 0: evicted (2 days)
    assert change.evicted == 1 and state.row("a") == 0
    assert state.row("e") == a_row and change.reused_rows == (a_row,)


def test_tables_grow_with_headroom_and_pending_counts_expire() -> None:
    state = IdState.empty()
    _day(state, 0, {f"v{i}": 2 for i in range(10)})
    assert state.rows == 1 + 15  # 10 values, 50 % headroom
    _day(state, 1, {"once": 1})
    assert "once" in state.pending
    _day(state, 3, {"v0": 2})
    assert "once" not in state.pending  # not seen for 2 days: its count is forgotten


def test_the_state_survives_a_round_trip(tmp_path: Path) -> None:
    state = IdState.empty()
    _day(state, 0, {"a": 3, "b": 1})
    save_states(tmp_path / "ids.json", {"C1": state}, {"buckets": {"I1": 40}})
    loaded, meta = load_states(tmp_path / "ids.json")
    assert loaded["C1"].values == state.values and loaded["C1"].pending == state.pending
    assert meta == {"buckets": {"I1": 40}}


def test_daily_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match="daily.admit_after"):
        DailyConfig(admit_after=0)


def test_warm_start_copies_grows_and_reinitialises_reused_rows() -> None:
    previous = {
        "embeddings.ebc.embedding_bags.t_C1.weight": torch.ones(4, 2),
        "embeddings.ebc.embedding_bags.t_C2.weight": torch.ones(3, 2),
        "mlp.weight": torch.full((2, 2), 7.0),
        "changed.weight": torch.ones(5),
    }
    fresh = {
        "embeddings.ebc.embedding_bags.t_C1.weight": torch.zeros(4, 2),
        "embeddings.ebc.embedding_bags.t_C2.weight": torch.zeros(6, 2),  # grew
        "mlp.weight": torch.zeros(2, 2),
        "changed.weight": torch.zeros(3, 3),
    }
    state, counts = warm_start_state(previous, fresh, {"C1": (2,), "C2": ()})
    c1 = state["embeddings.ebc.embedding_bags.t_C1.weight"]
    assert c1[[0, 1, 3]].eq(1).all() and c1[2].eq(0).all()  # row 2 changed owner
    c2 = state["embeddings.ebc.embedding_bags.t_C2.weight"]
    assert c2[:3].eq(1).all() and c2[3:].eq(0).all()
    assert state["mlp.weight"].eq(7).all() and state["changed.weight"].eq(0).all()
    assert counts == {"copied": 2, "grown": 1, "fresh": 1}


@pytest.mark.slow
def test_three_days_warm_started_through_the_cli(tmp_path: Path) -> None:
    from cli_runner import plexus
    from plexus.pipelines.data.synth import synth_criteo

    days = [
        synth_criteo(tmp_path / f"day{d}.tsv", rows=6_000, seed=4, day=d, drift=0.05)
        for d in range(3)
    ]
    config = tmp_path / "job.yaml"
    config.write_text(
        "name: daily\n"
        f"data: {{format: criteo, path: {days[0]}, split: {{valid: 0.2, test: 0.2}}}}\n"
        "model: {backbone: lr}\nembedding: {method: full, dim: 4}\n"
        "train: {batch_size: 256, epochs: 1, threads_per_worker: 1}\n"
        "daily: {admit_after: 2, evict_after_days: 1}\n"
        f'tracking: {{uri: "sqlite:///{tmp_path / "mlflow.db"}", experiment: daily}}\n'
        f"output: {tmp_path / 'runs'}\n"
    )
    args = ["daily", str(config), *(x for d in days for x in ("--day", str(d)))]
    done = plexus(*args, "--state", str(tmp_path / "state"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [
        json.loads((tmp_path / "state" / f"day-{d}" / "day.json").read_text()) for d in range(3)
    ]
    assert [r["warm_start"] for r in records] == [False, True, True]
    assert all(r["metrics"]["test_auc"] > 0.55 for r in records)
    c1 = [r["change"]["features"]["C1"] for r in records]
    assert c1[1]["evicted"] > 0 and c1[2]["admitted"] > 0  # the popular values moved
    # The day's spec is a new version, and it records what changed.
    spec = json.loads((tmp_path / "state" / "day-2" / "data" / "feature_spec.json").read_text())
    assert spec["source"]["daily"]["day"] == 2
    # A rerun reuses every day; a changed day is refused.
    again = plexus(*args, "--state", str(tmp_path / "state"), cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.count("done before") == 3, again.stdout
    synth_criteo(days[1], rows=6_000, seed=5, day=1, drift=0.05)
    refused = plexus(*args, "--state", str(tmp_path / "state"), cwd=tmp_path)
    assert refused.returncode != 0 and "day 1 was trained from other data" in refused.stderr


def test_the_days_oov_id_never_gets_a_row() -> None:
    state = IdState.empty()
    change = state.update(0, ["", "a"], np.array([50, 3]), CONFIG)  # 50 missing values
    assert change.admitted == 1 and state.values[1:].count("a") == 1
    assert "" not in state.pending and state.lookup([""]).tolist() == [0]
