"""What side features buy: the towers with and without them on the same ingested log, on its
test split and on cold items (a fraction of the trained items whose interactions are all held
out and whose id embedding is left out, so only their features can place them).

    python -m plexus.pipelines.retrieval.side_bench retrieval_movielens [key=value ...]

prints one JSON object: test Recall/NDCG@20 per model, then for the cold items the AUC of a
cold positive among the user's candidates, its hit rate at 20 among the cold items and its
full-ranking Recall@20, with the random expectations.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from plexus.models.retrieval.knn_embed import user_table
from plexus.pipelines.retrieval.config import RetrievalJobConfig, load_retrieval_config
from plexus.pipelines.retrieval.data import Interactions, _csr, ingest_interactions
from plexus.pipelines.retrieval.evaluate import csr_rows, evaluate_tower
from plexus.pipelines.retrieval.train import train_two_tower
from plexus.platform.errors import DataError

__all__ = ["cold_item_task", "cold_item_metrics", "side_bench"]


def cold_item_task(
    data: Interactions, *, fraction: float = 0.1, seed: int = 0
) -> tuple[Interactions, np.ndarray]:
    """`data` with `fraction` of its trained items (drawn with `seed`) made cold: their
    training rows leave the lists and become, with their test rows, the "test" lists; the
    side features mark them untrained (no id embedding). -> (task, held-out item ids)."""
    if data.side is None:
        raise DataError(f"{data.name}: no side features, so cold items have nothing to go by")
    rng = np.random.default_rng(seed)
    count = max(1, int(fraction * data.num_items))
    held = np.sort(rng.choice(np.arange(1, data.num_items + 1), count, replace=False))
    users = np.repeat(np.arange(data.num_users + 1), np.diff(data.train_indptr))
    test_users = np.repeat(np.arange(data.num_users + 1), np.diff(data.test_indptr))
    drop, test_drop = np.isin(data.train_items, held), np.isin(data.test_items, held)
    train = _csr(users[~drop], data.train_items[~drop], data.num_users)
    test = _csr(
        np.concatenate([users[drop], test_users[test_drop]]),
        np.concatenate([data.train_items[drop], data.test_items[test_drop]]),
        data.num_users,
    )
    task = dataclasses.replace(
        data,
        name=f"{data.name}-cold",
        train_indptr=train[0],
        train_items=train[1],
        test_indptr=test[0],
        test_items=test[1],
        valid_indptr=None,
        valid_items=None,
        side=data.side.with_unknown_items(torch.from_numpy(held)),
    )
    return task, held


@torch.no_grad()
def cold_item_metrics(model: Any, task: Interactions, held: np.ndarray) -> dict[str, float]:
    """AUC of each cold positive among the user's candidates (items not trained on), its hit
    rate at 20 among the cold items, and full-ranking Recall@20 / NDCG@20 (`evaluate_tower`)."""
    out = evaluate_tower(model, task, ks=(20,))
    users = np.nonzero(np.diff(task.test_indptr) > 0)[0]
    items = model.all_item_vectors()
    query = user_table(model, torch.from_numpy(task.model_histories(model.config)), users)
    scores = (query @ items.T).numpy()
    scores[:, 0] = -np.inf
    scores[csr_rows(task.train_indptr, task.train_items, users)] = -np.inf
    rows, positives = csr_rows(task.test_indptr, task.test_items, users)
    own = scores[rows, positives][:, None]
    candidates = np.isfinite(scores[rows]).sum(1) - 1
    out["auc"] = float(((scores[rows] < own).sum(1) / candidates).mean())
    out["cold_hit@20"] = float(((scores[rows][:, held] > own).sum(1) < 20).mean())
    return out


def side_bench(config: RetrievalJobConfig, *, fraction: float = 0.1) -> dict[str, Any]:
    """Both towers (ids only, ids + side features) on the test split and on the cold items."""
    with tempfile.TemporaryDirectory() as tmp:
        _, data = ingest_interactions(config.data, Path(tmp) / "shards", progress=False)
    task, held = cold_item_task(data, fraction=fraction)
    tested = np.nonzero(np.diff(task.test_indptr) > 0)[0]
    candidates = task.side.num_items - np.diff(task.train_indptr)[tested].mean()  # type: ignore[union-attr]
    result: dict[str, Any] = {
        "users": data.num_users,
        "items": data.num_items,
        "catalog_items": 0 if data.catalog_ids is None else int(data.catalog_ids.size),
        "cold_items": int(held.size),
        "cold_positives": int(task.test_items.size),
        "random": {
            "auc": 0.5,
            "cold_hit@20": min(1.0, 20 / held.size),
            "recall@20": float(20 / candidates),
        },
    }
    for side in (False, True):
        model_cfg = dataclasses.replace(config.model, side_features=side)
        start = time.perf_counter()
        model, history = train_two_tower(data, model_cfg, config.train, embedding=config.embedding)
        row: dict[str, Any] = {"test": evaluate_tower(model, data, ks=(20,))}
        row["epoch_seconds"] = float(np.mean([h["epoch_seconds"] for h in history]))
        model, _ = train_two_tower(task, model_cfg, config.train, embedding=config.embedding)
        row["cold"] = cold_item_metrics(model, task, held)
        row["seconds"] = time.perf_counter() - start
        result["side_features" if side else "ids_only"] = row
        print(f"[side-bench] side_features={side}: {json.dumps(row)}", flush=True)
    return result


def main(argv: list[str] | None = None) -> None:
    from plexus.pipelines.config import config_path

    args = sys.argv[1:] if argv is None else argv
    if not args:
        raise SystemExit(__doc__)
    config = load_retrieval_config(config_path(args[0]), args[1:])
    print(json.dumps(side_bench(config), indent=1))


if __name__ == "__main__":
    main()
