"""The ingest job: read -> set rejects aside -> split -> fit the spec on train -> encode -> write.

Output layout (written into a temporary sibling folder, then renamed into place, so a crash
never leaves a half-written dataset that looks complete):

    OUT/feature_spec.json   OUT/{train,valid,test}/part-00000.parquet ...
    OUT/rejects.jsonl       OUT/manifest.json (input fingerprints + config hash; written last)

Re-running on the same inputs and config reuses OUT (`skipped=True`); outputs are byte-identical.
With `data.interactions` the input is a retrieval log, split and ordered by
`plexus.pipelines.ingest.interactions`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import glob
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from plexus.pipelines.files import remove_stale_temporaries
from plexus.pipelines.ingest.config import DataConfig, DataFormat
from plexus.pipelines.ingest.delimited import LINE
from plexus.pipelines.ingest.encode import arrow_schema, encode, fit_spec, to_arrow
from plexus.pipelines.ingest.interactions import ORDER, finish_interactions, split_interactions
from plexus.pipelines.ingest.readers import TIME, RawTable, read_input, source_files
from plexus.pipelines.ingest.stream import seeded_split, stream_inputs
from plexus.platform.config import to_dict
from plexus.platform.errors import ConfigError, DataError
from plexus.platform.feature_spec import SPEC_FILENAME, FeatureSpec

INGEST_VERSION = 1  # bump when the encoded output of the same input changes
SPLITS = ("train", "valid", "test")
MANIFEST = "manifest.json"
SPLIT = "__split"
REJECTS = "rejects.jsonl"
_SHOWN_REJECTS = 5
_TEXT_FORMATS = (DataFormat.CRITEO, DataFormat.AVAZU)


@dataclasses.dataclass(frozen=True)
class IngestResult:
    """Where the shards are, the spec they were encoded with, row and reject counts."""

    output: Path
    spec: FeatureSpec
    rows: dict[str, int]
    rejects: dict[str, int]
    skipped: bool
    # Lines, rejects and reject ratio per input file and per split ({"files": [...], "splits": {}}).
    quality: dict[str, Any] = dataclasses.field(default_factory=dict)

    def shards(self, split: str) -> list[Path]:
        """The Parquet shards of `split` in order (empty when the split has no rows)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; one of {SPLITS}")
        return sorted((self.output / split).glob("part-*.parquet"))


