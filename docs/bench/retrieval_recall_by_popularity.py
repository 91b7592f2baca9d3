"""Where two retrieval models' Recall@20 differ (README, "DSL on the retrieval towers"): every
test (user, item) pair scored by both models, the hits split by the test item's training
popularity (deciles of the test pairs) and by the user's training-list length (quintiles).

usage: PLEXUS_DATA=../shared/data .venv/bin/python docs/bench/retrieval_recall_by_popularity.py \
           MODEL_FOLDER_A MODEL_FOLDER_B [--config retrieval_gowalla] [--data DIR]
Each folder is a trained row of `plexus bench embeddings --task retrieval` (its `model.pt`),
both trained on the same ingest of `--data` (default: the config's); prints one JSON line per
model and the differences B - A."""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from plexus.models.retrieval.knn_embed import user_table
from plexus.pipelines.config import config_path
from plexus.pipelines.retrieval.config import load_retrieval_config
from plexus.pipelines.retrieval.evaluate import csr_rows, exact_topk, test_users
from plexus.pipelines.retrieval.job import load_data, load_model


def buckets(values: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Each value's quantile bucket (0 .. count-1) and the bucket edges."""
    edges = np.quantile(values, np.linspace(0, 1, count + 1))
    return np.clip(np.searchsorted(edges, values, side="right") - 1, 0, count - 1), edges


@torch.no_grad()
def pair_hits(folder: Path, data, users: np.ndarray, pos: np.ndarray, items: np.ndarray, k: int):
    """Whether each test pair (pos = its user's index in `users`) is in the model's top k."""
    model, _ = load_model(folder, data)
    histories = torch.from_numpy(data.model_histories(model.config))
    user_vectors = user_table(model, histories, users)  # the test users' only, in their order
    item_vectors = model.all_item_vectors()
    hits = np.zeros(items.size, bool)
    for lo in range(0, users.size, 1024):
        chunk = users[lo : lo + 1024]
        top = exact_topk(user_vectors[lo : lo + 1024], item_vectors, data, chunk, k)
        inside = (pos >= lo) & (pos < lo + chunk.size)
        hits[inside] = (top[pos[inside] - lo] == items[inside][:, None]).any(1)
    return hits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--config", default="retrieval_gowalla")
    parser.add_argument("--data", type=Path)
    parser.add_argument("--k", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    overrides = ["output=runs/recall-by-popularity"]
    overrides += [f"data.path={args.data.resolve()}"] if args.data else []
    # The ingest is deterministic: the same log gives the ids and split the models trained on.
    data = load_data(load_retrieval_config(config_path(args.config), overrides))
    users = test_users(data)
    pos, items = csr_rows(data.test_indptr, data.test_items, users)
    item_bucket, item_edges = buckets(data.item_popularity()[items], 10)
    user_bucket, user_edges = buckets(np.diff(data.train_indptr)[users], 5)
    n_test = np.bincount(pos, minlength=users.size)
    rows = {}
    for name, folder in (("a", args.a), ("b", args.b)):
        hits = pair_hits(folder, data, users, pos, items, args.k)
        recall = np.bincount(pos, weights=hits, minlength=users.size) / n_test
        rows[name] = {
            "model": str(folder),
            f"recall@{args.k}": float(recall.mean()),
            "by_item_decile": [float(hits[item_bucket == b].mean()) for b in range(10)],
            "by_user_quintile": [float(recall[user_bucket == b].mean()) for b in range(5)],
        }
        print(json.dumps(rows[name]), flush=True)
    for key in ("by_item_decile", "by_user_quintile"):
        diff = np.array(rows["b"][key]) - np.array(rows["a"][key])
        print(f"b - a {key}: {np.round(diff, 4).tolist()}")
    print("item decile edges (training interactions):", item_edges.round(1).tolist())
    print("test pairs a decile:", np.bincount(item_bucket, minlength=10).tolist())
    print("user quintile edges (training items):", user_edges.round(1).tolist())


if __name__ == "__main__":
    main()
