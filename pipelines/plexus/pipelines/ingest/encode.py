"""Fit a FeatureSpec on the training split and encode any split with it.

Categorical and multi-valued features get a vocabulary (values seen >= `min_count` times in
training, most frequent first, ties by value; id 0 = OOV/missing) or, when listed in
`hash_buckets`, a stable hash into N buckets. Numeric features are bucketized
(`floor(log(x)^2)`, the Criteo-winning transform) or normalized with training mean/std. The id
conventions are those of `plexus.platform.feature_spec`. All work is vectorized polars.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Collection, Mapping
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
from plexus.pipelines.ingest.config import DataConfig, ParquetSchema
from plexus.platform.errors import ConfigError
from plexus.platform.feature_spec import Encoding, Feature, FeatureKind, FeatureSpec
from plexus.platform.hashing import bucketize_ids, feature_seed, hash_strings

LABEL = "label"


def fit_spec(
    frame: pl.DataFrame | pl.LazyFrame,
    roles: ParquetSchema,
    config: DataConfig,
    *,
    name: str,
    source: Mapping[str, Any],
    splits: Mapping[str, int],
    train: pl.Expr | None = None,
) -> FeatureSpec:
    """Learn every feature's encoding from the training rows only (no valid/test leakage).

    `train` selects the training rows of `frame` (default: all rows); the rows are never
    copied out, every statistic is a masked aggregation.
    """
    lazy = frame.lazy()
    where = pl.lit(True) if train is None else train
    cols = vocab_columns(roles, config)
    queries = []
    for col in cols:
        rows = lazy.select(pl.col(col).filter(where).alias("v"))
        if col in roles.multi_categorical:
            rows = rows.explode("v")
        queries.append(rank_vocabulary(rows.group_by("v").agg(pl.len().alias("n")), config))
    vocabs = {
        col: tuple(found.to_series().to_list())
        for col, found in zip(cols, pl.collect_all(queries), strict=True)
    }
    lengths = {
        col: int(lazy.select(pl.col(col).list.len().filter(where).max()).collect().item() or 1)
        for col in roles.multi_categorical
    }
    return build_spec(
        roles, config, vocabs=vocabs, numeric=_numeric_stats(lazy, where, roles.numeric, config.numeric),
        max_lengths=lengths, name=name, source=source, splits=splits,
    )  # fmt: skip


def vocab_columns(roles: ParquetSchema, config: DataConfig) -> list[str]:
    """The categorical columns that get a vocabulary (not hashed); ConfigError for a
    `data.hash_buckets` key that is no categorical feature."""
    unknown = sorted(
        set(config.hash_buckets) - set(roles.categorical) - set(roles.multi_categorical)
    )
    if unknown:
        valid = ", ".join((*roles.categorical, *roles.multi_categorical))
        raise ConfigError(
            f"data.hash_buckets.{unknown[0]}: not a categorical feature of this dataset; valid: {valid}"
        )
    return [
        c for c in (*roles.categorical, *roles.multi_categorical) if c not in config.hash_buckets
    ]


def rank_vocabulary(
    counts: pl.LazyFrame, config: DataConfig, *, keep: tuple[str, ...] = ()
) -> pl.LazyFrame:
    """Values `v` with training counts `n` -> the vocabulary in id order: seen >= min_count times,
    most frequent first, ties by value (with the `keep` columns). Counts merged from blocks give
    the same vocabulary."""
    return (
        counts.filter(
            pl.col("v").is_not_null() & (pl.col("v") != "") & (pl.col("n") >= config.min_count)
        )
        .sort(["n", "v"], descending=[True, False])
        .select("v", *keep)
    )


def numeric_features(
    cols: tuple[str, ...],
    mode: str,
    *,
    maxima: Mapping[str, float | None] | None = None,
    moments: Mapping[str, tuple[int, float, float]] | None = None,
) -> dict[str, Feature]:
    """Numeric features from merged training statistics: the largest value of each column
    (`bucketize`) or its (count, mean, sum of squared deviations) (`normalize`)."""
    if mode == "bucketize":
        top = pl.DataFrame(
            {c: [(maxima or {}).get(c)] for c in cols}, schema={c: pl.Float64 for c in cols}
        )
        return _numeric_stats(top.lazy(), pl.lit(True), cols, mode)
    out = {}
    for c in cols:
        n, mean, m2 = (moments or {}).get(c, (0, 0.0, 0.0))
        std = math.sqrt(m2 / (n - 1)) if n > 1 else None
        out[c] = _normalized(c, mean if n else None, std)
    return out


def build_spec(
    roles: ParquetSchema,
    config: DataConfig,
    *,
    vocabs: Mapping[str, tuple[str, ...]],
    numeric: Mapping[str, Feature],
    max_lengths: Mapping[str, int],
    name: str,
    source: Mapping[str, Any],
    splits: Mapping[str, int],
) -> FeatureSpec:
    """The spec from fitted statistics (vocabularies, numeric features, list lengths)."""
    features: list[Feature] = []
    for col in roles.features:
        if col in roles.numeric:
            features.append(numeric[col])
            continue
        multi = col in roles.multi_categorical
        kind = FeatureKind.MULTI_CATEGORICAL if multi else FeatureKind.CATEGORICAL
        max_length = max_lengths.get(col, 1) if multi else 1
        if col in config.hash_buckets:
            features.append(
                Feature(
                    name=col,
                    kind=kind,
                    encoding=Encoding.HASH,
                    cardinality=config.hash_buckets[col],
                    seed=feature_seed(col),
                    max_length=max_length,
                )  # fmt: skip
            )
        else:
            vocab = vocabs[col]
            features.append(
                Feature(
                    name=col,
                    kind=kind,
                    encoding=Encoding.VOCAB,
                    cardinality=len(vocab) + 1,
                    vocabulary=vocab,
                    min_count=config.min_count,
                    max_length=max_length,
                )  # fmt: skip
            )
    return FeatureSpec(
        name=name, label=LABEL, features=tuple(features), source=dict(source), splits=dict(splits)
    )


def _bucket(x: pl.Expr) -> pl.Expr:
    """floor(log(x)^2) for x > 2, else floor(max(x, 0)): the Criteo numeric transform (int64)."""
    xf = x.cast(pl.Float64)
    small = xf.clip(lower_bound=0).floor()
    return pl.when(xf > 2).then((xf.log() ** 2).floor()).otherwise(small).cast(pl.Int64)


_LUT_SIZE = 1 << 20


@functools.cache
def _bucket_lut() -> pl.Series:
    """`_bucket(x)` for integers x in [-1, 2^20): entry x + 1. Encoding by lookup is ~2x cheaper."""
    xs = pl.DataFrame({"x": np.arange(-1, _LUT_SIZE, dtype=np.int64)})
    return xs.select(_bucket(pl.col("x"))).to_series()


def _numeric_stats(
    frame: pl.LazyFrame, where: pl.Expr, cols: tuple[str, ...], mode: str
) -> dict[str, Feature]:
    if not cols:
        return {}
    if mode == "bucketize":
        # The bucket grows with x on (-inf, 2] and on (2, inf), so the largest training bucket
        # is that of the largest x or of min(largest x, 2).
        top = frame.select([pl.col(c).cast(pl.Float64).filter(where).max() for c in cols]).collect()
        probe = pl.concat([top, top.select(pl.all().clip(upper_bound=2.0))])
        row = probe.select([_bucket(pl.col(c)).max() for c in cols]).row(0, named=True)
        return {
            c: Feature(
                name=c,
                kind=FeatureKind.NUMERIC,
                encoding=Encoding.BUCKETIZE,
                cardinality=int(row[c] or 0) + 2,
            )  # fmt: skip
            for c in cols
        }
    stats = (
        frame.select(
            [pl.col(c).cast(pl.Float64).filter(where).mean().alias(f"m_{c}") for c in cols]
            + [pl.col(c).cast(pl.Float64).filter(where).std().alias(f"s_{c}") for c in cols]
        )
        .collect()
        .row(0, named=True)
    )
    return {c: _normalized(c, stats[f"m_{c}"], stats[f"s_{c}"]) for c in cols}


def _normalized(col: str, mean: float | None, std: float | None) -> Feature:
    mean = 0.0 if mean is None or not math.isfinite(mean) else float(mean)
    std = 1.0 if std is None or not math.isfinite(std) or std <= 0 else float(std)
    return Feature(
        name=col, kind=FeatureKind.NUMERIC, encoding=Encoding.NORMALIZE, mean=mean, std=std
    )


def _feature_expr(frame: pl.DataFrame, f: Feature) -> pl.Expr:
    col = pl.col(f.name)
    if f.encoding is Encoding.BUCKETIZE:
        lut = _bucket_lut()
        if frame.schema[f.name].is_integer() and f.cardinality - 2 <= lut[-1]:
            bucket = pl.lit(lut).gather(col.cast(pl.Int64).clip(-1, _LUT_SIZE - 1) + 1)
        else:
            bucket = _bucket(col).fill_nan(None)
        return (
            (1 + bucket.clip(upper_bound=f.cardinality - 2))
            .fill_null(0)
            .cast(pl.Int64)
            .alias(f.name)
        )
    if f.encoding is Encoding.NORMALIZE:
        x = col.cast(pl.Float64)
        return ((x - f.mean) / f.std).fill_nan(None).fill_null(0.0).cast(pl.Float32).alias(f.name)
    if f.encoding is Encoding.VOCAB:
        # An Enum over the vocabulary: its physical code + 1 is the id; unknown values -> null -> 0.
        enum = pl.Enum(list(f.vocabulary))
        if f.is_multi_valued:
            mapped = (
                pl.element().cast(enum, strict=False).to_physical().cast(pl.Int64) + 1
            ).fill_null(0)
            return col.list.eval(mapped).fill_null(pl.lit([], pl.List(pl.Int64))).alias(f.name)
        return (
            (col.cast(enum, strict=False).to_physical().cast(pl.Int64) + 1)
            .fill_null(0)
            .alias(f.name)
        )
    else:
        values = col.explode() if f.is_multi_valued else col
        keys = frame.select(values.drop_nulls().unique(maintain_order=True)).to_series().sort()
        ids = pl.Series(bucketize_ids(hash_strings(keys.to_list()), f.seed, f.cardinality))
        default = int(bucketize_ids(hash_strings([""]), f.seed, f.cardinality)[0])
    if f.is_multi_valued:
        mapped = pl.element().replace_strict(keys, ids, default=default, return_dtype=pl.Int64)
        return col.list.eval(mapped).fill_null(pl.lit([], pl.List(pl.Int64))).alias(f.name)
    return (
        col.replace_strict(keys, ids, default=default, return_dtype=pl.Int64)
        .fill_null(default)
        .alias(f.name)
    )


def arrow_schema(spec: FeatureSpec, fingerprint: str | None = None) -> pa.Schema:
    """The Arrow schema of encoded shards: label float32, then one column per feature.

    `fingerprint` (the spec's, stored as schema metadata) is computed when not given.
    """
    fields = [pa.field(LABEL, pa.float32(), nullable=False)]
    for f in spec.features:
        if not f.is_sparse:
            typ = pa.float32()
        elif f.is_multi_valued:
            typ = pa.list_(pa.int64())
        else:
            typ = pa.int64()
        fields.append(pa.field(f.name, typ, nullable=False))
    return pa.schema(fields, metadata={"plexus.feature_spec": fingerprint or spec.fingerprint})


def encode(
    frame: pl.DataFrame,
    spec: FeatureSpec,
    *,
    keep: tuple[str, ...] = (),
    encoded: Collection[str] = (),
) -> pl.DataFrame:
    """Encode raw rows `(B, ...)` into `(B, 1 + F)` columns with the spec's ids (+ `keep` columns).

    `encoded`: features whose columns already hold their ids (Int64), taken as they are.
    """
    exprs = [pl.col(LABEL).cast(pl.Float32)] + [
        pl.col(f.name) if f.name in encoded else _feature_expr(frame, f) for f in spec.features
    ]
    return frame.select(*exprs, *keep)


def to_arrow(encoded: pl.DataFrame, schema: pa.Schema) -> pa.Table:
    """The encoded frame as an Arrow table with the shard schema (`list<int64>`, not nullable).

    Columns already of the right type are reused as they are (no copy); polars' large lists
    are cast to lists.
    """
    table = encoded.select(schema.names).to_arrow()
    columns = [
        col if col.type == field.type else col.cast(field.type)
        for col, field in zip(table.columns, schema, strict=True)
    ]
    return pa.Table.from_arrays(columns, schema=schema)