def ingest(
    config: DataConfig, *, output: Path | None = None, progress: bool = True
) -> IngestResult:
    """Turn the raw input of `config` into encoded Parquet shards + a feature spec under `output`.

    Example:
        >>> result = ingest(DataConfig(format=DataFormat.CRITEO, path="train.txt"), output=Path("out"))
        >>> result.shards("train")[0]
        PosixPath('out/train/part-00000.parquet')
    """
    out = Path(output if output is not None else config.output or "")
    if output is None and config.output is None:
        raise ConfigError("data.output: no output folder; set data.output or pass output=")
    log = _Log(progress)
    inputs = {"train": config.path, "valid": config.valid_path, "test": config.test_path}
    files: dict[str, list[Path]] = {}
    for split, raw in inputs.items():
        if raw is not None:
            key = "data.path" if split == "train" else f"data.{split}_path"
            try:
                files[split] = source_files(config.format, Path(raw))
            except DataError as exc:
                raise DataError(f"{key}: {exc}") from None
    config_hash = _config_hash(config)
    previous = _read_manifest(out)
    if previous and previous.get("config_hash") != config_hash:
        previous = None
    stat_cache = previous.get("stat_cache", {}) if previous else {}
    all_files = [f for fs in files.values() for f in fs]
    if previous and _reusable(out, previous, _cached_prints(all_files, stat_cache)):
        log(f"{out}: up to date (same config, same input files), reusing it")
        return _reused(out, previous)
    if config.format in _TEXT_FORMATS or (
        config.format is DataFormat.PARQUET and config.interactions is None
    ):
        return _ingest_streamed(config, files, out, previous, config_hash, stat_cache, log)
    tables, input_prints, stats = _read_inputs(config, files, stat_cache, log)
    if previous and _reusable(out, previous, input_prints):
        log(f"{out}: up to date (same config, same input bytes), reusing it")
        return _reused(out, previous)
    rejects = pl.concat([t.rejects for t in tables.values()])
    for table in tables.values():
        _check_rejects(table.rejects, table.lines, config.max_reject_ratio)
    roles, groups = tables["train"].roles, {}
    if config.interactions is not None:
        try:
            frame, roles, groups = split_interactions(tables["train"], config)
        except DataError as exc:  # name the log the split could not be made from
            raise DataError(f"{config.path}: {exc}") from None
    else:
        frame = _split(tables, config)
    rows = {
        name: int(n)
        for name, n in zip(SPLITS, np.bincount(frame[SPLIT].to_numpy(), minlength=3), strict=True)
    }
    log("split: " + ", ".join(f"{k} {v:,}" for k, v in rows.items()))
    if rows["train"] == 0:
        raise DataError(f"{config.path}: no usable training rows; check data.path and data.format")
    for split in ("valid", "test"):
        if split in files and rows[split] == 0 and config.interactions is None:
            raise DataError(
                f"data.{split}_path: no usable rows in {getattr(config, f'{split}_path')}; every "
                "line was rejected or the input is empty. Fix the input or point it at other files"
            )
    name = _name(config)
    source = {"format": config.format.value, "inputs": input_prints, "config_hash": config_hash}
    spec = fit_spec(
        frame,
        roles,
        config,
        name=name,
        source=source,
        splits=rows,
        train=pl.col(SPLIT) == 0,
    )
    if groups:
        spec = dataclasses.replace(spec, groups=groups)
    log(f"spec: {len(spec.features)} features")
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        # Serializing a large vocabulary (Python) overlaps with encoding (polars, no GIL).
        spec_json = pool.submit(spec.to_json)
        encoded = encode(frame, spec, keep=(SPLIT, ORDER) if groups else (SPLIT,))
        spec_text = spec_json.result()
    del frame
    if groups:  # a log: OOV users and items leave every split; rows sorted for the CSR lists
        encoded, rows = finish_interactions(encoded)
        spec = dataclasses.replace(spec, splits=rows)
        spec_text = spec.to_json()
        log("interactions kept: " + ", ".join(f"{k} {v:,}" for k, v in rows.items()))
    fingerprint = spec.fingerprint
    schema = arrow_schema(spec, fingerprint)
    log(f"encoded; spec fingerprint {fingerprint}")
    quality = _table_quality(tables, rows)
    with _publishing(out) as tmp:
        # Splits are written in parallel: polars and pyarrow release the GIL.
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            jobs = {
                split: pool.submit(_write_split, tmp, split, encoded, i, schema, config)
                for i, split in enumerate(SPLITS)
                if rows[split] or split in files
            }
            (tmp / SPEC_FILENAME).write_text(spec_text)  # what spec.save writes, serialized once
            shards = {split: job.result() for split, job in jobs.items()}
        _write_rejects(tmp / REJECTS, rejects)
        counts = {
            str(reason): int(n)
            for reason, n in rejects["reason"]
            .value_counts()
            .sort(["count", "reason"], descending=[True, False])
            .iter_rows()
        }
        manifest = {
            "ingest_version": INGEST_VERSION,
            "config_hash": config_hash,
            "config": _hashed_config(config),
            "inputs": input_prints,
            "rows": rows,
            "rejects": counts,
            "quality": quality,
            "spec_fingerprint": fingerprint,
            "shards": shards,
            "stat_cache": stats,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    log(f"wrote {out}")
    return IngestResult(
        output=out, spec=spec, rows=rows, rejects=counts, skipped=False, quality=quality
    )


def _ingest_streamed(
    config: DataConfig,
    files: dict[str, list[Path]],
    out: Path,
    previous: dict[str, Any] | None,
    config_hash: str,
    stat_cache: dict[str, Any],
    log: _Log,
) -> IngestResult:
    """Criteo and Avazu inputs (files, folders, globs; gzip or zstd) and CTR Parquet inputs
    (a file, a folder or a glob of files) streamed in two passes."""
    stats: dict[str, Any] = {}
    seen: list[list[dict[str, Any]]] = []

    def cached(path: Path, size: int, mtime_ns: int) -> str | None:
        stats[str(path)] = {"size": size, "mtime_ns": mtime_ns}
        old = stat_cache.get(str(path))
        if old and old.get("size") == size and old.get("mtime_ns") == mtime_ns:
            return old.get("sha256")
        return None

    def reuse(prints: list[dict[str, Any]]) -> bool:
        for entry in prints:
            stats[entry["path"]]["sha256"] = entry["sha256"]
        seen.append(prints)
        return previous is not None and _reusable(out, previous, prints)

    def source() -> dict[str, Any]:
        return {"format": config.format.value, "inputs": seen[0], "config_hash": config_hash}

    with _publishing(out) as tmp:
        streamed, prints = stream_inputs(
            config, files, tmp, name=_name(config), source=source, fingerprint=cached,
            reuse=reuse, log=log,
        )  # fmt: skip
        if streamed is None:
            raise _Reuse
        spec = streamed.spec
        (tmp / SPEC_FILENAME).write_text(spec.to_json())
        manifest = {
            "ingest_version": INGEST_VERSION,
            "config_hash": config_hash,
            "config": _hashed_config(config),
            "inputs": prints,
            "rows": streamed.rows,
            "rejects": streamed.rejects,
            "quality": streamed.quality,
            "spec_fingerprint": spec.fingerprint,
            "shards": streamed.shards,
            "stat_cache": stats,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    if streamed is None:
        assert previous is not None
        log(f"{out}: up to date (same config, same input bytes), reusing it")
        return _reused(out, previous)
    log(f"wrote {out}")
    return IngestResult(
        output=out, spec=spec, rows=streamed.rows, rejects=streamed.rejects, skipped=False,
        quality=streamed.quality,
    )  # fmt: skip


class _Reuse(Exception):
    """Raised inside `_publishing` to drop the temporary folder and keep the existing output."""


@contextlib.contextmanager
def _publishing(out: Path) -> Iterator[Path]:
    """A fresh temporary sibling of `out` to write into; renamed onto `out` when the block ends,
    removed on any error (a full or read-only disk is reported with `out`'s name). A killed
    earlier ingest's temporary sibling (its process gone) is removed first."""
    remove_stale_temporaries(out.parent, f".{out.name}.tmp-")
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        yield tmp
        _replace(tmp, out)
    except _Reuse:
        shutil.rmtree(tmp, ignore_errors=True)
    except OSError as exc:  # a full or read-only disk: name the output (pyarrow's error does not)
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.errno is not None and exc.filename is None:
            raise OSError(exc.errno, exc.strerror or str(exc), str(out)) from exc
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _name(config: DataConfig) -> str:
    if config.name:
        return config.name
    path = Path(config.path)
    return path.parent.name if glob.has_magic(config.path) else path.stem


def _table_quality(tables: dict[str, RawTable], rows: dict[str, int]) -> dict[str, Any]:
    """Lines and rejects per input (and per split where the splits are given)."""
    files, splits = [], {}
    for split, table in tables.items():
        bad = table.rejects.height
        # One entry per input: a MovieLens, Parquet or LightGCN folder counts as one.
        path = table.files[0] if len(table.files) == 1 else table.files[0].parent
        entry = {"path": str(path), "split": split, "lines": table.lines, "rejects": bad}
        files.append(entry | {"reject_ratio": bad / table.lines if table.lines else 0.0})
    for split, n in rows.items():
        splits[split] = {"rows": n}
        if "valid" in tables and split in tables:
            bad = tables[split].rejects.height
            lines = n + bad
            splits[split] |= {"lines": lines, "rejects": bad,
                              "reject_ratio": bad / lines if lines else 0.0}  # fmt: skip
    return {"files": files, "splits": splits}


class _Log:
    """Progress lines on stderr with wall and CPU seconds since the start."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.start, self.cpu = enabled, time.perf_counter(), time.process_time()

    def __call__(self, message: str) -> None:
        if self.enabled:
            wall, cpu = time.perf_counter() - self.start, time.process_time() - self.cpu
            print(f"[ingest {wall:6.2f}s, cpu {cpu:6.2f}s] {message}", file=sys.stderr)


def _read_inputs(
    config: DataConfig, files: dict[str, list[Path]], stat_cache: dict[str, Any], log: _Log
) -> tuple[dict[str, RawTable], list[dict[str, Any]], dict[str, Any]]:
    """Parse every split's input while the input files are fingerprinted in the background."""
    inputs = {"train": config.path, "valid": config.valid_path, "test": config.test_path}
    all_files = [f for fs in files.values() for f in fs]
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        # hashlib releases the GIL, and so does polars while it parses.
        fingerprints = pool.submit(_fingerprints, all_files, stat_cache)
        tables = {}
        for split in files:
            path = Path(inputs[split])  # type: ignore[arg-type]
            table = read_input(
                config.format, path, config.schema, interactions=config.interactions is not None
            )
            log(f"read {split}: {table.frame.height:,} rows, {table.rejects.height:,} rejects")
            tables[split] = table
        prints, stats = fingerprints.result()
    return tables, prints, stats


def _hashed_config(config: DataConfig) -> dict[str, Any]:
    data = to_dict(config)
    data.pop("output", None)  # where the result goes does not change its bytes
    data.pop("workers", None)  # nor how many workers made it
    if data.get("interactions") is None:
        data.pop("interactions", None)  # CTR configs keep the hash they had before logs
    if data["split"].get("folds", 0) < 2:  # and the hash they had before cross-validation
        data["split"].pop("folds", None)
        data["split"].pop("fold", None)
    return data


def _config_hash(config: DataConfig) -> str:
    text = json.dumps({"v": INGEST_VERSION, "config": _hashed_config(config)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _fingerprints(
    files: list[Path], stat_cache: dict[str, Any]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Path, size and SHA-256 of each file, plus the new stat cache.

    A file whose size and mtime match the previous manifest's stat cache is not re-read.
    """
    prints, stats = [], {}
    for file in files:
        stat = file.stat()
        key = str(file)
        stats[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        old = stat_cache.get(key)
        if old and {k: old.get(k) for k in ("size", "mtime_ns")} == stats[key] and "sha256" in old:
            digest_hex = old["sha256"]
        else:
            digest = hashlib.sha256()
            with file.open("rb") as fh:
                while chunk := fh.read(1 << 24):
                    digest.update(chunk)
            digest_hex = digest.hexdigest()
        stats[key]["sha256"] = digest_hex
        prints.append({"path": key, "size": stat.st_size, "sha256": digest_hex})
    return prints, stats


def _cached_prints(files: list[Path], stat_cache: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The fingerprints from the stat cache when no file's size or mtime changed, else None."""
    prints = []
    for file in files:
        stat, old = file.stat(), stat_cache.get(str(file))
        if not old or old.get("size") != stat.st_size or old.get("mtime_ns") != stat.st_mtime_ns:
            return None
        prints.append({"path": str(file), "size": stat.st_size, "sha256": old["sha256"]})
    return prints


def _reusable(out: Path, previous: dict[str, Any], prints: list[dict[str, Any]] | None) -> bool:
    return prints is not None and previous.get("inputs") == prints and _complete(out, previous)


def _reused(out: Path, previous: dict[str, Any]) -> IngestResult:
    return IngestResult(
        output=out, spec=FeatureSpec.load(out), rows=dict(previous["rows"]),
        rejects=dict(previous["rejects"]), skipped=True, quality=previous.get("quality", {}),
    )  # fmt: skip


def _read_manifest(out: Path) -> dict[str, Any] | None:
    try:
        return json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def _complete(out: Path, manifest: dict[str, Any]) -> bool:
    names = [
        f"{split}/{name}" for split, names in manifest.get("shards", {}).items() for name in names
    ]
    return (out / SPEC_FILENAME).is_file() and all((out / n).is_file() for n in names)


def _check_rejects(rejects: pl.DataFrame, lines: int, max_ratio: float) -> None:
    """One input's rejects against the ratio (each split's input on its own)."""
    if rejects.height == 0 or rejects.height <= max_ratio * max(lines, 1):
        return
    shown = "; ".join(
        f"{r['file']}:{r['line']} {r['reason']}" + (f" ({r['column']})" if r["column"] else "")
        for r in rejects.head(_SHOWN_REJECTS).iter_rows(named=True)
    )
    raise DataError(
        f"{rejects.height:,} of {lines:,} lines rejected ({rejects.height / max(lines, 1):.2%} > "
        f"data.max_reject_ratio {max_ratio:.2%}); first bad lines: {shown}. Fix the input or raise "
        "data.max_reject_ratio"
    )


def _split(tables: dict[str, RawTable], config: DataConfig) -> pl.DataFrame:
    """All rows with a `__split` column (0 train, 1 valid, 2 test).

    Given splits are kept as given. Otherwise a seeded SplitMix64 of each row's line number
    picks its split (stable when other lines change), or, by time, the latest rows are test and
    the ones before them valid (ties broken by line number).
    """
    if "valid" in tables:
        if config.split.cross_validation:
            raise ConfigError(
                f"data.split.folds: {config.format.value} inputs with given validation files "
                "cannot be drawn into folds (Criteo, Avazu and Parquet inputs can); drop "
                "data.valid_path / data.test_path or data.split.folds"
            )
        return pl.concat(
            [t.frame.drop(TIME, strict=False).with_columns(pl.lit(SPLITS.index(k), pl.Int8).alias(SPLIT))
             for k, t in tables.items()]
        )  # fmt: skip
    train = tables["train"]
    frame, cfg = train.frame, config.split
    if cfg.by == "time":
        if not train.has_time:
            raise ConfigError(
                f"data.split.by: 'time' needs a time column; {config.format.value} has none"
            )
        n = frame.height
        rank = (
            frame.select(pl.struct(TIME, LINE).rank("ordinal"))
            .to_series()
            .to_numpy()
            .astype(np.int64)
            - 1
        )
        n_test, n_valid = round(n * cfg.test), round(n * cfg.valid)
        which = np.where(
            rank >= n - n_test, 2, np.where(rank >= n - n_test - n_valid, 1, 0)
        ).astype(np.int8)
    else:
        which = seeded_split(frame[LINE].to_numpy().astype(np.uint64), config)
    return frame.drop(TIME, strict=False).with_columns(pl.Series(SPLIT, which))


def _write_split(
    root: Path, split: str, encoded: pl.DataFrame, index: int, schema: pa.Schema, config: DataConfig
) -> list[str]:
    frame = encoded.filter(pl.col(SPLIT) == index)
    folder = root / split
    folder.mkdir()
    names = []
    compression = None if config.compression == "none" else config.compression
    for i, start in enumerate(range(0, frame.height, config.rows_per_shard)):
        name = f"part-{i:05d}.parquet"
        table = to_arrow(frame.slice(start, config.rows_per_shard), schema)
        pq.write_table(table, folder / name, compression=compression)
        names.append(name)
    return names


def _write_rejects(path: Path, rejects: pl.DataFrame) -> None:
    with path.open("w") as fh:
        for row in rejects.iter_rows(named=True):
            fh.write(json.dumps(row, sort_keys=True) + "\n")


def _replace(tmp: Path, out: Path) -> None:
    """Move `tmp` to `out`, replacing an older `out` without a moment where a partial one exists."""
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)
