"""Streaming ingest of delimited text (Criteo, Avazu) and of CTR Parquet: many files, gzip or
zstd, bounded memory.

Pass 1 reads each input file in blocks of about `BLOCK_BYTES` ending at a line end (`.gz` and
`.zst` files are decompressed on the fly; the raw bytes are fingerprinted as they are read) or,
for Parquet, in batches of `PARQUET_BATCH_ROWS` rows of the declared columns, parses each block
on a worker, sets its rejects aside, dictionary-codes every string vocabulary column (UInt32
codes into the block's own distinct values) and counts the training values from the codes.
Per-block counts are merged in block order, so the vocabulary is exactly the whole-input one.
The coded blocks are spilled to disk (`BlockSpill`, about the input's size), so pass 2 parses
nothing: it reads each block back, maps the block's few distinct values to their ids and
gathers them by code, and the driver appends the rows to each split's shards in block order,
in row groups of `ROW_GROUP` rows. Memory holds the blocks in flight and the vocabularies,
whatever the input size. A split by time needs two more passes over the spill (the per-time
row counts first, then the keys of the rows at the boundary times).

Parquet inputs keep the bytes the whole-table ingest wrote for a single file: a row's
random-split key is its row number (plus its file's index above bit 40 in a folder of several
files: before 2026-12-04 row k of every file shared a split), ties of a time split are broken by
(row number, file), and each shard is written in one call in pyarrow's default row groups, so
the writer holds up to `data.rows_per_shard` encoded rows.

Workers are threads of this process (`data.workers: 0`, the default: polars, pyarrow and
hashlib release the GIL) or Ray tasks, at most `data.workers` in flight. Block boundaries,
merge order and row groups do not depend on the workers: the outputs are byte-identical.
"""

from __future__ import annotations

import collections
import dataclasses
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from plexus.pipelines.ingest.blocks import (
    Block,
    BlockSpill,
    ShardWriter,
    ordered_map,
    read_blocks,
    read_parquet_blocks,
)
from plexus.pipelines.ingest.config import DataConfig, DataFormat, ParquetSchema
from plexus.pipelines.ingest.delimited import LINE
from plexus.pipelines.ingest.encode import (
    arrow_schema,
    build_spec,
    encode,
    numeric_features,
    rank_vocabulary,
    vocab_columns,
    vocabulary_ids,
)
from plexus.pipelines.ingest.readers import (
    TIME,
    parquet_columns,
    parse_parquet,
    parse_text,
    text_format,
)
from plexus.platform.errors import ConfigError, DataError
from plexus.platform.feature_spec import FeatureSpec
from plexus.platform.hashing import splitmix64

SPLIT = "__split"
SPLITS = ("train", "valid", "test")
_FILE_BITS = 40  # a row's split key: line + (file index << 40); the line alone for file 0
_TIE_BITS = 20  # a Parquet row's time-tie key: (row << 20) + file index
_SHOWN = 5


@dataclasses.dataclass(frozen=True)
class _Plan:
    """How a block's rows get their split, and what pass 1 counts."""

    fmt: DataFormat
    config: DataConfig
    roles: ParquetSchema  # the parsed frame's columns (label `label`)
    vocab: tuple[str, ...]
    by_time: bool  # split known only after pass 1 (then counting is a pass of its own)
    time_cut: tuple[tuple[int, int], tuple[int, int]] | None = None  # (test, valid) thresholds

    @property
    def parquet(self) -> bool:
        return self.fmt is DataFormat.PARQUET


@dataclasses.dataclass
class _Stats:
    """What a block contributes: lines, rejects, rows per split and training statistics."""

    lines: int
    rows: np.ndarray  # (3,) accepted rows per split (zeros while the split is unknown)
    rejects: pl.DataFrame
    reject_splits: np.ndarray  # (3,) rejects per split (given or seeded; zeros by time)
    counts: dict[str, pl.DataFrame]
    numeric: dict[str, Any]
    times: pl.DataFrame | None  # rows per time value (time splits)
    file_index: int = 0  # the input file (a file given as two splits counts twice)
    lengths: dict[str, int | None] = dataclasses.field(default_factory=dict)  # longest lists
    coded: _Coded | None = None  # pass 1's parsed block, for the spill


