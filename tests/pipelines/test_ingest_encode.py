"""Encoding details: bucketize by lookup equals the formula; hashing multi-valued features;
vocabulary ids of a block's distinct values by hash, never wrong on a collision."""

from __future__ import annotations

import math

import polars as pl
from plexus.pipelines.ingest import DataConfig, DataFormat, ParquetSchema, encode, fit_spec
from plexus.platform.feature_spec import Encoding, FeatureKind
from plexus.platform.hashing import bucketize_ids, feature_seed, hash_strings


def _bucket(x: float) -> int:
    return math.floor(math.log(x) ** 2) if x > 2 else math.floor(max(x, 0.0))


def test_integer_lookup_matches_float_formula() -> None:
    values = [None, -7, -1, 0, 1, 2, 3, 4, 5, 7, 8, 20, 1_000, 2**20 - 1, 2**20, 2**20 + 5, 10**9]
    frame = pl.DataFrame(
        {"label": [0.0] * len(values), "n": values}, schema={"label": pl.Float32, "n": pl.Int64}
    )
    roles = ParquetSchema(label="label", numeric=("n",))
    cfg = DataConfig(format=DataFormat.CRITEO, path="unused")
    spec = fit_spec(frame, roles, cfg, name="t", source={}, splits={})
    assert spec["n"].cardinality == _bucket(10**9) + 2
    as_int = encode(frame, spec)["n"].to_list()
    as_float = encode(frame.with_columns(pl.col("n").cast(pl.Float64)), spec)["n"].to_list()
    assert as_int == as_float == [0] + [1 + _bucket(v) for v in values[1:]]
    # Training max 4 (bucket 1) still sees bucket 2 at x = 2: the cardinality covers it.
    small = frame.filter(pl.col("n").is_between(0, 4))
    small_spec = fit_spec(small, roles, cfg, name="t", source={}, splits={})
    assert small_spec["n"].cardinality == 4
    assert encode(frame, small_spec)["n"].max() == 3  # larger values clip into the last bucket


def test_multi_valued_hash_and_train_mask() -> None:
    frame = pl.DataFrame({
        "label": [1.0, 0.0, 1.0],
        "tags": [["a", "b"], [], None],
        "split": [0, 0, 1],
        "c": ["x", "y", "z"],
    })  # fmt: skip
    roles = ParquetSchema(label="label", categorical=("c",), multi_categorical=("tags",))
    cfg = DataConfig(format=DataFormat.CRITEO, path="unused", hash_buckets={"tags": 11})
    spec = fit_spec(frame, roles, cfg, name="t", source={}, splits={}, train=pl.col("split") == 0)
    assert spec["c"].vocabulary == ("x", "y")  # "z" is only in the non-training row
    assert (
        spec["tags"].encoding is Encoding.HASH
        and spec["tags"].kind is FeatureKind.MULTI_CATEGORICAL
    )
    out = encode(frame, spec)
    expected = bucketize_ids(hash_strings(["a", "b"]), feature_seed("tags"), 11).tolist()
    assert out["tags"].to_list() == [expected, [], []]
    assert out["c"].to_list() == [1, 2, 0]
