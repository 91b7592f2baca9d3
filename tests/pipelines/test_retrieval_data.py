"""Interaction logs through the ingest: MovieLens layouts, LightGCN format, Parquet logs, the
retrieval splits and the validation hold-out as shards, and the CSR lists built from them."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from plexus.pipelines.ingest import DataConfig
from plexus.pipelines.retrieval.data import Interactions, ingest_interactions, load_interactions
from plexus.platform.config import from_dict
from plexus.platform.errors import ConfigError, DataError
from plexus.platform.feature_spec import FeatureSpec

# user item rating timestamp; user 3 has one positive only, item 99 only appears in test.
ROWS = [
    (1, 10, 5, 100), (1, 11, 4, 200), (1, 12, 5, 300), (1, 13, 2, 50),
    (2, 10, 4, 100), (2, 12, 4, 150), (2, 99, 5, 400),
    (3, 11, 5, 100),
]  # fmt: skip
DATA = Path(os.environ.get("PLEXUS_DATA", Path(__file__).resolve().parents[3] / "shared/data"))


def _ingest(tmp_path: Path, **data) -> Interactions:
    config = from_dict(DataConfig, data)
    return ingest_interactions(config, tmp_path / "shards", progress=False)[1]


def _lists(data: Interactions, split: str = "train") -> dict[int, list[int]]:
    """{external user: external items} of a split, users without items left out."""
    indptr, items = {
        "train": (data.train_indptr, data.train_items),
        "test": (data.test_indptr, data.test_items),
        "valid": (data.valid_indptr, data.valid_items),
    }[split]
    return {
        int(data.user_ids[u]): data.item_ids[items[indptr[u] : indptr[u + 1]]].tolist()
        for u in range(1, data.num_users + 1)
        if indptr[u + 1] > indptr[u]
    }


@pytest.mark.parametrize("layout", ["u.data", "ratings.dat", "ratings.csv"])
def test_movielens_layouts_leave_last_out(tmp_path: Path, layout: str) -> None:
    sep = {"u.data": "\t", "ratings.dat": "::", "ratings.csv": ","}[layout]
    lines = [sep.join(map(str, row)) for row in ROWS]
    if layout == "ratings.csv":
        lines.insert(0, "userId,movieId,rating,timestamp")
    (tmp_path / layout).write_text("\n".join(lines) + "\n")
    data = _ingest(
        tmp_path, format="movielens", path=str(tmp_path), interactions={"min_rating": 4.0}
    )
    assert sorted(data.user_ids[1:].tolist()) == [1, 2, 3]
    assert sorted(data.item_ids[1:].tolist()) == [10, 11, 12]  # 13 below min_rating, 99 test-only
    assert _lists(data) == {1: [10, 11], 2: [10, 12], 3: [11]}  # time order
    assert _lists(data, "test") == {1: [12]}  # 2's latest (99) was never trained: dropped
    user_1 = int(np.nonzero(data.user_ids == 1)[0][0])
    assert data.item_ids[data.histories(3)[user_1]].tolist() == [10, 11, -1]  # 0-padded
    assert data.valid_items.size == 2  # one held-out training item of users 1 and 2
    assert _lists(data, "valid") == {1: [11], 2: [12]}  # the latest, as the log has time


def test_all_ratings_and_temporal_split(tmp_path: Path) -> None:
    (tmp_path / "u.data").write_text("\n".join("\t".join(map(str, r)) for r in ROWS))
    data = _ingest(
        tmp_path,
        format="movielens",
        path=str(tmp_path / "u.data"),
        interactions={"min_rating": None, "split": "temporal", "test_fraction": 0.25},
    )
    assert 13 in data.item_ids.tolist()
    assert data.train_items.size + data.test_items.size <= len(ROWS)
    assert _lists(data, "test")[1] == [12]  # the latest interactions


def test_lightgcn_format_and_rejects_with_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "train.txt").write_text("0 0 1 2\n1 2 3\n")
    (tmp_path / "test.txt").write_text("0 3\n1 0 7\n")
    data = _ingest(tmp_path, format="lightgcn", path=str(tmp_path))
    assert data.num_users == 2 and data.num_items == 4
    assert _lists(data) == {0: [0, 1, 2], 1: [2, 3]}  # file order
    assert _lists(data, "test") == {0: [3], 1: [0]}  # item 7 never trained: dropped
    # A bad line is set aside with its file and line; past max_reject_ratio the job fails.
    (tmp_path / "train.txt").write_text("".join(f"{u} {u % 5} {u % 7}\n" for u in range(300)))
    with (tmp_path / "train.txt").open("a") as fh:
        fh.write("300 4 x\n")
    config = {"format": "lightgcn", "path": str(tmp_path), "max_reject_ratio": 0.01}
    data = _ingest(tmp_path, **config)
    rejects = [json.loads(line) for line in (tmp_path / "shards/rejects.jsonl").open()]
    assert [(Path(r["file"]).name, r["line"], r["reason"]) for r in rejects] == [
        ("train.txt", 301, "bad_id")
    ]
    assert 300 not in data.user_ids.tolist()
    (tmp_path / "test.txt").write_text("a b\n" * 10)
    with pytest.raises(DataError, match="test.txt:1 bad_id"):
        _ingest(tmp_path, **config)


def test_outputs_are_idempotent_and_the_spec_has_user_and_item_groups(tmp_path: Path) -> None:
    (tmp_path / "u.data").write_text("\n".join("\t".join(map(str, r)) for r in ROWS) + "\n")
    (tmp_path / "u.item").write_text(
        "".join(f"{i}|Film {i} (1995)|01-Jan-1995||url|0|{i % 2}|1" + "|0" * 16 + "\n"
                for i in (10, 11, 12, 13, 99))
    )  # fmt: skip
    config = from_dict(
        DataConfig, {"format": "movielens", "path": str(tmp_path), "interactions": {}}
    )
    first, _ = ingest_interactions(config, tmp_path / "out", progress=False)
    files = sorted(p for p in (tmp_path / "out").rglob("*") if p.is_file())
    before = {p: p.read_bytes() for p in files}
    again, _ = ingest_interactions(config, tmp_path / "out", progress=False)
    assert again.skipped and {p: p.read_bytes() for p in files} == before
    spec = FeatureSpec.load(tmp_path / "out")
    assert spec.groups == {"user": ("user_id",), "item": ("item_id", "year", "genres")}
    assert [f.name for f in spec.group("item")] == ["item_id", "year", "genres"]
    assert spec["item_id"].vocabulary[0] in ("10", "11", "12")  # the spec's frequency order
    genres = pl.read_parquet(first.shards("train")).select("item_id", "genres")
    assert genres["genres"].list.len().min() >= 1  # side features encoded with the rows


def test_parquet_log_with_declared_columns(tmp_path: Path) -> None:
    frame = pl.DataFrame(
        {
            "who": [r[0] for r in ROWS],
            "what": [r[1] for r in ROWS],
            "stars": [float(r[2]) for r in ROWS],
            "ts": [r[3] for r in ROWS],
            "country": ["fr", "fr", "fr", "fr", "de", "de", "de", "us"],
        }
    )
    frame.write_parquet(tmp_path / "log.parquet")
    schema = {"label": "stars", "categorical": ["who", "what", "country"], "time": "ts"}
    data = _ingest(
        tmp_path,
        format="parquet",
        path=str(tmp_path / "log.parquet"),
        schema=schema,
        interactions={"user": "who", "item": "what", "user_features": ["country"]},
    )
    assert _lists(data) == {1: [10, 11], 2: [10, 12], 3: [11]}
    assert _lists(data, "test") == {1: [12]}
    assert data.spec.groups == {"user": ("user_id", "country"), "item": ("item_id",)}
    with pytest.raises(ConfigError, match="data.interactions.item='where'"):
        from_dict(
            DataConfig,
            {"format": "parquet", "path": "x", "schema": schema,
             "interactions": {"user": "who", "item": "where"}},
        )  # fmt: skip


def test_min_count_drops_rare_items_from_every_split(tmp_path: Path) -> None:
    (tmp_path / "train.txt").write_text("0 1 2 3\n1 1 2\n2 1 5\n")
    (tmp_path / "test.txt").write_text("0 5\n1 3\n")
    data = _ingest(tmp_path, format="lightgcn", path=str(tmp_path), min_count=2)
    assert sorted(data.item_ids[1:].tolist()) == [1, 2]
    assert _lists(data) == {0: [1, 2], 1: [1, 2], 2: [1]}
    assert data.test_items.size == 0


def test_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="split: given"):
        from_dict(DataConfig, {"format": "lightgcn", "path": "x",
                               "interactions": {"split": "leave_last"}})  # fmt: skip
    with pytest.raises(ConfigError, match="CTR format"):
        from_dict(DataConfig, {"format": "criteo", "path": "x", "interactions": {}})
    with pytest.raises(ConfigError, match="data.interactions.test_fraction"):
        from_dict(DataConfig, {"format": "movielens", "path": "x",
                               "interactions": {"test_fraction": 1.5}})  # fmt: skip
    with pytest.raises(DataError, match="train.txt"):
        _ingest(tmp_path, format="lightgcn", path=str(tmp_path))
    (tmp_path / "train.txt").write_text("0 1 2\n1 3 4\n")
    (tmp_path / "test.txt").write_text("")
    with pytest.raises(DataError, match="not an interaction log"):
        load_interactions(_write_ctr_spec(tmp_path / "ctr"))


def _write_ctr_spec(folder: Path) -> Path:
    folder.mkdir()
    FeatureSpec(name="ctr", label="label", features=()).save(folder)
    return folder


@pytest.mark.parametrize("latest", [True, False])
def test_validation_task_holds_out_one_training_item_per_user(tmp_path: Path, latest) -> None:
    (tmp_path / "train.txt").write_text("0 1 2 3 4\n1 5\n2 6 7\n3 9 8 7 6 5\n")
    (tmp_path / "test.txt").write_text("0 9\n")
    pick = "latest" if latest else "random"
    data = _ingest(
        tmp_path,
        format="lightgcn",
        path=str(tmp_path),
        interactions={"split": "given", "validation_pick": pick, "seed": 3},
    )
    valid = data.validation()
    for user in range(1, data.num_users + 1):
        before, after, held = data.train_of(user), valid.train_of(user), valid.test_of(user)
        if before.size < 2:  # a lone training item stays in training
            assert after.tolist() == before.tolist() and held.size == 0
            continue
        assert held.size == 1 and held[0] in before and held[0] not in after
        assert sorted([*after, *held]) == sorted(before)
        if latest:
            assert held[0] == before[-1]
    assert _lists(data, "test") == {0: [9]}  # user 0's real test item...
    assert 9 not in _lists(valid, "test").get(0, [])  # ...is never a validation item
    assert valid.train_indptr.shape == valid.test_indptr.shape == data.train_indptr.shape


def test_validation_samples_users_and_can_be_switched_off(tmp_path: Path) -> None:
    (tmp_path / "train.txt").write_text(
        "".join(f"{u} {u} {u + 100} {u + 200}\n" for u in range(50))
    )
    (tmp_path / "test.txt").write_text("0 9\n")
    config = {"format": "lightgcn", "path": str(tmp_path)}
    data = _ingest(tmp_path, **config, interactions={"split": "given", "validation_users": 10})
    valid = data.validation()
    assert (np.diff(valid.test_indptr) > 0).sum() == 10
    assert valid.train_items.size == data.train_items.size - 10
    none = _ingest(tmp_path, **config, interactions={"split": "given", "validation_users": 0})
    with pytest.raises(DataError, match="validation_users"):
        none.validation()


def _digest(data: Interactions) -> str:
    """Users by external id, each with its training list in order and its sorted test items."""
    h = hashlib.sha256()
    for u in sorted(range(1, data.num_users + 1), key=lambda u: data.user_ids[u]):
        train = data.item_ids[data.train_of(u)].tolist()
        test = sorted(data.item_ids[data.test_of(u)].tolist())
        h.update(json.dumps([int(data.user_ids[u]), train, test]).encode())
    return h.hexdigest()[:16]


# Digests of the splits (and of the validation tasks, seed 0, 5,000 users) that the retrieval
# readers before the ingest produced on the shared datasets (`RetrievalDataConfig` +
# `read_interactions` + `validation_split` at commit 24fb8ca): the ingest must give the same.
BEFORE_THE_INGEST = {
    "movielens_100k leave_last": ("4dfecc1ed40db4e1", "5a96158cb8dde668", 942, 1430),
    "movielens_100k temporal": ("e64c10bebca3aa83", "20dac203aca23063", 751, 1616),
    "gowalla": ("97edd43619761f38", "3d35fe32d9f23b33", 29858, 40981),
    "yelp2018_half": ("f14558bafa199d8b", "f23c50e5fbeab2be", 15834, 37892),
    "movielens_1m_implicit": ("c45489ebfef59980", "838bada6aa1a125e", 6038, 3493),
}
_CASES = {
    "movielens_100k leave_last": {"format": "movielens", "path": "movielens_100k/u.data",
                                  "interactions": {"min_rating": 4.0}},
    "movielens_100k temporal": {"format": "movielens", "path": "movielens_100k/u.data",
                                "interactions": {"min_rating": None, "split": "temporal"}},
    "gowalla": {"format": "lightgcn", "path": "gowalla"},
    "yelp2018_half": {"format": "lightgcn", "path": "yelp2018_half"},
    "movielens_1m_implicit": {"format": "lightgcn", "path": "movielens_1m_implicit"},
}  # fmt: skip


@pytest.mark.parametrize("case", list(BEFORE_THE_INGEST))
def test_the_ingest_gives_the_splits_of_the_readers_it_replaced(tmp_path: Path, case) -> None:
    data_config = dict(_CASES[case])
    if not (DATA / data_config["path"]).exists():
        pytest.skip(f"{DATA / data_config['path']} not available")
    data_config["path"] = str(DATA / data_config["path"])
    data = _ingest(tmp_path, **data_config)
    split, validation, users, items = BEFORE_THE_INGEST[case]
    assert (data.num_users, data.num_items) == (users, items)
    assert _digest(data) == split
    assert _digest(data.validation()) == validation


def test_a_sampled_history_is_an_unbiased_subset_in_the_lists_order() -> None:
    """`history_pick=sample`: users with more than `length` items get a seeded random subset
    (in their list's order, the same each call); shorter lists are whole, as with `last`."""
    from plexus.models.retrieval import HistoryPick

    counts = np.array([0, 3, 200, 200])  # row 0 (padding) empty
    indptr = np.concatenate([[0], np.cumsum(counts)])
    items = np.concatenate([[7, 8, 9], np.arange(1, 201), np.arange(1, 201)])
    data = Interactions(
        name="h", user_ids=np.arange(-1, 3), item_ids=np.arange(-1, 201),
        train_indptr=indptr, train_items=items,
        test_indptr=np.zeros(5, np.int64), test_items=np.zeros(0, np.int64),
    )  # fmt: skip
    last, sample = data.histories(10), data.histories(10, HistoryPick.SAMPLE)
    assert last[1].tolist() == sample[1].tolist() == [7, 8, 9] + [0] * 7
    assert last[2].tolist() == list(range(191, 201))  # the list's tail: its newest ids
    assert np.array_equal(sample, data.histories(10, "sample"))  # seeded
    for user in (2, 3):
        assert np.all(np.diff(sample[user]) > 0)  # a subset, in order
    assert not np.array_equal(sample[2], sample[3])  # drawn per user
    # Unbiased: over the 200-item lists, the sample's mean is near the list's (100.5); the
    # tail's is 195.5.
    many = data.histories(100, HistoryPick.SAMPLE)[2:]
    assert abs(many.mean() - 100.5) < 12
