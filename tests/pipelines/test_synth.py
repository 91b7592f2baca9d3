"""The synthetic generators: layout, determinism, malformed lines and planted signal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from plexus.pipelines.data.synth import synth_criteo, synth_movielens
from sklearn.metrics import roc_auc_score


def _criteo_frame(path: Path) -> pl.DataFrame:
    names = ["label"] + [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]
    return pl.read_csv(path, separator="\t", has_header=False, new_columns=names, quote_char=None)


def _target_encoding_auc(frame: pl.DataFrame, columns: list[str]) -> float:
    """AUC on the second half of a sum of per-value mean labels learned on the first half."""
    half = frame.height // 2
    fit, test = frame.head(half), frame.tail(frame.height - half)
    prior = fit["label"].mean()
    score = np.zeros(test.height)
    for col in columns:
        means = fit.group_by(col).agg(
            ((pl.col("label").sum() + prior * 10) / (pl.len() + 10)).alias("m")
        )
        joined = test.select(col).join(means, on=col, how="left", maintain_order="left")
        score += joined["m"].fill_null(prior).to_numpy()
    return float(roc_auc_score(test["label"].to_numpy(), score))


def test_criteo_layout_determinism_and_signal(tmp_path: Path) -> None:
    a = synth_criteo(tmp_path / "a.txt", rows=20_000, seed=3)
    b = synth_criteo(tmp_path / "b.txt", rows=20_000, seed=3)
    c = synth_criteo(tmp_path / "c.txt", rows=20_000, seed=4)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    lines = a.read_text().splitlines()
    assert len(lines) == 20_000
    assert all(line.count("\t") == 39 for line in lines)
    frame = _criteo_frame(a)
    assert set(frame["label"].unique().to_list()) == {0, 1}
    assert 0.1 < frame["label"].mean() < 0.45
    assert 0.05 < frame["C3"].null_count() / frame.height < 0.15  # planted missing values
    # Zipf: the most frequent value of a large column covers far more than 1/vocab of the rows.
    assert frame["C3"].value_counts(sort=True)["count"][0] > 20_000 / 1_000
    # Signal columns predict the label; a column without planted signal does not.
    assert _target_encoding_auc(frame, ["C1", "C2", "C5", "C6"]) > 0.65
    assert abs(_target_encoding_auc(frame, ["C9"]) - 0.5) < 0.05


def _bad_lines(lines: list[str]) -> list[str]:
    return [
        line
        for line in lines
        if line.count("\t") != 39
        or line.split("\t")[0] not in ("0", "1")
        or not all(f == "" or f.lstrip("-").isdigit() for f in line.split("\t")[1:14])
    ]


def test_criteo_malformed_lines_are_planted(tmp_path: Path) -> None:
    path = synth_criteo(tmp_path / "bad.txt", rows=5_000, seed=1, malformed=9)
    lines = path.read_text().splitlines()
    assert len(lines) == 5_000
    assert len(_bad_lines(lines)) == 9
    with pytest.raises(ValueError, match="malformed"):
        synth_criteo(tmp_path / "x.txt", rows=3, malformed=4)


def test_criteo_chunked_writes_match_one_chunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import plexus.pipelines.data.synth as synth

    monkeypatch.setattr(synth, "_CHUNK", 700)
    path = synth_criteo(tmp_path / "chunked.txt", rows=2_000, seed=0, malformed=3)
    lines = path.read_text().splitlines()
    assert len(lines) == 2_000
    assert len(_bad_lines(lines)) == 3


def test_movielens_layout_and_signal(tmp_path: Path) -> None:
    folder = synth_movielens(tmp_path / "ml", users=200, items=300, ratings=20_000, seed=2)
    data = pl.read_csv(
        folder / "u.data", separator="\t", has_header=False, new_columns=["u", "i", "r", "t"]
    )
    assert data.height == 20_000
    assert data["r"].is_between(1, 5).all()
    assert data["u"].max() <= 200 and data["i"].max() <= 300
    assert data["t"].is_sorted()
    users = (folder / "u.user").read_text().splitlines()
    items = (folder / "u.item").read_text().splitlines()
    assert len(users) == 200 and all(line.count("|") == 4 for line in users)
    assert len(items) == 300 and all(line.count("|") == 23 for line in items)
    assert all(sum(int(f) for f in line.split("|")[5:]) >= 1 for line in items)
    labelled = data.with_columns(
        (pl.col("r") >= 4).cast(pl.Int8).alias("label"), pl.col("i").alias("item")
    )
    assert 0.2 < labelled["label"].mean() < 0.8
    assert (
        _target_encoding_auc(labelled.sample(fraction=1.0, seed=0, shuffle=True), ["item", "u"])
        > 0.65
    )
    again = synth_movielens(tmp_path / "ml2", users=200, items=300, ratings=20_000, seed=2)
    assert (again / "u.data").read_bytes() == (folder / "u.data").read_bytes()
