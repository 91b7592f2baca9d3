"""One reader per input format, each returning a RawTable: typed raw columns plus rejects.

A RawTable's frame holds `label` (float32 in {0, 1}), the feature columns in spec order
(numeric as numbers, categorical as strings, multi-valued as list[str]), `__line` (1-based
source line) and, where the data has time, `__time` (int64, for time splits).
"""

from __future__ import annotations

import dataclasses
import glob
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
from plexus.pipelines.ingest.config import DataFormat, ParquetSchema
from plexus.pipelines.ingest.delimited import LINE, Column, empty_rejects, read_delimited
from plexus.platform.errors import DataError

TIME = "__time"
CRITEO_NUMERIC = tuple(f"I{i}" for i in range(1, 14))
CRITEO_CATEGORICAL = tuple(f"C{i}" for i in range(1, 27))
AVAZU_COLUMNS = (
    "id", "click", "hour", "C1", "banner_pos", "site_id", "site_domain", "site_category", "app_id",
    "app_domain", "app_category", "device_id", "device_ip", "device_model", "device_type",
    "device_conn_type", "C14", "C15", "C16", "C17", "C18", "C19", "C20", "C21",
)  # fmt: skip
_BINARY = (pl.col("label").is_in([0, 1]), "bad_label")


@dataclasses.dataclass(frozen=True)
class RawTable:
    """Parsed rows of one input (before splitting and encoding) and the lines set aside."""

    frame: pl.DataFrame
    roles: ParquetSchema
    rejects: pl.DataFrame
    lines: int
    files: tuple[Path, ...]

    @property
    def has_time(self) -> bool:
        return TIME in self.frame.columns


def source_files(fmt: DataFormat, path: Path) -> list[Path]:
    """The files a reader will open for `path` (for fingerprints); DataError if none exist."""
    if fmt is DataFormat.MOVIELENS:
        from plexus.pipelines.ingest.movielens import movielens_files

        return movielens_files(path)
    if fmt is DataFormat.LIGHTGCN:
        from plexus.pipelines.ingest.interactions import lightgcn_files

        return lightgcn_files(path)
    if fmt is DataFormat.PARQUET and path.is_dir():
        files = sorted(path.glob("*.parquet"))
        if not files:
            raise DataError(f"no *.parquet files in folder {path}")
        return files
    if fmt is DataFormat.PARQUET and not path.exists() and glob.has_magic(str(path)):
        return _text_files(path)
    if fmt in (DataFormat.CRITEO, DataFormat.AVAZU):
        return _text_files(path)
    if not path.is_file():
        raise DataError(f"input file not found: {path}")
    return [path]


@dataclasses.dataclass(frozen=True)
class TextFormat:
    """A delimited text layout: its fields, separator, header rule and the typed frame it gives."""

    columns: tuple[Column, ...]
    separator: str
    header: bool | None
    roles: ParquetSchema
    finish: Callable[[pl.DataFrame], pl.DataFrame]  # parsed fields -> label, features, __line..


