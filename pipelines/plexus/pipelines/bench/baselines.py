"""Non-neural baselines over the same ingested shards and features as the Plexus models.

The quality benchmark reports them beside every backbone, on exactly the same split and encoding:
the features are read back from the ingested Parquet shards with their feature spec, so a
baseline sees what the models see (vocabulary ids with id 0 = OOV, bucketized numerics as ids,
normalised numerics as floats, multi-valued features as bags).

* `fit_sklearn_lr`: one-hot (multi-hot for bags) logistic regression, scikit-learn, L2, its `C`
  chosen on validation AUC from a small grid. The OOV id 0 of a vocabulary feature with
  `min_count` 1 never occurs in training, so its weight stays 0 (the same as one-hot encoding
  with `handle_unknown="ignore"`).
* `item_popularity`: an item's training row count (unseen or OOV items score 0).
* `user_mean`: a user's mean training label, the global training mean for unseen users.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from plexus.pipelines.ingest import IngestResult
from plexus.pipelines.train.metrics import auc, logloss
from plexus.platform.errors import DataError
from plexus.platform.feature_spec import FeatureSpec
from scipy import sparse

C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
USER_COLUMNS = ("user_id",)
ITEM_COLUMNS = ("item_id", "movie_id")


@dataclasses.dataclass(frozen=True)
class Split:
    """One split as a design matrix: `x` (N, columns) CSR float32 and labels `y` (N,)."""

    x: sparse.csr_matrix
    y: np.ndarray
    ids: dict[str, np.ndarray]  # single-valued sparse features' ids (N,), for the predictors


def read_split(shards: Sequence[Path], spec: FeatureSpec, *, pooling: str = "sum") -> Split:
    """The one-hot design matrix of `shards`: one column per id of every sparse feature (in
    spec order, offset by the cardinalities before it), then one column per dense feature.

    A multi-valued feature puts 1 on each of its ids (`pooling: sum`, the embedding default) or
    1/len (`mean`), as the model's pooled first-order weight does.
    """
    if not shards:
        raise DataError("no shards to read: the split is empty; re-run `plexus ingest`")
    tables = [pq.read_table(p) for p in shards]
    labels = np.concatenate([t.column(spec.label).to_numpy() for t in tables]).astype(np.float32)
    n = labels.size
    offsets, offset = {}, 0
    for f in spec.sparse:
        offsets[f.name] = offset
        offset += f.cardinality
    rows, cols, vals = [], [], []
    ids: dict[str, np.ndarray] = {}
    for f in spec.sparse:
        column = [t.column(f.name).combine_chunks() for t in tables]
        if f.is_multi_valued:
            lengths = np.concatenate(
                [c.value_lengths().to_numpy(zero_copy_only=False) for c in column]
            )
            flat = np.concatenate([c.flatten().to_numpy() for c in column]).astype(np.int64)
            row = np.repeat(np.arange(n), lengths)
            weight = np.ones(flat.size, np.float32)
            if pooling == "mean":
                weight = (1.0 / np.maximum(lengths, 1))[row].astype(np.float32)
        else:
            flat = np.concatenate([c.to_numpy() for c in column]).astype(np.int64)
            ids[f.name] = flat
            row = np.arange(n)
            weight = np.ones(n, np.float32)
        rows.append(row)
        cols.append(flat + offsets[f.name])
        vals.append(weight)
    for j, f in enumerate(spec.dense):
        rows.append(np.arange(n))
        cols.append(np.full(n, offset + j))
        vals.append(
            np.concatenate([t.column(f.name).to_numpy() for t in tables]).astype(np.float32)
        )
    width = offset + len(spec.dense)
    x = sparse.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, width)
    )
    x.sum_duplicates()
    return Split(x=x, y=labels, ids=ids)


def fit_sklearn_lr(
    data: IngestResult, *, pooling: str = "sum", grid: Sequence[float] = C_GRID
) -> dict[str, float]:
    """L2 logistic regression on the one-hot features, `C` chosen on validation AUC.

    Returns valid/test AUC and logloss of the chosen `C`, the `C` itself and the fit seconds.
    """
    from sklearn.linear_model import LogisticRegression

    splits = {
        s: read_split(data.shards(s), data.spec, pooling=pooling)
        for s in ("train", "valid", "test")
    }
    train, valid, test = splits["train"], splits["valid"], splits["test"]
    best: tuple[float, float, object] | None = None
    started = time.perf_counter()
    for c in grid:
        model = LogisticRegression(C=c, max_iter=2000, tol=1e-6)
        model.fit(train.x, train.y)
        score = auc(valid.y, model.predict_proba(valid.x)[:, 1])
        if best is None or score > best[0]:
            best = (score, c, model)
    assert best is not None
    _, c, model = best
    p_valid = model.predict_proba(valid.x)[:, 1]  # type: ignore[attr-defined]
    p_test = model.predict_proba(test.x)[:, 1]  # type: ignore[attr-defined]
    return {
        "valid_auc": auc(valid.y, p_valid),
        "valid_logloss": logloss(valid.y, p_valid),
        "test_auc": auc(test.y, p_test),
        "test_logloss": logloss(test.y, p_test),
        "C": float(c),
        "seconds": time.perf_counter() - started,
    }


def column_of(spec: FeatureSpec, candidates: Sequence[str]) -> str | None:
    """The first of `candidates` that is a single-valued sparse feature of `spec`, else None."""
    names = {f.name for f in spec.sparse if not f.is_multi_valued}
    return next((c for c in candidates if c in names), None)


def item_popularity(train_items: np.ndarray, items: np.ndarray, cardinality: int) -> np.ndarray:
    """Each row's item's training row count; id 0 (OOV: unseen or too rare) scores 0. (N,)"""
    counts = np.bincount(train_items, minlength=cardinality).astype(np.float64)
    counts[0] = 0.0
    return counts[items]


def user_mean(
    train_users: np.ndarray, train_labels: np.ndarray, users: np.ndarray, cardinality: int
) -> np.ndarray:
    """Each row's user's mean training label; users without training rows and the OOV id 0 get
    the global training mean. (N,)"""
    counts = np.bincount(train_users, minlength=cardinality).astype(np.float64)
    sums = np.bincount(train_users, weights=train_labels, minlength=cardinality)
    means = np.full(cardinality, float(train_labels.mean()))
    seen = counts > 0
    means[seen] = sums[seen] / counts[seen]
    means[0] = float(train_labels.mean())
    return means[users]


def predictor_baselines(data: IngestResult) -> dict[str, dict[str, float]]:
    """Item-popularity and user-mean predictors where the data has an item / user id feature.

    Popularity has no calibrated probability, so its logloss is not reported (NaN)."""
    spec = data.spec
    train = read_split(data.shards("train"), spec)
    rows: dict[str, dict[str, float]] = {}
    item, user = column_of(spec, ITEM_COLUMNS), column_of(spec, USER_COLUMNS)
    evaluated = {s: read_split(data.shards(s), spec) for s in ("valid", "test")}
    if item is not None:
        card = spec[item].cardinality
        rows["item_popularity"] = {
            f"{s}_{m}": v
            for s, split in evaluated.items()
            for m, v in (
                ("auc", auc(split.y, item_popularity(train.ids[item], split.ids[item], card))),
                ("logloss", float("nan")),
            )
        }
    if user is not None:
        card = spec[user].cardinality
        rows["user_mean"] = {}
        for s, split in evaluated.items():
            p = user_mean(train.ids[user], train.y, split.ids[user], card)
            rows["user_mean"][f"{s}_auc"] = auc(split.y, p)
            rows["user_mean"][f"{s}_logloss"] = logloss(split.y, p)
    return rows
