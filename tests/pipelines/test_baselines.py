"""The quality benchmark's baselines: exact predictors on tiny tables, sklearn LR on planted data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from plexus.pipelines.bench import baselines
from plexus.pipelines.bench.quality import summarise, wide_table
from plexus.pipelines.data.synth import synth_criteo
from plexus.pipelines.ingest import DataConfig, DataFormat, ParquetSchema, ingest


def test_item_popularity_is_the_training_count_and_oov_scores_zero() -> None:
    train_items = np.array([1, 1, 1, 2, 3, 3])
    scores = baselines.item_popularity(train_items, np.array([3, 1, 2, 0, 4]), cardinality=5)
    assert scores.tolist() == [2.0, 3.0, 1.0, 0.0, 0.0]


def test_user_mean_is_the_training_mean_and_unseen_users_get_the_global_mean() -> None:
    users = np.array([1, 1, 2, 2, 2, 3])
    labels = np.array([1.0, 0.0, 1.0, 1.0, 1.0, 0.0])
    scores = baselines.user_mean(users, labels, np.array([1, 2, 3, 4, 0]), cardinality=5)
    assert scores.tolist() == pytest.approx([0.5, 1.0, 0.0, 4 / 6, 4 / 6])


def _parquet_input(tmp: Path) -> DataConfig:
    """A tiny user/item table where items carry the signal: item i (drawn with probability
    proportional to i, so popular items click more) clicks with p = i / 10."""
    rng = np.random.default_rng(0)
    n = 4000
    users = rng.integers(1, 50, n)
    items = rng.choice(np.arange(1, 10), n, p=np.arange(1, 10) / 45)
    labels = (rng.random(n) < items / 10).astype(np.float32)
    genres = [["a", "b"] if i % 2 else ["c"] for i in items]
    path = tmp / "table.parquet"
    pl.DataFrame(
        {
            "label": labels,
            "user_id": users.astype(str),
            "item_id": items.astype(str),
            "genres": genres,
        }
    ).write_parquet(path)
    schema = ParquetSchema(
        label="label", categorical=("user_id", "item_id"), multi_categorical=("genres",)
    )
    return DataConfig(format=DataFormat.PARQUET, path=str(path), schema=schema)


def test_one_hot_matrix_has_one_column_per_id_and_bags_sum_or_average(tmp_path: Path) -> None:
    data = ingest(_parquet_input(tmp_path), output=tmp_path / "data", progress=False)
    spec = data.spec
    width = sum(f.cardinality for f in spec.sparse)
    summed = baselines.read_split(data.shards("train"), spec)
    assert summed.x.shape == (data.rows["train"], width)
    # one 1 per single-valued feature, one per genre of the bag
    bag = np.array(
        [2 if int(spec["item_id"].vocabulary[i - 1]) % 2 else 1 for i in summed.ids["item_id"]]
    )
    assert np.array_equal(np.asarray(summed.x.sum(axis=1)).ravel(), 2 + bag)
    averaged = baselines.read_split(data.shards("train"), spec, pooling="mean")
    assert np.allclose(np.asarray(averaged.x.sum(axis=1)).ravel(), 3.0)


def test_predictors_find_the_planted_item_signal(tmp_path: Path) -> None:
    data = ingest(_parquet_input(tmp_path), output=tmp_path / "data", progress=False)
    rows = baselines.predictor_baselines(data)
    assert rows["item_popularity"]["test_auc"] > 0.6
    assert rows["user_mean"]["test_auc"] < 0.6  # users carry no signal
    fitted = baselines.fit_sklearn_lr(data, grid=(0.1, 1.0))
    assert fitted["test_auc"] > 0.7  # the item effect (the Bayes rule reaches ~0.74 here)
    assert fitted["C"] in (0.1, 1.0)


def test_sklearn_lr_on_planted_criteo_beats_chance(tmp_path: Path) -> None:
    raw = synth_criteo(tmp_path / "criteo.tsv", rows=6000, seed=3)
    config = DataConfig(format=DataFormat.CRITEO, path=str(raw), min_count=2)
    data = ingest(config, output=tmp_path / "data", progress=False)
    fitted = baselines.fit_sklearn_lr(data, grid=(0.1, 1.0))
    assert fitted["test_auc"] > 0.65, fitted
    assert 0 < fitted["test_logloss"] < 0.69


def test_wide_table_puts_baselines_first_with_seed_spread() -> None:
    rows = [
        {"dataset": "criteo", "model": "deepfm", "seed": s, "test_auc": a, "test_logloss": 0.5,
         "valid_auc": a}
        for s, a in enumerate((0.70, 0.72))
    ] + [{"dataset": "criteo", "model": "sklearn_lr", "seed": -1, "test_auc": 0.71,
          "test_logloss": 0.5, "valid_auc": 0.7}]  # fmt: skip
    table = wide_table(summarise(rows))
    assert table.splitlines()[0] == "| dataset (test AUC) | sklearn_lr | deepfm |"
    assert "| 0.7100 | 0.7100 ± 0.0141 |" in table