@dataclasses.dataclass(frozen=True)
class _Coded:
    """A parsed block as the later passes read it: each column in `values` holds UInt32 codes
    into its distinct values (null for a missing value), the other columns as parsed."""

    block: Block  # without its data
    frame: pl.DataFrame
    values: dict[str, pl.Series]


@dataclasses.dataclass(frozen=True)
class Streamed:
    """The outcome of a streamed ingest, written into the temporary output folder."""

    spec: FeatureSpec
    rows: dict[str, int]
    rejects: dict[str, int]
    quality: dict[str, Any]
    shards: dict[str, list[str]]


def stream_inputs(
    config: DataConfig,
    files: dict[str, list[Path]],
    tmp: Path,
    *,
    name: str,
    source: Callable[[], dict[str, Any]],
    fingerprint: Callable[[Path, int, int], str | None],
    reuse: Callable[[list[dict[str, Any]]], bool],
    log: Callable[[str], None],
) -> tuple[Streamed | None, list[dict[str, Any]]]:
    """Ingest text or Parquet `files` (split -> files) into `tmp` in two streamed passes.

    `fingerprint(path, size, mtime_ns)` gives a cached SHA-256 (None: hash while reading);
    `reuse(prints)` says, once every input is fingerprinted, that an existing output holds
    these bytes (then nothing is written and None is returned with the prints); `source()`
    gives the spec's source record once the prints are known.
    """
    roles = _roles(config)
    given = "valid" in files
    plan = _Plan(config.format, config, roles, tuple(vocab_columns(roles, config)), by_time=False)
    if not given and config.split.by == "time":
        timed = config.format is DataFormat.AVAZU or (
            config.schema is not None and config.schema.time is not None
        )
        if not timed:
            raise ConfigError(
                f"data.split.by: 'time' needs a time column; {config.format.value} has none"
                + (" (declare data.schema.time)" if plan.parquet else "")
            )
        plan = dataclasses.replace(plan, by_time=True)
    ordered = [(s, f) for s in SPLITS for f in files.get(s, [])]

    def read(fingerprint: Callable[[Path, int, int], str | None], prints: list) -> Iterator[Block]:
        if plan.parquet:
            assert config.schema is not None
            return read_parquet_blocks(
                ordered, given, fingerprint, prints, parquet_columns(config.schema)
            )
        return read_blocks(ordered, given, fingerprint, prints)

    prints: list[dict[str, Any]] = []
    merged = _Merged(plan.vocab)
    per_file: dict[int, dict[str, Any]] = {
        i: {"path": str(f), "split": s, "lines": 0, "rejects": 0, "shown": []}
        for i, (s, f) in enumerate(ordered)
    }
    reject_counts: collections.Counter[str] = collections.Counter()
    blocks = read(fingerprint, prints)
    spill = BlockSpill(tmp / ".blocks")
    with (tmp / "rejects.jsonl").open("w") as rejects_out:
        for stats in ordered_map(_parse_task, ((plan, b) for b in blocks), config.workers):
            assert stats.coded is not None
            spill.write(stats.coded.block, stats.coded.frame, stats.coded.values)
            stats.coded = None
            merged.add(stats)
            _note_rejects(stats, per_file, reject_counts, rejects_out)
    log(
        f"read {len(ordered)} files: {merged.lines:,} lines, {sum(reject_counts.values()):,} rejects"
    )
    _check_unchanged(ordered, prints)
    if reuse(prints):
        return None, prints
    _check_rejects(per_file, config.max_reject_ratio)

    def again(*, last: bool = False) -> Iterator[_Coded]:
        return (_Coded(*spilled) for spilled in spill.read(last=last))

    if plan.by_time:
        plan = dataclasses.replace(plan, time_cut=_time_cut(plan, merged, again()))
        merged = _Merged(plan.vocab)
        for stats in ordered_map(_count_task, ((plan, c) for c in again()), config.workers):
            merged.add(stats)
    rows = dict(zip(SPLITS, (int(n) for n in merged.rows), strict=True))
    log("split: " + ", ".join(f"{k} {v:,}" for k, v in rows.items()))
    if rows["train"] == 0:
        raise DataError(f"{config.path}: no usable training rows; check data.path and data.format")
    for s in ("valid", "test"):
        if s in files and rows[s] == 0:
            raise DataError(
                f"data.{s}_path: no usable rows in {', '.join(map(str, files[s]))}; every line "
                "was rejected or the files are empty. Fix the input or point it at other files"
            )
    spec = build_spec(
        roles, config, vocabs=merged.vocabularies(config), max_lengths=merged.max_lengths(),
        numeric=merged.numeric_features(roles.numeric, config.numeric),
        name=name, source=source(), splits=rows,
    )  # fmt: skip
    log(f"spec: {len(spec.features)} features")
    fingerprint_ = spec.fingerprint
    schema = arrow_schema(spec, fingerprint_)
    compression = None if config.compression == "none" else config.compression
    writers = {
        s: ShardWriter(
            tmp / s, schema, config.rows_per_shard, compression, whole_shards=plan.parquet
        )
        for s in SPLITS
        if rows[s] or s in files
    }
    tasks = ((plan, spec, c) for c in again(last=True))
    for encoded in ordered_map(_encode_task, tasks, config.workers):
        for code, s in enumerate(SPLITS):
            part = encoded.filter(pl.col(SPLIT) == code)
            if part.height:
                writers[s].add(part.drop(SPLIT))
    shards = {s: w.close() for s, w in writers.items()}
    spill.folder.rmdir()
    log(f"encoded; spec fingerprint {fingerprint_}")
    quality = _quality(per_file, merged, rows, plan)
    counts = dict(sorted(reject_counts.items(), key=lambda kv: (-kv[1], kv[0])))
    return Streamed(spec=spec, rows=rows, rejects=counts, quality=quality, shards=shards), prints


