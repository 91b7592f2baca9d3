"""Diversity of MovieLens retrieval lists in one space shared by every model (README, "MovieLens:
diversity in a shared space"): each item's genres, not the model's own clusters or vectors.

`distinct_clusters` and `intra_list_distance` in `plexus bench retrieval` are measured in each
model's own k-means clusters and embedding space, so they compare settings of one model but
not two models: a model that places items by genre also clusters by genre. Here every list is
scored by its items' genre sets: `genre_ild` (mean pairwise 1 - cosine of the genre multi-hot
vectors) and `genres` (distinct genres among the top K), beside recall.

usage: PLEXUS_DATA=../shared/data .venv/bin/python docs/bench/movielens_genre_diversity.py \
           SMOOTHING/POWER[,SMOOTHING/POWER...] [key=value ...]
Trains `retrieval_movielens` (with the overrides) on the test task once (its shards under
runs/genre-diversity/), fits kNN-Embed at each smoothing and prints one JSON line per (setting,
method, K)."""

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch
from plexus.pipelines.config import config_path
from plexus.pipelines.retrieval.compare import fit_knn_embed_query, most_popular
from plexus.pipelines.retrieval.config import load_retrieval_config
from plexus.pipelines.retrieval.data import ingest_interactions
from plexus.pipelines.retrieval.evaluate import (
    csr_rows,
    diversity,
    exact_topk,
    ranking_metrics,
    test_users,
)
from plexus.pipelines.retrieval.train import train_two_tower
from plexus.pipelines.retrieval.user_state import build_user_state, exact_user_state_config
from plexus.serving import index as item_index
from plexus.serving.bundle import search_mixture


def genre_vectors(data) -> np.ndarray:
    """(N + 1, G) each item's genres, multi-hot (row 0 and genre-less items: zeros)."""
    names = [f.name for f in data.side.item_features]
    column = names.index("genres")
    ids = data.side.item_ids[:, column, :].numpy()
    lengths = data.side.item_lengths[:, column].numpy()
    multi = np.zeros((ids.shape[0], int(ids.max()) + 1), np.float32)
    for slot in range(ids.shape[1]):
        rows = np.nonzero(lengths > slot)[0]
        multi[rows, ids[rows, slot]] = 1.0
    return multi


def scored(top: np.ndarray, users: np.ndarray, k: int, data, genres: np.ndarray) -> dict:
    unit = genres / np.maximum(np.linalg.norm(genres, axis=1, keepdims=True), 1e-12)
    no_clusters = np.zeros(genres.shape[0], np.int64)
    lists = top[:, :k]
    covered = (genres[np.maximum(lists, 0)] * (lists > 0)[..., None]).max(axis=1).sum(axis=1)
    return {
        "recall": float(ranking_metrics(lists, data, users, (k,))[f"recall@{k}"].mean()),
        "genre_ild": float(diversity(lists, unit, no_clusters, k)["intra_list_distance"].mean()),
        "genres": float(covered.mean()),
    }


def main() -> None:
    settings = [tuple(float(x) for x in s.split("/")) for s in sys.argv[1].split(",")]
    config = load_retrieval_config(config_path("retrieval_movielens"), sys.argv[2:])
    _, data = ingest_interactions(config.data, Path("runs/genre-diversity"), progress=False)
    genres = genre_vectors(data)
    model, _ = train_two_tower(data, config.model, config.train, embedding=config.embedding)
    users = test_users(data)
    ks = config.eval.ks
    by_popularity = np.argsort(-data.item_popularity()[1:], kind="stable") + 1
    for method, top in (("popular", most_popular(by_popularity, data, users, max(ks))),):
        for k in ks:
            print(json.dumps({"method": method, "k": k, **scored(top, users, k, data, genres)}))
    for smoothing in sorted({s for s, _ in settings}):
        knn = dataclasses.replace(config.knn_embed, smoothing=smoothing)
        module, state = fit_knn_embed_query(model, data, knn)
        mixtures = build_user_state(
            module, state, data, exact_user_state_config(int(state.centroids.shape[0]))
        ).mixtures.dense(users, int(state.centroids.shape[0]))
        with torch.no_grad():
            items = module.model.all_item_vectors()
            histories = torch.from_numpy(data.model_histories(module.model.config))[users]
            query, _, components = module(
                torch.from_numpy(users), histories, (histories > 0).float()
            )
        clusters = state.item_clusters.numpy().astype(np.int64)
        index = item_index.build_cluster_index(
            items.numpy()[1:], clusters[1:], state.centroids.numpy(), np.arange(1, len(items))
        )
        single = exact_topk(query, items, data, users, max(ks))
        excluded = csr_rows(data.train_indptr, data.train_items, users)
        for smoothing_, power in settings:
            if smoothing_ != smoothing:
                continue
            allocation = dataclasses.replace(config.export.allocation, power=power)
            for k in ks:
                lists, _ = search_mixture(
                    index, clusters, mixtures, components.numpy(), k, excluded, allocation
                )
                setting = {"smoothing": smoothing, "power": power, "k": k}
                for method, top in (("single", single), ("knn_embed", lists)):
                    print(
                        json.dumps(
                            {"method": method, **setting, **scored(top, users, k, data, genres)}
                        )
                    )


if __name__ == "__main__":
    main()
