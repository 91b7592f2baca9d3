"""Cross-validation folds in the ingest: the test rows never move, the K validation folds are
disjoint and together are every other row (a given validation file's rows included), and the
usual split keeps its bytes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from plexus.pipelines.data.synth import synth_criteo
from plexus.pipelines.ingest import DataConfig, DataFormat, SplitConfig, ingest
from plexus.pipelines.ingest.job import _config_hash
from plexus.pipelines.ingest.stream import seeded_split
from plexus.platform.errors import ConfigError

FOLDS = 3


def _config(split: SplitConfig, **paths: str) -> DataConfig:
    return DataConfig(format=DataFormat.CRITEO, split=split, min_count=1, **paths)


@pytest.mark.parametrize("given", [None, 0, 1])
def test_folds_partition_the_rows_that_are_not_test(given: int | None) -> None:
    keys = np.arange(20_000, dtype=np.uint64) * np.uint64(7919)
    usual = seeded_split(keys, _config(SplitConfig(valid=0.1, test=0.2), path="x"), given)
    valid = []
    for fold in range(FOLDS):
        split = SplitConfig(test=0.2, folds=FOLDS, fold=fold)
        drawn = seeded_split(keys, _config(split, path="x"), given)
        test = usual == 2 if given is None else np.zeros(keys.size, bool)
        np.testing.assert_array_equal(drawn == 2, test)  # the test rows never move
        valid.append(drawn == 1)
        assert abs(valid[-1].sum() / (~test).sum() - 1 / FOLDS) < 0.02
    assert (np.sum(valid, axis=0) == (usual != 2 if given is None else 1)).all()


def test_given_test_file_stays_and_the_validation_file_joins_the_folds(tmp_path: Path) -> None:
    train = synth_criteo(tmp_path / "train.txt", rows=1_500, seed=1)
    dev = synth_criteo(tmp_path / "dev.txt", rows=300, seed=2)
    test = synth_criteo(tmp_path / "test.txt", rows=200, seed=3)
    paths = {"path": str(train), "valid_path": str(dev), "test_path": str(test)}
    usual = ingest(_config(SplitConfig(), **paths), output=tmp_path / "usual", progress=False)
    assert usual.rows == {"train": 1_500, "valid": 300, "test": 200}
    valid_rows = 0
    for fold in range(FOLDS):
        split = SplitConfig(folds=FOLDS, fold=fold)
        result = ingest(_config(split, **paths), output=tmp_path / f"f{fold}", progress=False)
        assert result.rows["test"] == 200
        assert result.rows["train"] + result.rows["valid"] == 1_800
        labels = pl.concat([pl.read_parquet(p) for p in result.shards("test")])["label"]
        usual_labels = pl.concat([pl.read_parquet(p) for p in usual.shards("test")])["label"]
        assert labels.equals(usual_labels)
        valid_rows += result.rows["valid"]
    assert valid_rows == 1_800


def test_the_usual_split_keeps_its_hash_and_bad_folds_name_the_key() -> None:
    plain = _config(SplitConfig(), path="x")
    assert _config_hash(plain) == _config_hash(_config(SplitConfig(folds=1), path="x"))
    assert _config_hash(plain) != _config_hash(_config(SplitConfig(folds=3), path="x"))
    with pytest.raises(ConfigError, match="data.split.fold"):
        SplitConfig(folds=3, fold=3)
    with pytest.raises(ConfigError, match="data.split.fold=1"):
        SplitConfig(fold=1)
    with pytest.raises(ConfigError, match="data.split.folds.*time"):
        SplitConfig(folds=3, by="time")
