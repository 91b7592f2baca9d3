"""The streamed text ingest: blocks and workers give the same bytes; folders, globs, gzip and
zstd inputs; invalid UTF-8 and reject ratios counted per file and per split."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest
from plexus.pipelines.data.synth import synth_criteo
from plexus.pipelines.ingest import DataConfig, DataFormat, SplitConfig, ingest
from plexus.pipelines.ingest import blocks as io
from plexus.pipelines.ingest.readers import AVAZU_COLUMNS
from plexus.platform.errors import DataError

ALL_TRAIN = SplitConfig(valid=0.0, test=0.0)


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _rows(result, split: str = "train") -> pl.DataFrame:  # noqa: ANN001
    return pl.concat([pl.read_parquet(p) for p in result.shards(split)])


def _zstd(data: bytes, path: Path) -> Path:
    with pa.CompressedOutputStream(str(path), "zstd") as out:
        out.write(data)
    return path


def test_block_size_does_not_change_the_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = synth_criteo(tmp_path / "t.txt", rows=4_000, seed=3, malformed=6)
    cfg = DataConfig(format=DataFormat.CRITEO, path=str(src), rows_per_shard=1_500,
                     max_reject_ratio=0.01, min_count=2)  # fmt: skip
    whole = ingest(cfg, output=tmp_path / "whole", progress=False)
    monkeypatch.setattr(io, "BLOCK_BYTES", 40_000)  # ~25 blocks
    monkeypatch.setattr(io, "ROW_GROUP", 700)
    blocks = ingest(cfg, output=tmp_path / "blocks", progress=False)
    ingest(cfg, output=tmp_path / "again", progress=False)
    assert len(whole.shards("train")) == 3 and whole.rejects == blocks.rejects
    assert sum(whole.rejects.values()) == 6 and sum(whole.rows.values()) == 3_994
    assert blocks.spec == whole.spec
    assert _digests(tmp_path / "blocks") == _digests(tmp_path / "again")
    # Row groups differ with ROW_GROUP, the rows do not.
    for split in ("train", "valid", "test"):
        assert _rows(blocks, split).equals(_rows(whole, split))


def test_one_and_two_ray_workers_write_the_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ray_local: None
) -> None:
    src = synth_criteo(tmp_path / "t.txt", rows=3_000, seed=1, malformed=5)
    monkeypatch.setattr(io, "BLOCK_BYTES", 60_000)  # ~12 blocks over the workers
    digests = []
    for workers in (0, 1, 2):
        cfg = DataConfig(format=DataFormat.CRITEO, path=str(src), workers=workers,
                         max_reject_ratio=0.01, rows_per_shard=1_000)  # fmt: skip
        result = ingest(cfg, output=tmp_path / f"w{workers}", progress=False)
        assert sum(result.rejects.values()) == 5 and not result.skipped
        digests.append(_digests(tmp_path / f"w{workers}"))
    assert digests[0] == digests[1] == digests[2]
    assert len(digests[0]) >= 7  # spec, manifest, rejects and several shards
    # A split by time counts after pass 1, from the spill the driver wrote for the Ray tasks.
    hours = [14102100 + (i * 5) % 24 for i in range(600)]
    timed = tmp_path / "timed.csv"
    timed.write_text(
        ",".join(AVAZU_COLUMNS) + "\n" + "\n".join(_avazu(i, h) for i, h in enumerate(hours)) + "\n"
    )
    by_time = []
    for workers in (0, 2):
        cfg = DataConfig(format=DataFormat.AVAZU, path=str(timed), workers=workers,
                         split=SplitConfig(by="time", valid=0.15, test=0.1))  # fmt: skip
        ingest(cfg, output=tmp_path / f"t{workers}", progress=False)
        by_time.append(_digests(tmp_path / f"t{workers}"))
    assert by_time[0] == by_time[1]
    # A bad input found on a Ray worker is the same DataError, not a remote traceback.
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("id,clicks,hour\n1,0,14102100\n")
    with pytest.raises(DataError, match=f"^{wrong}:1: header") as info:
        ingest(DataConfig(format=DataFormat.AVAZU, path=str(wrong), workers=2),
               output=tmp_path / "wrong", progress=False)  # fmt: skip
    assert "Traceback" not in str(info.value) and type(info.value) is DataError


def test_folder_glob_gzip_and_zstd_read_like_one_file(tmp_path: Path) -> None:
    src = synth_criteo(tmp_path / "all.txt", rows=3_000, seed=7)
    lines = src.read_bytes().splitlines(keepends=True)
    days = tmp_path / "days"
    days.mkdir()
    (days / "day-0.tsv").write_bytes(b"".join(lines[:1_000]))
    (days / "day-1.tsv.gz").write_bytes(gzip.compress(b"".join(lines[1_000:2_000])))
    _zstd(b"".join(lines[2_000:]), days / "day-2.tsv.zst")
    (days / "_SUCCESS").write_bytes(b"")
    one = ingest(DataConfig(format=DataFormat.CRITEO, path=str(src), split=ALL_TRAIN),
                 output=tmp_path / "one", progress=False)  # fmt: skip
    for path in (days, tmp_path / "days" / "day-*"):
        many = ingest(DataConfig(format=DataFormat.CRITEO, path=str(path), split=ALL_TRAIN),
                      output=tmp_path / "many", progress=False)  # fmt: skip
        assert many.rows == one.rows == {"train": 3_000, "valid": 0, "test": 0}
        assert [f.vocabulary for f in many.spec.features] == [
            f.vocabulary for f in one.spec.features
        ]
        assert _rows(many).equals(_rows(one))
        files = [f["path"] for f in many.quality["files"]]
        assert [Path(f).name for f in files] == ["day-0.tsv", "day-1.tsv.gz", "day-2.tsv.zst"]
        assert [f["lines"] for f in many.quality["files"]] == [1_000, 1_000, 1_000]
    # A changed compressed day changes the fingerprint: the next ingest is not skipped.
    (days / "day-1.tsv.gz").write_bytes(gzip.compress(b"".join(lines[1_000:1_999])))
    changed = ingest(DataConfig(format=DataFormat.CRITEO, path=str(days), split=ALL_TRAIN),
                     output=tmp_path / "many", progress=False)  # fmt: skip
    assert not changed.skipped and changed.rows["train"] == 2_999
    assert changed.spec.fingerprint != many.spec.fingerprint


def test_compressed_rejects_name_file_and_line_and_truncation_fails(tmp_path: Path) -> None:
    src = synth_criteo(tmp_path / "t.txt", rows=500, seed=2)
    lines = src.read_bytes().splitlines(keepends=True)
    lines[41] = b"1\tnot\ta\tcriteo\tline\n"
    data = b"".join(lines)
    gz = tmp_path / "t.tsv.gz"
    gz.write_bytes(gzip.compress(data))
    zst = _zstd(data, tmp_path / "t.tsv.zst")
    for path in (gz, zst):
        result = ingest(
            DataConfig(format=DataFormat.CRITEO, path=str(path), max_reject_ratio=0.01),
            output=tmp_path / path.suffix[1:], progress=False,
        )  # fmt: skip
        record = json.loads((result.output / "rejects.jsonl").read_text())
        assert (record["file"], record["line"]) == (str(path), 42)
        assert record["reason"] == "wrong_field_count" and sum(result.rows.values()) == 499
    for path in (gz, zst):
        cut = tmp_path / f"cut{path.suffix}"
        cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        with pytest.raises(DataError, match=f"{cut}: not a readable .*truncated or corrupt"):
            ingest(DataConfig(format=DataFormat.CRITEO, path=str(cut)),
                   output=tmp_path / "cut", progress=False)  # fmt: skip
        assert not (tmp_path / "cut").exists()


def test_invalid_utf8_is_a_counted_reject(tmp_path: Path) -> None:
    src = synth_criteo(tmp_path / "t.txt", rows=300, seed=4)
    lines = src.read_bytes().splitlines(keepends=True)
    lines[9] = lines[9].replace(b"\t", b"\t\xff\xfe", 1)  # the label field
    lines[99] = lines[99][:-2] + b"\xc3\n"  # a cut multi-byte character in C26
    src.write_bytes(b"".join(lines))
    result = ingest(DataConfig(format=DataFormat.CRITEO, path=str(src), max_reject_ratio=0.01),
                    output=tmp_path / "out", progress=False)  # fmt: skip
    assert result.rejects == {"invalid_utf8": 2} and sum(result.rows.values()) == 298
    records = [json.loads(x) for x in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert [(r["file"], r["line"]) for r in records] == [(str(src), 10), (str(src), 100)]
    assert "\\xff\\xfe" in records[0]["raw"]
    assert result.quality["files"][0]["rejects"] == 2


def test_reject_ratio_applies_per_file_and_is_reported_per_split(tmp_path: Path) -> None:
    train = synth_criteo(tmp_path / "train.txt", rows=2_000, seed=0)
    valid = tmp_path / "valid.txt"
    valid.write_bytes(b"garbage\n" * 20)  # 1% of all lines, 100% of the validation file
    cfg = DataConfig(format=DataFormat.CRITEO, path=str(train), valid_path=str(valid),
                     max_reject_ratio=0.05)  # fmt: skip
    with pytest.raises(DataError, match=rf"{valid}: 20 of 20 lines rejected") as info:
        ingest(cfg, output=tmp_path / "out", progress=False)
    assert f"{valid}:1 wrong_field_count" in str(info.value)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="data.valid_path: no usable rows"):
        ingest(DataConfig(format=DataFormat.CRITEO, path=str(train), valid_path=str(empty)),
               output=tmp_path / "out", progress=False)  # fmt: skip
    dirty = synth_criteo(tmp_path / "dirty.txt", rows=2_000, seed=1, malformed=40)
    result = ingest(DataConfig(format=DataFormat.CRITEO, path=str(dirty), max_reject_ratio=0.05),
                    output=tmp_path / "out", progress=False)  # fmt: skip
    (entry,) = result.quality["files"]
    assert (entry["lines"], entry["rejects"], entry["reject_ratio"]) == (2_000, 40, 0.02)
    splits = result.quality["splits"]
    assert sum(s["rejects"] for s in splits.values()) == 40
    assert sum(s["lines"] for s in splits.values()) == 2_000
    for name, s in splits.items():
        assert s["rows"] == result.rows[name] and s["lines"] == s["rows"] + s["rejects"]
    reused = ingest(DataConfig(format=DataFormat.CRITEO, path=str(dirty), max_reject_ratio=0.05),
                    output=tmp_path / "out", progress=False)  # fmt: skip
    assert reused.skipped and reused.quality == result.quality


def _avazu(i: int, hour: int) -> str:
    rest = [i, i % 2, f"site{i % 5}", "dom", "cat", "app", "adom", "acat", f"dev{i % 7}",
            "ip", "model", 1, 0, 15704, 320, 50, 1722, 0, 35, -1, 79]  # fmt: skip
    return ",".join(str(v) for v in [10**19 + i, i % 2, hour, *rest])


def test_time_split_streams_like_a_ranking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Many rows share an hour, so the boundaries fall inside an hour (ties by line).
    hours = [14102100 + (i * 7) % 24 for i in range(3_000)]
    lines = [_avazu(i, h) for i, h in enumerate(hours)]
    src = tmp_path / "train.csv"
    src.write_text(",".join(AVAZU_COLUMNS) + "\n" + "\n".join(lines) + "\n")
    cfg = DataConfig(format=DataFormat.AVAZU, path=str(src),
                     split=SplitConfig(by="time", valid=0.15, test=0.1))  # fmt: skip
    whole = ingest(cfg, output=tmp_path / "whole", progress=False)
    monkeypatch.setattr(io, "BLOCK_BYTES", 20_000)
    blocks = ingest(cfg, output=tmp_path / "blocks", progress=False)
    assert whole.rows == blocks.rows == {"train": 2_250, "valid": 450, "test": 300}
    assert whole.spec == blocks.spec
    for split in ("train", "valid", "test"):
        assert _rows(blocks, split).equals(_rows(whole, split))
    # The latest 300 (hour, line) pairs are test, the 450 before them valid: train holds the
    # first 2,250 rows in (hour, line) order (C1 is the row's index, unique).
    order = sorted(range(3_000), key=lambda i: (hours[i], i))
    vocab = whole.spec["C1"].vocabulary
    train = {int(vocab[c - 1]) for c in _rows(whole, "train")["C1"].to_list()}
    assert train == set(order[:2_250])
    assert set(_rows(whole, "test")["C1"].to_list()) == {0}  # unseen in training
