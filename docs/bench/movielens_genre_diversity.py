"""Diversity of MovieLens retrieval lists in one space shared by every model (README, "MovieLens:
diversity in a shared space"): each item's genres, not the model's own clusters or vectors.

`distinct_clusters` and `intra_list_distance` in `plexus bench retrieval` are measured in each
model's own k-means clusters and embedding space, so they compare settings of one model but
not two models: a model that places items by genre also clusters by genre. Here every list is
scored by its items' genre sets: `genre_ild` (mean pairwise 1 - cosine of the genre multi-hot
vectors) and `genres` (distinct genres among the top K), beside recall and the model's own
`distinct_clusters` (to compare settings of one model).

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
from plexus.pipelines.config import config_path
from plexus.pipelines.retrieval.compare import compare_allocations, fit_knn_embed_query
from plexus.pipelines.retrieval.config import load_retrieval_config
from plexus.pipelines.retrieval.data import ingest_interactions
from plexus.pipelines.retrieval.evaluate import diversity
from plexus.pipelines.retrieval.train import train_two_tower


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


def genre_scores(genres: np.ndarray):
    """`compare_allocations`' extra per-user figures: genre ILD and genres covered."""
    unit = genres / np.maximum(np.linalg.norm(genres, axis=1, keepdims=True), 1e-12)
    no_clusters = np.zeros(genres.shape[0], np.int64)

    def scores(top: np.ndarray, k: int) -> dict[str, np.ndarray]:
        lists = top[:, :k]
        covered = (genres[np.maximum(lists, 0)] * (lists > 0)[..., None]).max(axis=1).sum(axis=1)
        ild = diversity(lists, unit, no_clusters, k)["intra_list_distance"]
        return {"genre_ild": ild, "genres": covered.astype(np.float64)}

    return scores


def main() -> None:
    settings = [tuple(float(x) for x in s.split("/")) for s in sys.argv[1].split(",")]
    config = load_retrieval_config(config_path("retrieval_movielens"), sys.argv[2:])
    _, data = ingest_interactions(config.data, Path("runs/genre-diversity"), progress=False)
    scores = genre_scores(genre_vectors(data))
    model, _ = train_two_tower(data, config.model, config.train, embedding=config.embedding)
    for smoothing in sorted({s for s, _ in settings}):
        module, state = fit_knn_embed_query(
            model, data, dataclasses.replace(config.knn_embed, smoothing=smoothing)
        )
        powers = [p for s, p in settings if s == smoothing]
        allocations = [dataclasses.replace(config.export.allocation, power=p) for p in powers]
        rows = compare_allocations(
            module, state, data, allocations, ks=config.eval.ks, extra_scores=scores
        )
        for power, per_allocation in zip(powers, rows, strict=True):
            for row in per_allocation:
                keep = ("method", "k", "recall", "distinct_clusters", "genre_ild", "genres")
                print(
                    json.dumps(
                        {"smoothing": smoothing, "power": power, **{c: row[c] for c in keep}}
                    )
                )


if __name__ == "__main__":
    main()