def _check_unchanged(ordered: list[tuple[str, Path]], prints: list[dict[str, Any]]) -> None:
    """A file written to while pass 1 read it fails the job, by name: its fingerprint and size
    would not describe the rows ingested. (The later passes read pass 1's spill, not the file.)"""
    for (_, file), first in zip(ordered, prints, strict=True):
        if file.stat().st_size != first["size"]:
            raise DataError(f"{file}: changed while it was ingested; run the ingest again")


def _roles(config: DataConfig) -> ParquetSchema:
    """The columns of the parsed frames: a text format's own, or a Parquet input's declared."""
    if config.format is not DataFormat.PARQUET:
        return text_format(config.format).roles
    assert config.schema is not None
    s = config.schema
    return ParquetSchema(label="label", numeric=s.numeric, categorical=s.categorical,
                         multi_categorical=s.multi_categorical)  # fmt: skip


def _key(lines: np.ndarray, file_index: int) -> np.ndarray:
    """Each row's random-split key (uint64): its line (text) or row number (Parquet) plus its
    file's index above bit 40, so the rows of one position in different files of a folder are
    drawn independently, and a single file keeps the key it always had."""
    return lines.astype(np.uint64) + np.uint64(file_index << _FILE_BITS)


def _tie_key(plan: _Plan, frame: pl.DataFrame, file_index: int) -> np.ndarray:
    """Each row's order among rows of the same time: (file, line) for text; (row, file) for
    Parquet, the order the whole-table ingest ranked (time, row) ties in."""
    lines = frame[LINE].to_numpy().astype(np.uint64)
    if plan.parquet:
        return (lines << np.uint64(_TIE_BITS)) + np.uint64(file_index)
    return lines + np.uint64(file_index << _FILE_BITS)


