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
    validation_split,
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


def _lightgcn(tmp_path: Path, lines: list[str]):  # noqa: ANN202
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "test.txt").write_text("0 9\n")
    return read_lightgcn(tmp_path)


@pytest.mark.parametrize("latest", [True, False])
def test_validation_split_holds_out_one_training_item_per_user(tmp_path: Path, latest) -> None:
    data = _lightgcn(tmp_path, ["0 1 2 3 4", "1 5", "2 6 7", "3 9 8 7 6 5"])
    valid = validation_split(data, latest=latest, seed=3)
    for user in range(1, data.num_users + 1):
        before, after, held = data.train_of(user), valid.train_of(user), valid.test_of(user)
        if before.size < 2:  # a lone training item stays in training
            assert after.tolist() == before.tolist() and held.size == 0
            continue
        assert held.size == 1 and held[0] in before and held[0] not in after
        assert sorted([*after, *held]) == sorted(before)
        if latest:
            assert held[0] == before[-1]
    assert data.item_ids[data.test_of(1)].tolist() == [9]  # user 0's real test item...
    assert 9 not in data.item_ids[valid.test_of(1)]  # ...is never a validation item
    assert valid.train_indptr.shape == valid.test_indptr.shape == data.train_indptr.shape


def test_validation_split_samples_users_and_needs_two_items(tmp_path: Path) -> None:
    data = _lightgcn(tmp_path, [f"{u} {u} {u + 100} {u + 200}" for u in range(50)])
    valid = validation_split(data, latest=False, seed=0, max_users=10)
    assert (np.diff(valid.test_indptr) > 0).sum() == 10
    assert valid.train_items.size == data.train_items.size - 10
    with pytest.raises(DataError, match="two training items"):
        validation_split(_lightgcn(tmp_path, ["0 1", "1 2"]), latest=True)
