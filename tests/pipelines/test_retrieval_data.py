"""Interaction readers and splits: MovieLens layouts, LightGCN format, train-only vocabularies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from plexus.pipelines.retrieval.data import (
    InteractionFormat,
    RetrievalDataConfig,
    SplitKind,
    read_interactions,
    read_lightgcn,
)
from plexus.platform.errors import ConfigError, DataError

# user item rating timestamp; user 3 has one positive only, item 99 only appears in test.
ROWS = [
    (1, 10, 5, 100), (1, 11, 4, 200), (1, 12, 5, 300), (1, 13, 2, 50),
    (2, 10, 4, 100), (2, 12, 4, 150), (2, 99, 5, 400),
    (3, 11, 5, 100),
]  # fmt: skip


@pytest.mark.parametrize("layout", ["u.data", "ratings.dat", "ratings.csv"])
def test_movielens_layouts_leave_last_out(tmp_path: Path, layout: str) -> None:
    sep = {"u.data": "\t", "ratings.dat": "::", "ratings.csv": ","}[layout]
    lines = [sep.join(map(str, row)) for row in ROWS]
    if layout == "ratings.csv":
        lines.insert(0, "userId,movieId,rating,timestamp")
    (tmp_path / layout).write_text("\n".join(lines) + "\n")
    data = read_interactions(RetrievalDataConfig(path=str(tmp_path), min_rating=4.0))
    assert data.user_ids.tolist() == [-1, 1, 2, 3]
    assert data.item_ids.tolist() == [-1, 10, 11, 12]  # 13 below min_rating, 99 test-only
    ext = lambda ids: data.item_ids[ids].tolist()  # noqa: E731
    assert ext(data.train_of(1)) == [10, 11] and ext(data.test_of(1)) == [12]
    assert ext(data.train_of(2)) == [10, 12] and ext(data.test_of(2)) == []  # 99 unseen: dropped
    assert ext(data.train_of(3)) == [11] and ext(data.test_of(3)) == []
    assert data.histories(3)[1].tolist() == [1, 2, 0]


def test_all_ratings_and_temporal_split(tmp_path: Path) -> None:
    (tmp_path / "u.data").write_text("\n".join("\t".join(map(str, r)) for r in ROWS))
    config = RetrievalDataConfig(
        path=str(tmp_path / "u.data"), min_rating=None, split=SplitKind.TEMPORAL, test_fraction=0.25
    )
    data = read_interactions(config)
    assert 13 in data.item_ids.tolist()
    assert data.train_items.size + data.test_items.size <= len(ROWS)
    assert data.item_ids[data.test_of(1)].tolist() == [12]  # the latest interactions


def test_lightgcn_format(tmp_path: Path) -> None:
    (tmp_path / "train.txt").write_text("0 0 1 2\n1 2 3\n")
    (tmp_path / "test.txt").write_text("0 3\n1 0 7\n")
    data = read_interactions(
        RetrievalDataConfig(format=InteractionFormat.LIGHTGCN, path=str(tmp_path))
    )
    assert data.num_users == 2 and data.num_items == 4
    assert data.item_ids[data.test_of(2)].tolist() == [0]  # item 7 never trained: dropped
    assert np.diff(data.train_indptr).tolist() == [0, 3, 2]


def test_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data.path"):
        RetrievalDataConfig(path="")
    with pytest.raises(DataError, match="train.txt"):
        read_lightgcn(tmp_path)
    (tmp_path / "train.txt").write_text("0 a b\n")
    (tmp_path / "test.txt").write_text("")
    with pytest.raises(DataError, match="train.txt:1"):
        read_lightgcn(tmp_path)