def _criteo_finish(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.with_columns(pl.col("label").cast(pl.Float32))


def _avazu_finish(frame: pl.DataFrame) -> pl.DataFrame:
    hour = pl.col("hour")
    day = pl.date(2000 + hour // 1_000_000, hour // 10_000 % 100, hour // 100 % 100)
    return frame.select(
        pl.col("click").cast(pl.Float32).alias("label"),
        (hour % 100).cast(pl.String).alias("hour_of_day"),
        day.dt.weekday().cast(pl.String).alias("weekday"),
        *AVAZU_COLUMNS[3:],
        LINE,
        hour.alias(TIME),
    )


def text_format(fmt: DataFormat) -> TextFormat:
    """The layout of a delimited text format (Criteo, Avazu), as the streaming ingest reads it.

    Criteo: label, I1..I13 (integers), C1..C26 (hex strings); no header. Avazu: 24 CSV columns,
    header optional and detected; `hour` (YYMMDDHH) becomes the time, hour of day and weekday
    are derived from it, every column but id/click/hour is a categorical string.
    """
    if fmt is DataFormat.CRITEO:
        columns = [Column("label", "int", required=True, check=_BINARY, bad="bad_label")]
        columns += [Column(c, "int") for c in CRITEO_NUMERIC]
        columns += [Column(c, "str") for c in CRITEO_CATEGORICAL]
        roles = ParquetSchema(label="label", numeric=CRITEO_NUMERIC, categorical=CRITEO_CATEGORICAL)
        return TextFormat(tuple(columns), "\t", False, roles, _criteo_finish)
    if fmt is DataFormat.AVAZU:
        hour_ok = (
            pl.col("hour").is_between(0, 99_12_31_23) & (pl.col("hour") % 100 < 24),
            "bad_hour",
        )
        click_ok = (pl.col("click").is_in([0, 1]), "bad_label")
        columns = [
            Column("id"),
            Column("click", "int", required=True, check=click_ok, bad="bad_label"),
            Column("hour", "int", required=True, check=hour_ok, bad="bad_hour"),
        ] + [Column(c) for c in AVAZU_COLUMNS[3:]]
        roles = ParquetSchema(
            label="label", categorical=("hour_of_day", "weekday", *AVAZU_COLUMNS[3:])
        )
        return TextFormat(tuple(columns), ",", None, roles, _avazu_finish)
    raise ValueError(f"{fmt.value} is not a delimited text format")


def parse_text(
    fmt: DataFormat, path: Path, *, data: bytes | None = None, line_offset: int = 0
) -> RawTable:
    """Parse one file of a text format, or one block of it (`data`, after `line_offset` lines;
    a header is looked for only at the start of a file)."""
    layout = text_format(fmt)
    header = layout.header if line_offset == 0 else False
    parsed = read_delimited(
        path, layout.columns, separator=layout.separator, header=header, data=data,
        line_offset=line_offset,
    )  # fmt: skip
    return RawTable(
        frame=layout.finish(parsed.frame), roles=layout.roles, rejects=parsed.rejects,
        lines=parsed.lines, files=(path,),
    )  # fmt: skip


def _text_files(path: Path) -> list[Path]:
    """A file, a folder's files (a day or a shard per file; not `.hidden` or `_SUCCESS`) or a
    glob's matches, sorted."""
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.name[:1] not in "._")
        if not files:
            raise DataError(f"no input files in folder {path}; put the data files there")
        return files
    if glob.has_magic(str(path)):
        files = sorted(Path(p) for p in glob.glob(str(path)) if Path(p).is_file())
        if not files:
            raise DataError(f"no files match {path}; check the pattern")
        return files
    raise DataError(f"input file not found: {path}")


def read_criteo(path: Path, *, data: bytes | None = None) -> RawTable:
    """Criteo display-ads TSV: label, I1..I13 (integers), C1..C26 (hex strings); no header."""
    return parse_text(DataFormat.CRITEO, path, data=data)


def read_avazu(path: Path, *, data: bytes | None = None) -> RawTable:
    """Avazu CSV (24 columns, header optional and detected); `hour` (YYMMDDHH) becomes the time.

    Features: hour of day and weekday derived from `hour`, then every column but id/click/hour
    as a categorical string.
    """
    return parse_text(DataFormat.AVAZU, path, data=data)


def parquet_columns(schema: ParquetSchema) -> list[str]:
    """The declared columns a Parquet reader reads (the others are never decoded)."""
    return [schema.label, *schema.features] + ([schema.time] if schema.time else [])


def read_parquet(path: Path, schema: ParquetSchema, *, binary: bool = True) -> RawTable:
    """Parquet file(s) with declared column roles, read whole (interaction logs; CTR inputs are
    streamed batch by batch by `ingest.stream` through `parse_parquet`, which this reuses).

    Line numbers are 1-based row numbers within each file.
    """
    from plexus.pipelines.ingest.blocks import read_parquet_blocks

    files = source_files(DataFormat.PARQUET, path)
    tables = [
        parse_parquet(schema, Path(b.file), b.data, line_offset=b.line_offset, binary=binary)
        for b in read_parquet_blocks(
            [("train", f) for f in files], False, lambda *_: "", [], parquet_columns(schema)
        )
    ]
    roles = _parquet_roles(schema)
    if not tables:
        empty = _cast_parquet(files[0], pl.DataFrame(schema={LINE: pl.Int64}), schema, check=False)
        return RawTable(empty, roles, empty_rejects(), 0, tuple(files))
    return RawTable(
        frame=pl.concat([t.frame for t in tables]),
        roles=roles,
        rejects=pl.concat([t.rejects for t in tables]),
        lines=sum(t.lines for t in tables),
        files=tuple(files),
    )


def _parquet_roles(schema: ParquetSchema) -> ParquetSchema:
    return ParquetSchema(
        label="label", numeric=schema.numeric, categorical=schema.categorical,
        multi_categorical=schema.multi_categorical,
    )  # fmt: skip


def parse_parquet(
    schema: ParquetSchema,
    file: Path,
    batch: Any,
    *,
    line_offset: int = 0,
    binary: bool = True,
) -> RawTable:
    """Rows of one Parquet batch (`line_offset` rows of `file` before it) with declared roles.

    A row is rejected, with its file and 1-based row number, when its label is not 0/1 (with
    `binary` false: not a number, e.g. an interaction log's rating; reason `bad_label`), or a
    numeric or time value does not parse as a number (`bad_float`, `bad_time`; e.g. a string
    column holding "n/a"). The first problem of a row wins; `raw` holds its declared columns.
    """
    try:
        frame = pl.from_arrow(batch)
    except (pl.exceptions.PolarsError, pa.ArrowException) as exc:
        raise DataError(f"{file}: rows {line_offset + 1:,}..: cannot convert: {exc}") from None
    assert isinstance(frame, pl.DataFrame)
    frame = frame.with_row_index(LINE, offset=line_offset + 1).with_columns(
        pl.col(LINE).cast(pl.Int64)
    )
    label = pl.col(schema.label).cast(pl.Float64, strict=False)
    checks = [
        ((label.is_in([0.0, 1.0]) if binary else label.is_not_nan()).fill_null(False),
         "bad_label", schema.label)
    ]  # fmt: skip
    numbers = [(c, pl.Float64, "bad_float") for c in schema.numeric]
    numbers += [(schema.time, pl.Int64, "bad_time")] if schema.time else []
    for col, dtype, reason in numbers:
        value = pl.col(col)
        checks.append(
            (value.is_null() | value.cast(dtype, strict=False).is_not_null(), reason, col)
        )
    try:
        judged = frame.with_columns(
            pl.all_horizontal(ok for ok, _, _ in checks).alias("__ok"),
            pl.coalesce(pl.when(~ok).then(pl.lit(reason)) for ok, reason, _ in checks).alias(
                "__reason"
            ),
            pl.coalesce(pl.when(~ok).then(pl.lit(col)) for ok, _, col in checks).alias("__column"),
        )
    except pl.exceptions.PolarsError as exc:
        raise DataError(f"{file}: a declared column has the wrong type: {exc}") from None
    good = judged.filter(pl.col("__ok"))
    bad = judged.filter(~pl.col("__ok"))
    rejects = empty_rejects()
    if bad.height:
        shown = bad.drop(LINE, "__ok", "__reason", "__column")
        rejects = bad.select(
            pl.lit(str(file)).alias("file"),
            pl.col(LINE).alias("line"),
            pl.col("__reason").alias("reason"),
            pl.col("__column").alias("column"),
            pl.Series("raw", [json.dumps(r, default=str) for r in shown.to_dicts()], pl.String),
        )
    frame = _cast_parquet(file, good.drop("__ok", "__reason", "__column"), schema)
    return RawTable(frame, _parquet_roles(schema), rejects, frame.height + rejects.height, (file,))


def _cast_parquet(
    file: Path, frame: pl.DataFrame, schema: ParquetSchema, *, check: bool = True
) -> pl.DataFrame:
    if not check:  # an empty input: the typed columns, no rows
        frame = frame.with_columns(
            [pl.lit(None).alias(c) for c in parquet_columns(schema) if c not in frame.columns]
        )
    exprs = [pl.col(schema.label).cast(pl.Float32).alias("label")]
    exprs += [pl.col(c).cast(pl.Float64) for c in schema.numeric]
    exprs += [pl.col(c).cast(pl.String) for c in schema.categorical]
    exprs += [pl.col(c).cast(pl.List(pl.String)) for c in schema.multi_categorical]
    exprs.append(pl.col(LINE))
    if schema.time:
        exprs.append(pl.col(schema.time).cast(pl.Int64).alias(TIME))
    try:
        return frame.select(exprs)
    except pl.exceptions.PolarsError as exc:
        raise DataError(f"{file}: a declared column has the wrong type: {exc}") from exc


def read_input(
    fmt: DataFormat,
    path: Path,
    schema: ParquetSchema | None = None,
    *,
    data: bytes | None = None,
    interactions: bool = False,
) -> RawTable:
    """Read one input (file, or folder for MovieLens/Parquet/LightGCN) in format `fmt`.

    `data`: the file's bytes when the caller has already read them (Criteo and Avazu).
    `interactions`: read a retrieval log (ratings kept as the label; see `ingest.interactions`).
    """
    if fmt is DataFormat.LIGHTGCN:
        from plexus.pipelines.ingest.interactions import read_lightgcn

        return read_lightgcn(path)
    if fmt is DataFormat.CRITEO:
        return read_criteo(path, data=data)
    if fmt is DataFormat.AVAZU:
        return read_avazu(path, data=data)
    if fmt is DataFormat.MOVIELENS:
        from plexus.pipelines.ingest.movielens import read_movielens

        return read_movielens(path, rating=interactions)
    assert schema is not None
    return read_parquet(path, schema, binary=not interactions)
