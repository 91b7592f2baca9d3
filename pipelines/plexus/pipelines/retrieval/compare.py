"""kNN-Embed against single-vector retrieval on the same embeddings: recall, NDCG, diversity.

Both methods run over all test users in batches. Single-vector retrieval is exact (the bundle's
index is exact for these catalog sizes, see `export.default_nprobe`); kNN-Embed runs the very
query-time code of the service (`plexus.serving.bundle.search_mixture`) on the torch query model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from plexus.models.retrieval import (
    KnnEmbedConfig,
    KnnEmbedQuery,
    KnnEmbedState,
    TwoTower,
    fit_knn_embed,
)
from plexus.pipelines.retrieval.data import Interactions
from plexus.pipelines.retrieval.evaluate import (
    csr_rows,
    diversity,
    exact_topk,
    ranking_metrics,
    test_users,
)
from plexus.serving import index as item_index
from plexus.serving.bundle import search_mixture
from plexus.serving.knn_embed import AllocationConfig

METHODS = ("single", "knn_embed")


def fit_knn_embed_query(
    model: TwoTower, data: Interactions, config: KnnEmbedConfig
) -> tuple[KnnEmbedQuery, KnnEmbedState]:
    """kNN-Embed fitted on the training lists of `data`, and the query module that uses it."""
    state = fit_knn_embed(
        model,
        torch.from_numpy(data.histories(model.config.history_len)),
        torch.from_numpy(data.train_indptr),
        torch.from_numpy(data.train_items),
        config,
    )
    return KnnEmbedQuery(model, state, config).eval(), state


def compare_retrieval(
    module: KnnEmbedQuery,
    state: KnnEmbedState,
    data: Interactions,
    *,
    ks: Sequence[int] = (20, 50, 100, 200),
    allocation: AllocationConfig | None = None,
    batch_size: int = 512,
) -> list[dict[str, Any]]:
    """One row per (method, k): recall, ndcg, distinct_clusters, intra_list_distance (means over
    test users), plus `users`. Train items are excluded from both methods' lists."""
    allocations = [allocation or AllocationConfig()]
    return compare_allocations(module, state, data, allocations, ks=ks, batch_size=batch_size)[0]


@torch.no_grad()
def compare_allocations(
    module: KnnEmbedQuery,
    state: KnnEmbedState,
    data: Interactions,
    allocations: Sequence[AllocationConfig],
    *,
    ks: Sequence[int] = (20, 50, 100, 200),
    batch_size: int = 512,
) -> list[list[dict[str, Any]]]:
    """`compare_retrieval`'s rows for each allocation. The query model and single-vector
    retrieval, which do not depend on the allocation, run once for all of them."""
    module.eval()
    ks = sorted(set(int(k) for k in ks))
    items = module.model.all_item_vectors()
    item_np = items.numpy().astype(np.float32)
    clusters = state.item_clusters.numpy().astype(np.int64)
    index = item_index.build_cluster_index(
        item_np[1:], clusters[1:], state.centroids.numpy(), np.arange(1, data.num_items + 1)
    )
    histories = torch.from_numpy(data.histories(module.model.config.history_len))
    users = test_users(data)
    sums: list[dict[tuple[str, int], dict[str, float]]] = [{} for _ in allocations]

    def scored(top: np.ndarray, chunk: np.ndarray, k: int) -> dict[str, float]:
        ranking = ranking_metrics(top, data, chunk, (k,))
        values = {
            "recall": ranking[f"recall@{k}"],
            "ndcg": ranking[f"ndcg@{k}"],
            **diversity(top, item_np, clusters, k),
        }
        return {key: float(v.sum()) for key, v in values.items()}

    def add(which: int, method: str, k: int, values: dict[str, float]) -> None:
        row = sums[which].setdefault((method, k), {})
        for key, value in values.items():
            row[key] = row.get(key, 0.0) + value

    for lo in range(0, users.size, batch_size):
        chunk = users[lo : lo + batch_size]
        u = torch.from_numpy(chunk)
        hist = histories[u]
        query, mixture, components = module(u, hist, (hist > 0).float())
        single = exact_topk(query, items, data, chunk, max(ks))
        mixture_np, components_np = mixture.numpy(), components.numpy()
        excluded = csr_rows(data.train_indptr, data.train_items, chunk)
        for k in ks:
            single_values = scored(single[:, :k], chunk, k)
            for which, allocation in enumerate(allocations):
                knn, _ = search_mixture(
                    index, clusters, mixture_np, components_np, k, excluded, allocation
                )
                add(which, "single", k, single_values)
                add(which, "knn_embed", k, scored(knn, chunk, k))
    n = max(users.size, 1)
    return [
        [
            {
                "method": method,
                "k": k,
                **{key: v / n for key, v in totals[(method, k)].items()},
                "users": int(users.size),
            }
            for method in METHODS
            for k in ks
        ]
        for totals in sums
    ]
