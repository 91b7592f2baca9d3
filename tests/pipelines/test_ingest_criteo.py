"""The ingest job on Criteo-layout files: rejects, determinism, reuse, vocabularies, errors."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from plexus.pipelines.data.synth import synth_criteo
from plexus.pipelines.ingest import DataConfig, DataFormat, SplitConfig, ingest
from plexus.platform.config import from_dict
from plexus.platform.errors import ConfigError, DataError
from plexus.platform.feature_spec import Encoding, FeatureSpec
from plexus.platform.hashing import bucketize_ids, feature_seed, hash_strings


def _line(
    label: object = 0, ints: list[object] | None = None, cats: list[str] | None = None
) -> str:
    ints = ints if ints is not None else [1] * 13
    cats = cats if cats is not None else ["a"] * 26
    return "\t".join(str(v) for v in [label, *ints, *cats])


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def _read(result, split: str) -> pl.DataFrame:  # noqa: ANN001
    return pl.concat([pl.read_parquet(p) for p in result.shards(split)])


def test_rejects_are_counted_with_lines_and_skipped(tmp_path: Path) -> None:
    good = [_line(i % 2, cats=[f"v{i % 3}"] * 26) for i in range(40)]
    lines = list(good)
    lines[4] = _line(2)  # label not 0/1 -> line 5
    lines[9] = _line(0, ints=["x1"] + [1] * 12)  # non-integer I1 -> line 10
    lines[19] = "\t".join(_line().split("\t")[:30])  # wrong field count -> line 20
    lines[29] = _line("", ints=[1] * 13)  # empty label -> line 30
    src = _write(tmp_path / "train.txt", lines)
    cfg = DataConfig(format=DataFormat.CRITEO, path=str(src), max_reject_ratio=0.2)
    result = ingest(cfg, output=tmp_path / "out", progress=False)
    assert result.rejects == {
        "bad_int": 1,
        "bad_label": 1,
        "missing_value": 1,
        "wrong_field_count": 1,
    }
    assert sum(result.rows.values()) == 36
    records = [json.loads(x) for x in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert [(r["line"], r["reason"], r["column"]) for r in records] == [
        (5, "bad_label", "label"),
        (10, "bad_int", "I1"),
        (20, "wrong_field_count", None),
        (30, "missing_value", "label"),
    ]
    assert all(r["file"] == str(src) for r in records)
    assert records[1]["raw"] == lines[9]


def test_reject_ratio_failure_names_file_and_lines(tmp_path: Path) -> None:
    src = synth_criteo(tmp_path / "bad.txt", rows=500, seed=0, malformed=20)
    cfg = DataConfig(format=DataFormat.CRITEO, path=str(src), max_reject_ratio=0.01)
    with pytest.raises(DataError, match=r"20 of 500 lines rejected") as info:
        ingest(cfg, output=tmp_path / "out", progress=False)
    message = str(info.value)
    assert f"{src}:" in message and "max_reject_ratio" in message
    assert not (tmp_path / "out").exists()
    # Under the ratio the same file ingests, and every planted line is accounted for.
    ok = ingest(DataConfig(format=DataFormat.CRITEO, path=str(src), max_reject_ratio=0.05),
                output=tmp_path / "out", progress=False)  # fmt: skip
    assert sum(ok.rejects.values()) == 20 and sum(ok.rows.values()) == 480


def test_rerun_is_byte_identical_and_skipped(tmp_path: Path) -> None:
    src = synth_criteo(tmp_path / "train.txt", rows=3_000, seed=5, malformed=3)
    cfg = DataConfig(format=DataFormat.CRITEO, path=str(src), min_count=2, rows_per_shard=1_000)
    first = ingest(cfg, output=tmp_path / "a", progress=False)
    assert not first.skipped and len(first.shards("train")) >= 2
    files = sorted(
        p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file()
    )
    snapshot = {p: (tmp_path / "a" / p).read_bytes() for p in files}
    second = ingest(cfg, output=tmp_path / "b", progress=False)  # a fresh run elsewhere
    for p in files:
        assert (tmp_path / "b" / p).read_bytes() == snapshot[p], p
    again = ingest(cfg, output=tmp_path / "a", progress=False)
    assert again.skipped and again.rows == first.rows and again.rejects == first.rejects
    assert again.spec == first.spec
    assert {p: (tmp_path / "a" / p).read_bytes() for p in files} == snapshot
    # Touched but unchanged input: the content fingerprint still matches.
    os.utime(src, ns=(src.stat().st_atime_ns, src.stat().st_mtime_ns + 10**9))
    assert ingest(cfg, output=tmp_path / "a", progress=False).skipped
    # A changed config or input re-runs the job.
    changed = ingest(
        DataConfig(format=DataFormat.CRITEO, path=str(src), min_count=3),
        output=tmp_path / "a",
        progress=False,
    )
    assert not changed.skipped
    assert second.spec.fingerprint == first.spec.fingerprint
    src.write_text(src.read_text().replace("\n1\t", "\n0\t", 1))
    assert not ingest(cfg, output=tmp_path / "b", progress=False).skipped


def test_shards_schema_and_id_conventions(tmp_path: Path) -> None:
    lines = [
        _line(1, ints=[0, -1, 2, 3, 100, "", 1, 1, 1, 1, 1, 1, 1], cats=["a"] * 26),
        _line(0, ints=[5, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1], cats=["a"] * 25 + [""]),
        _line(1, ints=[1] * 13, cats=["b"] * 26),
    ]
    src = _write(tmp_path / "t.txt", lines)
    valid = _write(tmp_path / "v.txt", [_line(0, ints=[10**6] + [1] * 12, cats=["zzz"] * 26)])
    cfg = DataConfig(format=DataFormat.CRITEO, path=str(src), valid_path=str(valid))
    result = ingest(cfg, output=tmp_path / "out", progress=False)
    assert result.rows == {"train": 3, "valid": 1, "test": 0}
    assert result.shards("test") == []
    schema = pq.read_schema(result.shards("train")[0])
    assert schema.names == ["label"] + [f.name for f in result.spec.features]
    assert schema.names[1:14] == [f"I{i}" for i in range(1, 14)]
    assert schema.field("label").type == pa.float32() and schema.field("C1").type == pa.int64()
    assert schema.metadata[b"plexus.feature_spec"].decode() == result.spec.fingerprint
    train = _read(result, "train")
    assert train["label"].to_list() == [1.0, 0.0, 1.0]
    # C1: "a" twice, "b" once -> ids 1, 2 by frequency; C26 missing on row 2 -> 0.
    assert result.spec["C1"].vocabulary == ("a", "b") and result.spec["C1"].cardinality == 3
    assert train["C1"].to_list() == [1, 1, 2]
    assert train["C26"].to_list() == [1, 0, 2]
    # I1 = 0, 5, 1: floor(log(5)^2) = 2 -> id 3; 0 -> id 1; 1 -> id 2. I6 missing -> 0.
    assert train["I1"].to_list() == [1, 3, 2]
    assert train["I2"].to_list()[0] == 1  # -1 clipped at 0
    assert train["I5"].to_list()[0] == 1 + math.floor(math.log(100) ** 2)
    assert train["I6"].to_list()[0] == 0
    # Valid: unseen value -> OOV 0; a huge I1 is clipped into the last bucket.
    valid_rows = _read(result, "valid")
    assert valid_rows["C1"].to_list() == [0]
    assert valid_rows["I1"].to_list() == [result.spec["I1"].cardinality - 1]
    assert FeatureSpec.load(tmp_path / "out") == result.spec


def test_min_count_oov_hash_and_normalize(tmp_path: Path) -> None:
    cats = [["x"] * 26, ["x"] * 26, ["x"] * 26, ["y"] * 26, ["y"] * 26, ["z"] * 26]
    lines = [_line(i % 2, ints=[i] * 13, cats=c) for i, c in enumerate(cats)]
    src = _write(tmp_path / "t.txt", lines)
    cfg = DataConfig(
        format=DataFormat.CRITEO, path=str(src), valid_path=str(src), min_count=2,
        hash_buckets={"C2": 7}, numeric="normalize",
    )  # fmt: skip
    result = ingest(cfg, output=tmp_path / "out", progress=False)
    spec = result.spec
    assert spec["C1"].vocabulary == ("x", "y") and spec["C1"].min_count == 2
    train = _read(result, "train")
    assert train["C1"].to_list() == [1, 1, 1, 2, 2, 0]  # "z" seen once -> OOV
    assert spec["C2"].encoding is Encoding.HASH and spec["C2"].cardinality == 7
    expected = bucketize_ids(hash_strings([c[1] for c in cats]), feature_seed("C2"), 7).tolist()
    assert train["C2"].to_list() == expected
    assert spec["I1"].encoding is Encoding.NORMALIZE and not spec["I1"].is_sparse
    assert train["I1"].dtype == pl.Float32
    assert train["I1"].mean() == pytest.approx(0.0, abs=1e-6)
    assert spec["I1"].mean == pytest.approx(2.5)


def test_random_split_is_seeded(tmp_path: Path) -> None:
    src = synth_criteo(tmp_path / "t.txt", rows=2_000, seed=0)
    cfg = DataConfig(
        format=DataFormat.CRITEO, path=str(src), split=SplitConfig(valid=0.2, test=0.1, seed=1)
    )
    a = ingest(cfg, output=tmp_path / "a", progress=False)
    assert abs(a.rows["valid"] - 400) < 80 and abs(a.rows["test"] - 200) < 60
    assert sum(a.rows.values()) == 2_000
    other = DataConfig(
        format=DataFormat.CRITEO, path=str(src), split=SplitConfig(valid=0.2, test=0.1, seed=2)
    )
    b = ingest(other, output=tmp_path / "b", progress=False)
    assert not _read(a, "test").equals(_read(b, "test"))
    with pytest.raises(ConfigError, match="data.split.by"):
        ingest(DataConfig(format=DataFormat.CRITEO, path=str(src), split=SplitConfig(by="time")),
               output=tmp_path / "c", progress=False)  # fmt: skip


def test_slow_path_encodes_like_fast_path(tmp_path: Path) -> None:
    src = synth_criteo(tmp_path / "clean.txt", rows=1_000, seed=9)
    lines = src.read_text().splitlines()
    dirty = _write(tmp_path / "dirty.txt", [*lines, "not a criteo line"])
    kw = dict(format=DataFormat.CRITEO, valid_path=str(src))
    clean = ingest(DataConfig(path=str(src), **kw), output=tmp_path / "c", progress=False)
    slow = ingest(DataConfig(path=str(dirty), **kw), output=tmp_path / "d", progress=False)
    assert slow.rejects == {"wrong_field_count": 1} and clean.rejects == {}
    assert [f for f in slow.spec.features] == [f for f in clean.spec.features]
    assert _read(slow, "train").equals(_read(clean, "train"))


def test_config_and_file_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown config key 'min_cnt'"):
        from_dict(DataConfig, {"format": "criteo", "path": "x", "min_cnt": 3})
    with pytest.raises(ConfigError, match="split.valid"):
        from_dict(DataConfig, {"format": "criteo", "path": "x", "split": {"valid": 1.5}})
    with pytest.raises(ConfigError, match="data.format"):
        DataConfig(format="csv", path="x")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="data.schema"):
        DataConfig(format=DataFormat.PARQUET, path="x")
    missing = tmp_path / "nope.txt"
    with pytest.raises(DataError, match=f"data.path: input file not found: {missing}"):
        ingest(
            DataConfig(format=DataFormat.CRITEO, path=str(missing)),
            output=tmp_path / "o",
            progress=False,
        )
    src = _write(tmp_path / "t.txt", [_line()] * 30)
    with pytest.raises(DataError, match="data.valid_path"):
        ingest(DataConfig(format=DataFormat.CRITEO, path=str(src), valid_path=str(missing)),
               output=tmp_path / "o", progress=False)  # fmt: skip
    with pytest.raises(ConfigError, match="data.hash_buckets.I1"):
        ingest(DataConfig(format=DataFormat.CRITEO, path=str(src), hash_buckets={"I1": 5}),
               output=tmp_path / "o", progress=False)  # fmt: skip
    empty = _write(tmp_path / "empty.txt", [])
    with pytest.raises(DataError, match="no usable training rows"):
        ingest(
            DataConfig(format=DataFormat.CRITEO, path=str(empty)),
            output=tmp_path / "o",
            progress=False,
        )
    with pytest.raises(ConfigError, match="data.output"):
        ingest(DataConfig(format=DataFormat.CRITEO, path=str(src)), progress=False)


def test_crash_leaves_no_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import plexus.pipelines.ingest.job as job

    src = synth_criteo(tmp_path / "t.txt", rows=300, seed=0)
    cfg = DataConfig(format=DataFormat.CRITEO, path=str(src))
    good = ingest(cfg, output=tmp_path / "out", progress=False)
    before = (tmp_path / "out" / "manifest.json").read_bytes()

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(job.pq.ParquetWriter, "write_table", boom)  # shards are streamed
    changed = DataConfig(format=DataFormat.CRITEO, path=str(src), min_count=2)
    with pytest.raises(OSError, match="disk full"):
        ingest(changed, output=tmp_path / "out", progress=False)
    with pytest.raises(OSError, match="disk full"):
        ingest(cfg, output=tmp_path / "fresh", progress=False)
    # The earlier complete dataset is untouched; no partial one and no temp folder remain.
    assert (tmp_path / "out" / "manifest.json").read_bytes() == before
    assert not (tmp_path / "fresh").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "t.txt"]
    assert good.shards("train")
