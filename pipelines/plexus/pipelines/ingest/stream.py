"""Streaming ingest of delimited text (Criteo, Avazu) and of CTR Parquet: many files, gzip or
zstd, bounded memory.

Pass 1 reads each input file in blocks of about `BLOCK_BYTES` ending at a line end (`.gz` and
`.zst` files are decompressed on the fly; the raw bytes are fingerprinted as they are read) or,
for Parquet, in batches of `PARQUET_BATCH_ROWS` rows of the declared columns, parses each block
on a worker, sets its rejects aside, codes every single-valued vocabulary column (the run's
UInt32 code of each distinct value, `codes.RunCodes`) and counts the training values by code.
Counts are summed over blocks, so the vocabulary is exactly the whole-input one. The coded
blocks are spilled to disk (`BlockSpill`, about the input's size), so pass 2 parses nothing: it
reads each block back and gathers each column's ids by code from the vocabulary's lookup table,
and the driver appends the rows to each split's shards in block order, in row groups of
`ROW_GROUP` rows. Memory holds the blocks in flight and the vocabularies,
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
from plexus.pipelines.ingest.codes import RunCodes, SparseCounts, local_codes
from plexus.pipelines.ingest.config import DataConfig, DataFormat, ParquetSchema
from plexus.pipelines.ingest.delimited import LINE
from plexus.pipelines.ingest.encode import (
    arrow_schema,
    build_spec,
    encode,
    numeric_features,
    rank_vocabulary,
    vocab_columns,
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
    coded: tuple[str, ...]  # the single-valued vocab columns (lists keep their strings)
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
    counts: dict[str, pl.DataFrame]  # value counts of the multi-valued vocab columns
    code_counts: dict[str, SparseCounts]  # of the coded ones
    numeric: dict[str, Any]
    times: pl.DataFrame | None  # rows per time value (time splits)
    file_index: int = 0  # the input file (a file given as two splits counts twice)
    lengths: dict[str, int | None] = dataclasses.field(default_factory=dict)  # longest lists
    coded: _Coded | None = None  # a Ray task's parsed block, for the driver to spill


@dataclasses.dataclass(frozen=True)
class _Coded:
    """A parsed block as the later passes read it: each coded column holds UInt32 codes (null
    for a missing value), the other columns as parsed. The codes are the run's, or, from a Ray
    task until the driver translates them, codes into the block's own distinct `values`."""

    block: Block  # without its data
    frame: pl.DataFrame
    values: dict[str, pl.Series] = dataclasses.field(default_factory=dict)


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
    vocab = tuple(vocab_columns(roles, config))
    single = tuple(c for c in vocab if c not in roles.multi_categorical)
    plan = _Plan(config.format, config, roles, vocab, single, by_time=False)
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
    codes = RunCodes(plan.coded)
    spill = BlockSpill(tmp / ".blocks")
    # Threads code into the run's categories and spill their blocks; a Ray task codes into
    # categories of its own, and the driver translates and spills.
    in_process = None if config.workers > 0 else (codes, spill)
    merged = _Merged(plan.vocab, codes)
    per_file: dict[int, dict[str, Any]] = {
        i: {"path": str(f), "split": s, "lines": 0, "rejects": 0, "shown": []}
        for i, (s, f) in enumerate(ordered)
    }
    reject_counts: collections.Counter[str] = collections.Counter()
    blocks = read(fingerprint, prints)
    with (tmp / "rejects.jsonl").open("w") as rejects_out:
        parse = ((plan, b, in_process) for b in blocks)
        for stats in ordered_map(_parse_task, parse, config.workers):
            if stats.coded is not None:  # from a Ray task
                _translate(stats, codes)
                spill.write(stats.coded.block, stats.coded.frame)
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
        merged = _Merged(plan.vocab, codes)
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
    vocabs, lookups = merged.vocabularies(config)
    spec = build_spec(
        roles, config, vocabs=vocabs, max_lengths=merged.max_lengths(),
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
    tasks = ((plan, spec, lookups, c) for c in again(last=True))
    for parts in ordered_map(_encode_task, tasks, config.workers, broadcast=(spec, lookups)):
        for code, part in sorted(parts.items()):
            writers[SPLITS[code]].add(part)
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


def _parse_task(
    plan: _Plan, block: Block, in_process: tuple[RunCodes, BlockSpill] | None
) -> _Stats:
    """Pass 1 on one block: parse, split where known, code the vocabulary columns and count
    their training values. On a thread of the job (`in_process`), the codes are the run's and
    the coded block goes to the spill here; a Ray task's block goes back to the driver."""
    frame, table = _parse(plan, block)
    split = _split_of(plan, frame, block)
    if split is not None:
        frame = frame.with_columns(pl.Series(SPLIT, split))
    codes, spill = in_process if in_process is not None else (None, None)
    coded = _code(plan, block, frame, codes)
    rejects = table.rejects
    reject_splits = np.zeros(3, dtype=np.int64)
    if rejects.height and (block.given is not None or not plan.by_time):
        keys = _key(rejects["line"].to_numpy(), block.file_index)
        splits = seeded_split(keys, plan.config, block.given)
        reject_splits = np.bincount(splits, minlength=3)
    stats = _count(plan, coded, split is not None)
    stats.lines, stats.rejects, stats.reject_splits = table.lines, rejects, reject_splits
    stats.file_index = block.file_index
    if spill is not None:
        spill.write(coded.block, coded.frame)
    else:
        stats.coded = coded
    if plan.by_time and split is None:
        stats.times = frame.group_by(TIME).len().rename({"len": "n"})
    return stats


def _code(plan: _Plan, block: Block, frame: pl.DataFrame, codes: RunCodes | None) -> _Coded:
    """Code the block's single-valued vocabulary columns, after which counting is a bincount and
    encoding a gather: one hash pass per column (a polars Categorical)."""
    block = dataclasses.replace(block, data=b"")
    if codes is not None:
        return _Coded(block, frame.with_columns([codes.code(frame[c]) for c in plan.coded]))
    values: dict[str, pl.Series] = {}
    coded = []
    for col in plan.coded:
        physical, values[col] = local_codes(frame[col])
        coded.append(physical)
    return _Coded(block, frame.with_columns(coded), values)


def _translate(stats: _Stats, codes: RunCodes) -> None:
    """A Ray task's block (codes into its own values) in the run's codes, counts included."""
    coded = stats.coded
    assert coded is not None
    columns = []
    for col, values in coded.values.items():
        column, run = codes.translate(col, coded.frame[col], values)
        columns.append(column)
        if col in stats.code_counts:  # (none while a time split is unknown)
            stats.code_counts[col] = stats.code_counts[col].translated(run)
    stats.coded = _Coded(coded.block, coded.frame.with_columns(columns))


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


def _encode_task(
    plan: _Plan, spec: FeatureSpec, lookups: dict[str, np.ndarray], coded: _Coded
) -> dict[int, pl.DataFrame]:
    """Pass 2 on one block: its encoded rows by split (0 train, 1 valid, 2 test; order kept).
    A coded column's ids are gathered by code from its lookup table (0 for a missing value)."""
    ids = [
        pl.lit(pl.Series(lookups[col])).gather(pl.col(col)).fill_null(0).alias(col)
        for col in plan.coded
    ]
    frame = coded.frame.with_columns(ids)
    if SPLIT not in frame.columns:  # a time split: known only after pass 1
        frame = frame.with_columns(pl.Series(SPLIT, _split_of(plan, frame, coded.block)))
    encoded = encode(frame, spec, keep=(SPLIT,), encoded=frozenset(plan.coded))
    parts = encoded.partition_by(SPLIT, as_dict=True, include_key=False, maintain_order=True)
    return {int(key[0]): part for key, part in parts.items()}  # type: ignore[call-overload]


def _count(plan: _Plan, coded: _Coded, known: bool) -> _Stats:
    """Training-row statistics of one block (empty when its split is not known yet)."""
    rows = np.zeros(3, dtype=np.int64)
    counts: dict[str, pl.DataFrame] = {}
    code_counts: dict[str, SparseCounts] = {}
    numeric: dict[str, Any] = {}
    lengths: dict[str, int | None] = {}
    multi = plan.roles.multi_categorical
    frame = coded.frame
    if known:
        split = frame[SPLIT].to_numpy()
        rows = np.bincount(split, minlength=3).astype(np.int64)
        train = frame.lazy().filter(pl.col(SPLIT) == 0)
        strings = [c for c in plan.vocab if c not in plan.coded]
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
        train_codes = frame.select(plan.coded).filter(pl.Series(split == 0))
        for c in plan.coded:
            code_counts[c] = SparseCounts.of(train_codes[c].drop_nulls().to_numpy())
        row = found[len(strings)].row(0) if cols else ()
        if plan.config.numeric == "bucketize":
            numeric = dict(zip(cols, row, strict=True))
        else:
            k = len(cols)
            numeric = {c: (row[i], row[k + i], row[2 * k + i]) for i, c in enumerate(cols)}
    empty = pl.DataFrame(schema={"file": pl.String})
    return _Stats(
        0, rows, empty, np.zeros(3, np.int64), counts, code_counts, numeric, None, lengths=lengths
    )


class _Merged:
    """Block statistics merged in block order (so the sums do not depend on the workers).

    Coded columns' counts are summed by code. The value counts of lists are kept as per-block
    frames and summed in one group-by when they outgrow the merged counts (or at the end):
    memory stays within a few times the vocabulary.
    """

    def __init__(self, vocab: tuple[str, ...], codes: RunCodes) -> None:
        self.lines, self.rows = 0, np.zeros(3, dtype=np.int64)
        self.reject_splits = np.zeros(3, dtype=np.int64)
        self.codes = codes
        self.totals = {c: np.zeros(0, np.int64) for c in codes.columns}
        self.counts: dict[str, list[pl.DataFrame]] = {
            c: [] for c in vocab if c not in codes.columns
        }
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
        for col, sparse in stats.code_counts.items():
            self.totals[col] = sparse.add_to(self.totals[col])
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

    def vocabularies(
        self, config: DataConfig
    ) -> tuple[dict[str, tuple[str, ...]], dict[str, np.ndarray]]:
        """Each vocabulary column's values in id order, and each coded column's lookup table
        from code to id."""
        queries = [
            rank_vocabulary(
                pl.concat(frames).lazy().group_by("v").agg(pl.col("n").sum()), config
            ) if frames else pl.LazyFrame(schema={"v": pl.String})
            for frames in self.counts.values()
        ]  # fmt: skip
        found = pl.collect_all(queries)
        vocabs = {
            c: tuple(f.to_series().to_list()) for c, f in zip(self.counts, found, strict=True)
        }
        lookups = {}
        for col, total in self.totals.items():
            vocabs[col], lookups[col] = self.codes.vocabulary(col, total, config)
        return {c: vocabs[c] for c in self.vocab}, lookups

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