def seeded_split(keys: np.ndarray, config: DataConfig, given: int | None = None) -> np.ndarray:
    """0/1/2 (train/valid/test) per row from a seeded SplitMix64 of its key: stable when other
    lines change, independent of blocks and workers. `given`: the split of the row's file (0,
    1, 2) when the input names its splits; rows of a given train or validation file are then
    drawn into folds only under cross-validation (`data.split.folds`)."""
    cfg = config.split
    if given is not None and (given == 2 or not cfg.cross_validation):
        return np.full(keys.shape, given, dtype=np.int8)
    mixed = splitmix64(keys.astype(np.uint64) ^ splitmix64(np.uint64(cfg.seed)))
    position = (mixed >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    if not cfg.cross_validation:
        valid = position < cfg.test + cfg.valid
        return np.where(position < cfg.test, 2, np.where(valid, 1, 0)).astype(np.int8)
    test = cfg.test if given is None else 0.0  # given files: the test file is the test split
    fold = np.floor((position - test) / (1.0 - test) * cfg.folds)
    return np.where(position < test, 2, np.where(fold == cfg.fold, 1, 0)).astype(np.int8)


def _split_of(plan: _Plan, frame: pl.DataFrame, block: Block) -> np.ndarray | None:
    if block.given is not None or not plan.by_time:
        keys = _key(frame[LINE].to_numpy(), block.file_index)
        return seeded_split(keys, plan.config, block.given)
    if plan.time_cut is None:
        return None
    times = frame[TIME].to_numpy()
    keys = _tie_key(plan, frame, block.file_index)
    (t_test, k_test), (t_valid, k_valid) = plan.time_cut
    test = (times > t_test) | ((times == t_test) & (keys >= np.uint64(k_test)))
    valid = (times > t_valid) | ((times == t_valid) & (keys >= np.uint64(k_valid)))
    return np.where(test, 2, np.where(valid, 1, 0)).astype(np.int8)


def _parse(plan: _Plan, block: Block) -> tuple[pl.DataFrame, Any]:
    if plan.parquet:
        assert plan.config.schema is not None
        table = parse_parquet(
            plan.config.schema, Path(block.file), block.data, line_offset=block.line_offset
        )
    else:
        assert isinstance(block.data, bytes)
        table = parse_text(
            plan.fmt, Path(block.file), data=block.data, line_offset=block.line_offset
        )
    return table.frame, table


def _parse_task(plan: _Plan, block: Block) -> _Stats:
    """Pass 1 on one block: parse, split where known, code the vocabulary columns and count
    their training values; the coded block goes to the spill."""
    frame, table = _parse(plan, block)
    split = _split_of(plan, frame, block)
    if split is not None:
        frame = frame.with_columns(pl.Series(SPLIT, split))
    coded = _code(plan, block, frame)
    rejects = table.rejects
    reject_splits = np.zeros(3, dtype=np.int64)
    if rejects.height and (block.given is not None or not plan.by_time):
        keys = _key(rejects["line"].to_numpy(), block.file_index)
        splits = seeded_split(keys, plan.config, block.given)
        reject_splits = np.bincount(splits, minlength=3)
    stats = _count(plan, coded, split is not None)
    stats.lines, stats.rejects, stats.reject_splits = table.lines, rejects, reject_splits
    stats.file_index, stats.coded = block.file_index, coded
    if plan.by_time and split is None:
        stats.times = frame.group_by(TIME).len().rename({"len": "n"})
    return stats


def _code(plan: _Plan, block: Block, frame: pl.DataFrame) -> _Coded:
    """Dictionary-code the block's single-valued string vocabulary columns, after which counting
    is a bincount and encoding a gather of the few distinct values' ids: one hash pass per column
    (a Categorical with categories of its own: dense codes, the block's distinct values by code;
    a quarter cheaper than `unique` and a cast to an Enum of them)."""
    values: dict[str, pl.Series] = {}
    codes = []
    for col in plan.vocab:
        if frame.schema[col] != pl.String:
            continue  # lists (multi-valued) keep their strings
        categories = pl.Categories.random()
        coded = frame[col].cast(pl.Categorical(categories))
        # Read while `coded` lives: the mapping goes with the last column using it.
        values[col] = categories.to_series().rename(col)
        codes.append(coded.to_physical())
    return _Coded(dataclasses.replace(block, data=b""), frame.with_columns(codes), values)


def _count_task(plan: _Plan, coded: _Coded) -> _Stats:
    """Pass 1c (time splits): split a block by the time thresholds and count it."""
    split = _split_of(plan, coded.frame, coded.block)
    assert split is not None
    frame = coded.frame.with_columns(pl.Series(SPLIT, split))
    return _count(plan, dataclasses.replace(coded, frame=frame), True)


def _keys_task(plan: _Plan, coded: _Coded, times: tuple[int, ...]) -> dict[int, np.ndarray]:
    """Pass 1b (time splits): the keys of the rows at each boundary time."""
    at = coded.frame.filter(pl.col(TIME).is_in(times))
    return {t: _tie_key(plan, at.filter(pl.col(TIME) == t), coded.block.file_index) for t in times}


def _encode_task(plan: _Plan, spec: FeatureSpec, coded: _Coded) -> pl.DataFrame:
    """Pass 2 on one block: the encoded rows with their split code. A coded column's ids are
    its distinct values' ids gathered by code."""
    ids = [
        pl.lit(vocabulary_ids(values, spec[col])).gather(pl.col(col)).fill_null(0).alias(col)
        for col, values in coded.values.items()
    ]
    frame = coded.frame.with_columns(ids)
    if SPLIT not in frame.columns:  # a time split: known only after pass 1
        frame = frame.with_columns(pl.Series(SPLIT, _split_of(plan, frame, coded.block)))
    return encode(frame, spec, keep=(SPLIT,), encoded=frozenset(coded.values))


def _count(plan: _Plan, coded: _Coded, known: bool) -> _Stats:
    """Training-row statistics of one block (empty when its split is not known yet)."""
    rows = np.zeros(3, dtype=np.int64)
    counts: dict[str, pl.DataFrame] = {}
    numeric: dict[str, Any] = {}
    lengths: dict[str, int | None] = {}
    multi = plan.roles.multi_categorical
    frame = coded.frame
    if known:
        split = frame[SPLIT].to_numpy()
        rows = np.bincount(split, minlength=3).astype(np.int64)
        train = frame.lazy().filter(pl.col(SPLIT) == 0)
        strings = [c for c in plan.vocab if c not in coded.values]
        queries = [
            (
                train.select(pl.col(c).alias("v")).explode("v") if c in multi
                else train.select(pl.col(c).alias("v"))
            ).group_by("v").agg(pl.len().alias("n"))
            for c in strings
        ]  # fmt: skip
        cols = plan.roles.numeric
        x = [pl.col(c).cast(pl.Float64) for c in cols]
        if plan.config.numeric == "bucketize":
            queries.append(train.select([e.max() for e in x]))
        else:
            queries.append(
                train.select(
                    [e.count().alias(f"n{i}") for i, e in enumerate(x)]
                    + [e.mean().alias(f"m{i}") for i, e in enumerate(x)]
                    + [((e - e.mean()) ** 2).sum().alias(f"q{i}") for i, e in enumerate(x)]
                )
            )
        if multi:
            queries.append(train.select([pl.col(c).list.len().max() for c in multi]))
        found = pl.collect_all(queries)
        if multi:
            lengths = found.pop().row(0, named=True)
        counts = dict(zip(strings, found[: len(strings)], strict=True))
        train_codes = frame.select(list(coded.values)).filter(pl.Series(split == 0))
        for c, values in coded.values.items():
            n = np.bincount(train_codes[c].drop_nulls().to_numpy(), minlength=len(values))
            counts[c] = pl.DataFrame(
                {"v": values.rename("v"), "n": pl.Series(n).cast(pl.get_index_type())}
            ).filter(pl.col("n") > 0)
        counts = {c: counts[c] for c in plan.vocab}
        row = found[len(strings)].row(0) if cols else ()
        if plan.config.numeric == "bucketize":
            numeric = dict(zip(cols, row, strict=True))
        else:
            k = len(cols)
            numeric = {c: (row[i], row[k + i], row[2 * k + i]) for i, c in enumerate(cols)}
    empty = pl.DataFrame(schema={"file": pl.String})
    return _Stats(0, rows, empty, np.zeros(3, np.int64), counts, numeric, None, lengths=lengths)


class _Merged:
    """Block statistics merged in block order (so the sums do not depend on the workers).

    Value counts are kept as per-block frames and summed in one group-by when they outgrow
    the merged counts (or at the end): memory stays within a few times the vocabulary.
    """

    def __init__(self, vocab: tuple[str, ...]) -> None:
        self.lines, self.rows = 0, np.zeros(3, dtype=np.int64)
        self.reject_splits = np.zeros(3, dtype=np.int64)
        self.counts: dict[str, list[pl.DataFrame]] = {c: [] for c in vocab}
        self.pending, self.merged_rows = 0, 0
        self.numeric: dict[str, Any] = {}
        self.times: pl.DataFrame | None = None
        self.lengths: dict[str, int | None] = {}
        self.vocab = vocab

    def add(self, stats: _Stats) -> None:
        self.lines += stats.lines
        self.rows += stats.rows
        self.reject_splits += stats.reject_splits
        for col, counts in stats.counts.items():
            self.counts[col].append(counts)
            self.pending += counts.height
        if self.pending > max(1 << 20, 2 * self.merged_rows):
            self._compact()
        for col, value in stats.numeric.items():
            self.numeric[col] = _merge_numeric(self.numeric.get(col), value)
        for col, n in stats.lengths.items():
            old = self.lengths.get(col)
            self.lengths[col] = n if old is None else (old if n is None else max(old, n))
        if stats.times is not None:
            self.times = (
                stats.times if self.times is None
                else pl.concat([self.times, stats.times]).group_by(TIME).agg(pl.col("n").sum())
            )  # fmt: skip

    def _compact(self) -> None:
        queries = [
            pl.concat(frames).lazy().group_by("v").agg(pl.col("n").sum())
            for frames in self.counts.values()
        ]
        found = pl.collect_all(queries)
        self.counts = {c: [f] for c, f in zip(self.counts, found, strict=True)}
        self.merged_rows = sum(f.height for f in found)
        self.pending = 0

    def vocabularies(self, config: DataConfig) -> dict[str, tuple[str, ...]]:
        queries = [
            rank_vocabulary(
                pl.concat(frames).lazy().group_by("v").agg(pl.col("n").sum()), config
            ) if frames else pl.LazyFrame(schema={"v": pl.String})
            for frames in self.counts.values()
        ]  # fmt: skip
        found = pl.collect_all(queries)
        return {c: tuple(f.to_series().to_list()) for c, f in zip(self.vocab, found, strict=True)}

    def max_lengths(self) -> dict[str, int]:
        """The longest training list of each multi-valued column (1 when none has items)."""
        return {c: int(n or 1) for c, n in self.lengths.items()}

    def numeric_features(self, cols: tuple[str, ...], mode: str) -> dict[str, Any]:
        if mode == "bucketize":
            return numeric_features(cols, mode, maxima=self.numeric)
        return numeric_features(cols, mode, moments=self.numeric)


def _merge_numeric(old: Any, new: Any) -> Any:
    """Max (bucketize) or Chan's merge of (count, mean, squared deviations) (normalize)."""
    if not isinstance(new, tuple):
        return new if old is None else (old if new is None else max(old, new))
    if old is None or not old[0]:
        return new
    if not new[0]:
        return old
    (na, ma, qa), (nb, mb, qb) = old, new
    n = na + nb
    delta = mb - ma
    return (n, ma + delta * nb / n, qa + qb + delta * delta * na * nb / n)


def _time_cut(
    plan: _Plan, merged: _Merged, blocks: Iterable[_Coded]
) -> tuple[tuple[int, int], tuple[int, int]]:
    """(time, key) thresholds: rows at or past the first are test, past the second valid.

    The same rows as ranking all rows by (time, line) and taking the latest as test: per-time
    counts find the boundary times; only the keys of the rows at those times are collected.
    """
    cfg = plan.config.split
    times = merged.times
    n = int(times["n"].sum()) if times is not None else 0
    n_test, n_valid = round(n * cfg.test), round(n * cfg.valid)
    never = (np.iinfo(np.int64).max, 0)
    if times is None or n == 0:
        return never, never
    ordered = times.sort(TIME, descending=True)
    cum = np.cumsum(ordered["n"].to_numpy())
    values = ordered[TIME].to_numpy()
    wanted = {}
    for need in (n_test, n_test + n_valid):
        if need > 0:
            at = int(np.searchsorted(cum, need))  # first time whose cumulative count >= need
            later = int(cum[at - 1]) if at else 0
            wanted[need] = (int(values[at]), need - later)
    boundary = tuple(sorted({t for t, _ in wanted.values()}))
    keys: dict[int, list[np.ndarray]] = {t: [] for t in boundary}
    tasks = ((plan, b, boundary) for b in blocks)
    for found in ordered_map(_keys_task, tasks, plan.config.workers):
        for t, k in found.items():
            keys[t].append(k)

    def cut(need: int) -> tuple[int, int]:
        if need <= 0:
            return never
        t, take = wanted[need]
        at_t = np.sort(np.concatenate(keys[t]))
        return t, int(at_t[len(at_t) - take])

    return cut(n_test), cut(n_test + n_valid)


def _note_rejects(
    stats: _Stats,
    per_file: dict[int, dict[str, Any]],
    counts: collections.Counter[str],
    out: Any,
) -> None:
    """Add a block's lines and rejects to its file's tally; append the rejects to rejects.jsonl."""
    entry = per_file[stats.file_index]
    entry["lines"] += stats.lines
    entry["rejects"] += stats.rejects.height
    if not stats.rejects.height:
        return
    counts.update(stats.rejects["reason"].to_list())
    for row in stats.rejects.iter_rows(named=True):
        if len(entry["shown"]) < _SHOWN:
            entry["shown"].append(row)
        out.write(json.dumps(row, sort_keys=True) + "\n")


def _check_rejects(per_file: dict[int, dict[str, Any]], max_ratio: float) -> None:
    """Each file on its own: a clean training file does not hide a garbage validation file."""
    for entry in per_file.values():
        lines, bad = entry["lines"], entry["rejects"]
        if bad == 0 or bad <= max_ratio * max(lines, 1):
            continue
        shown = "; ".join(
            f"{r['file']}:{r['line']} {r['reason']}" + (f" ({r['column']})" if r["column"] else "")
            for r in entry["shown"]
        )
        raise DataError(
            f"{entry['path']}: {bad:,} of {lines:,} lines rejected ({bad / max(lines, 1):.2%} > "
            f"data.max_reject_ratio {max_ratio:.2%}); first bad lines: {shown}. Fix the input "
            "or raise data.max_reject_ratio"
        )


def _quality(
    per_file: dict[int, dict[str, Any]], merged: _Merged, rows: dict[str, int], plan: _Plan
) -> dict[str, Any]:
    files = [
        {k: e[k] for k in ("path", "split", "lines", "rejects")}
        | {"reject_ratio": e["rejects"] / e["lines"] if e["lines"] else 0.0}
        for e in per_file.values()
    ]
    splits: dict[str, Any] = {}
    for i, s in enumerate(SPLITS):
        entry: dict[str, Any] = {"rows": rows[s]}
        if not plan.by_time:  # a rejected line has no time, so no split by time
            bad = int(merged.reject_splits[i])
            lines = rows[s] + bad
            entry |= {"lines": lines, "rejects": bad, "reject_ratio": bad / lines if lines else 0.0}
        splits[s] = entry
    return {"files": files, "splits": splits}
