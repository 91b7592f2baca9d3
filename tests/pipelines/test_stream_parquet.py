"""The streamed Parquet ingest: a folder or glob of files reads like one file, batches of any
size give the same bytes and the same spec as a fit on the whole table, bad values are
quarantined with file and row, and no task or writer holds more rows than its knob allows."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from plexus.pipelines.ingest import (
    DataConfig,
    DataFormat,
    ParquetSchema,
    SplitConfig,
    ingest,
    stream,
)
from plexus.pipelines.ingest import blocks as io
from plexus.pipelines.ingest.delimited import LINE
from plexus.pipelines.ingest.encode import encode, fit_spec
from plexus.pipelines.ingest.readers import read_parquet
from plexus.platform.errors import DataError

SCHEMA = ParquetSchema(
    label="clicked", numeric=("price", "views"), categorical=("user", "item"),
    multi_categorical=("tags",),
)  # fmt: skip
ALL_TRAIN = SplitConfig(valid=0.0, test=0.0)


def _table(rows: int, seed: int = 0) -> pl.DataFrame:
    """Rows with Zipf-like ids, some missing values and lists of 0..3 tags."""
    rng = np.random.default_rng(seed)
    tags = [[f"t{v}" for v in rng.integers(0, 12, k)] for k in rng.integers(0, 4, rows)]
    return pl.DataFrame({
        "clicked": rng.integers(0, 2, rows).astype(np.int8),
        "user": [f"u{v}" for v in rng.zipf(1.5, rows) % 300],
        "item": [None if v == 0 else str(v) for v in rng.integers(0, 50, rows)],
        "price": rng.exponential(30.0, rows),
        "views": rng.integers(-1, 500, rows),
        "tags": tags,
        "unused": ["x"] * rows,
    })  # fmt: skip


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "manifest.json"
    }


def _rows(result, split: str = "train") -> pl.DataFrame:  # noqa: ANN001
    shards = result.shards(split)
    return pl.concat([pl.read_parquet(p) for p in shards]) if shards else pl.DataFrame()


def test_folder_and_glob_stream_like_one_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    frame = _table(3_000)
    one = tmp_path / "one.parquet"
    frame.write_parquet(one, row_group_size=1_000)
    days = tmp_path / "days"
    days.mkdir()
    for i, (start, n) in enumerate([(0, 1_200), (1_200, 300), (1_500, 1_500)]):
        frame.slice(start, n).write_parquet(days / f"day-{i}.parquet")
    (days / "_SUCCESS").write_bytes(b"")
    monkeypatch.setattr(io, "PARQUET_BATCH_ROWS", 256)
    cfg = dict(format=DataFormat.PARQUET, schema=SCHEMA, split=ALL_TRAIN, rows_per_shard=700)
    whole = ingest(DataConfig(path=str(one), **cfg), output=tmp_path / "one", progress=False)
    assert len(whole.shards("train")) == 5
    for path in (days, days / "day-*.parquet"):
        many = ingest(DataConfig(path=str(path), **cfg), output=tmp_path / "many", progress=False)
        assert many.rows == whole.rows == {"train": 3_000, "valid": 0, "test": 0}
        assert many.spec.features == whole.spec.features
        assert _rows(many).equals(_rows(whole))
        assert [(Path(f["path"]).name, f["lines"]) for f in many.quality["files"]] == [
            ("day-0.parquet", 1_200), ("day-1.parquet", 300), ("day-2.parquet", 1_500),
        ]  # fmt: skip


def test_batches_keep_the_bytes_and_the_whole_table_fit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "t.parquet"
    _table(4_000, seed=1).write_parquet(src, row_group_size=1_500)
    cfg = DataConfig(format=DataFormat.PARQUET, path=str(src), schema=SCHEMA, rows_per_shard=1_000,
                     hash_buckets={"item": 17}, min_count=2)  # fmt: skip
    ingest(cfg, output=tmp_path / "big", progress=False)
    monkeypatch.setattr(io, "PARQUET_BATCH_ROWS", 97)
    small = ingest(cfg, output=tmp_path / "small", progress=False)
    assert _digests(tmp_path / "big") == _digests(tmp_path / "small")
    # The oracle: the spec fit on the whole table with the same seeded split, and its encoding.
    table = read_parquet(src, SCHEMA)
    split = stream.seeded_split(table.frame[LINE].to_numpy(), cfg)
    frame = table.frame.with_columns(pl.Series("__split", split))
    rows = dict(
        zip(("train", "valid", "test"), np.bincount(split, minlength=3).tolist(), strict=True)
    )
    assert small.rows == rows and rows["valid"] > 0
    spec = fit_spec(frame, table.roles, cfg, name="t", source={}, splits=rows,
                    train=pl.col("__split") == 0)  # fmt: skip
    assert small.spec.features == spec.features
    assert small.spec["tags"].max_length == 3
    encoded = encode(frame, spec, keep=("__split",))
    for code, name in enumerate(("train", "valid", "test")):
        expected = encoded.filter(pl.col("__split") == code).drop("__split")
        assert _rows(small, name).equals(expected)


def test_bad_values_are_quarantined_with_file_and_row(tmp_path: Path) -> None:
    folder = tmp_path / "pq"
    folder.mkdir()
    _table(50).write_parquet(folder / "a.parquet")
    b = _table(60, seed=2).with_columns(
        pl.col("price").cast(pl.String), pl.col("clicked").cast(pl.Int64)
    )
    b = b.with_columns(
        pl.when(pl.int_range(pl.len()) == 7).then(pl.lit("n/a")).otherwise("price").alias("price"),
        pl.when(pl.int_range(pl.len()) == 4).then(2).otherwise("clicked").alias("clicked"),
    )
    b.write_parquet(folder / "b.parquet")
    cfg = DataConfig(
        format=DataFormat.PARQUET, path=str(folder), schema=SCHEMA, max_reject_ratio=0.05
    )
    result = ingest(cfg, output=tmp_path / "out", progress=False)
    assert result.rejects == {"bad_float": 1, "bad_label": 1}
    assert sum(result.rows.values()) == 108
    records = [json.loads(x) for x in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    b_file = str(folder / "b.parquet")
    assert [(r["file"], r["line"], r["reason"], r["column"]) for r in records] == [
        (b_file, 5, "bad_label", "clicked"), (b_file, 8, "bad_float", "price"),
    ]  # fmt: skip
    assert json.loads(records[1]["raw"])["price"] == "n/a"
    assert "unused" not in json.loads(records[1]["raw"])  # undeclared columns are never read
    assert [f["rejects"] for f in result.quality["files"]] == [0, 2]
    # The ratio applies per file: b's 2 of 60 rows pass 5%, not 1%, and the error names them.
    strict = DataConfig(format=DataFormat.PARQUET, path=str(folder), schema=SCHEMA)
    with pytest.raises(DataError, match=rf"{b_file}: 2 of 60 lines rejected") as info:
        ingest(strict, output=tmp_path / "strict", progress=False)
    assert f"{b_file}:5 bad_label (clicked)" in str(info.value)
    assert not (tmp_path / "strict").exists()


def test_tasks_and_writers_hold_bounded_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "t.parquet"
    _table(5_000, seed=3).write_parquet(src, row_group_size=5_000)  # one big row group
    monkeypatch.setattr(io, "PARQUET_BATCH_ROWS", 300)
    held = {"block": 0, "blocks": 0, "pending": 0}
    read = stream.read_parquet_blocks

    def spy_read(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        for block in read(*args, **kwargs):
            held["block"] = max(held["block"], block.data.num_rows)
            held["blocks"] += 1
            yield block

    add = io.ShardWriter.add

    def spy_add(self: io.ShardWriter, frame: pl.DataFrame) -> None:
        add(self, frame)
        held["pending"] = max(held["pending"], self.pending_rows)

    monkeypatch.setattr(stream, "read_parquet_blocks", spy_read)
    monkeypatch.setattr(io.ShardWriter, "add", spy_add)
    cfg = DataConfig(format=DataFormat.PARQUET, path=str(src), schema=SCHEMA, rows_per_shard=800)
    result = ingest(cfg, output=tmp_path / "out", progress=False)
    assert sum(result.rows.values()) == 5_000
    # ceil(5000 / 300) blocks, read once: pass 2 reads pass 1's spill, which is gone at the end
    assert held["block"] == 300 and held["blocks"] == 17
    assert not (tmp_path / "out" / ".blocks").exists()
    assert 0 < held["pending"] < 800  # a shard's rows at most, then written out
    first = pq.ParquetFile(result.shards("train")[0]).metadata
    assert (first.num_rows, first.num_row_groups) == (800, 1)  # as pq.write_table writes a shard


def test_time_split_ties_rank_by_row_then_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "pq"
    folder.mkdir()
    frames = []
    for i in range(3):  # few distinct times: boundaries fall inside a time, across files
        part = _table(400, seed=10 + i).with_columns(
            (pl.int_range(pl.len()) % 5).alias("ts"),
            (f"{i}-" + pl.int_range(1, pl.len() + 1).cast(pl.String)).alias("rid"),
        )
        part.write_parquet(folder / f"p{i}.parquet")
        frames.append(
            part.with_columns(pl.int_range(1, pl.len() + 1).alias("row"), pl.lit(i).alias("file"))
        )
    schema = ParquetSchema(label="clicked", categorical=("rid",), time="ts")
    monkeypatch.setattr(io, "PARQUET_BATCH_ROWS", 128)
    cfg = DataConfig(format=DataFormat.PARQUET, path=str(folder), schema=schema,
                     split=SplitConfig(by="time", valid=0.15, test=0.1))  # fmt: skip
    result = ingest(cfg, output=tmp_path / "out", progress=False)
    assert result.rows == {"train": 900, "valid": 180, "test": 120}
    # The whole-table ranking: (time, row within its file, file); the first 900 are train.
    ranked = pl.concat(frames).sort(["ts", "row", "file"])
    vocab = result.spec["rid"].vocabulary
    train = {vocab[i - 1] for i in _rows(result, "train")["rid"].to_list()}
    assert train == set(ranked["rid"].head(900).to_list())
    assert set(_rows(result, "test")["rid"].to_list()) == {0}  # never seen in training


@pytest.mark.slow  # a local Ray start: ~2 min on the shared 2-core box
def test_one_and_two_ray_workers_write_the_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ray_local: None
) -> None:
    src = tmp_path / "t.parquet"
    _table(2_000, seed=4).write_parquet(src)
    monkeypatch.setattr(io, "PARQUET_BATCH_ROWS", 300)  # 7 batches over the workers
    digests = []
    for workers in (0, 1, 2):
        cfg = DataConfig(format=DataFormat.PARQUET, path=str(src), schema=SCHEMA, workers=workers,
                         rows_per_shard=900)  # fmt: skip
        ingest(cfg, output=tmp_path / f"w{workers}", progress=False)
        digests.append(_digests(tmp_path / f"w{workers}"))
    assert digests[0] == digests[1] == digests[2] and len(digests[0]) >= 5


def test_an_unreadable_or_incomplete_file_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "pq"
    folder.mkdir()
    _table(50).write_parquet(folder / "a.parquet")
    cut = folder / "b.parquet"
    _table(50).write_parquet(cut)
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    cfg = DataConfig(format=DataFormat.PARQUET, path=str(folder), schema=SCHEMA)
    with pytest.raises(DataError, match=f"^{cut}: not a readable Parquet file"):
        ingest(cfg, output=tmp_path / "out", progress=False)
    cut.unlink()
    _table(50).drop("views").write_parquet(folder / "c.parquet")
    with pytest.raises(
        DataError, match=f"{folder / 'c.parquet'}: declared column 'views' not found"
    ):
        ingest(cfg, output=tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
