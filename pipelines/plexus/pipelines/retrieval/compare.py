"""kNN-Embed against single-vector retrieval on the same embeddings: recall, NDCG, diversity.

Both methods run over all test users in batches. Single-vector retrieval is exact (the bundle's
index is exact for these catalog sizes, see `export.default_nprobe`); kNN-Embed runs the very
query-time code of the service (`plexus.serving.bundle.search_mixture`) on the torch query model,
with the mixtures the bundle stores for known users (`users`, the compact user state; by default
the exact one: every cluster, float32).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
    item_prior,
    ranking_metrics,
    test_users,
)
from plexus.pipelines.retrieval.user_state import build_user_state, exact_user_state_config
from plexus.serving import index as item_index
from plexus.serving.bundle import search_mixture
from plexus.serving.knn_embed import AllocationConfig
from plexus.serving.user_state import UserState

METHODS = ("single", "knn_embed", "popular")


def fit_knn_embed_query(
    model: TwoTower, data: Interactions, config: KnnEmbedConfig
) -> tuple[KnnEmbedQuery, KnnEmbedState]:
    """kNN-Embed fitted on the training lists of `data`, and the query module that uses it."""
    state = fit_knn_embed(
        model,
        torch.from_numpy(data.model_histories(model.config)),
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
    users: UserState | None = None,
    popularity_prior: float = 0.0,
) -> list[dict[str, Any]]:
    """One row per (method, k): recall, ndcg, distinct_clusters, intra_list_distance (means over
    test users), plus `users`, for single-vector retrieval, kNN-Embed and the most popular items
    (the baseline). Train items are excluded from every method's lists. Both retrievals score
    by cosine plus the popularity prior of weight `popularity_prior` (`export.popularity_prior`),
    as the bundle does."""
    allocations = [allocation or AllocationConfig()]
    return compare_allocations(
        module,
        state,
        data,
        allocations,
        ks=ks,
        batch_size=batch_size,
        users=users,
        popularity_prior=popularity_prior,
    )[0]


def most_popular(
    by_popularity: np.ndarray, data: Interactions, users: np.ndarray, k: int
) -> np.ndarray:
    """(B, k) the most popular training items each user has not trained on: the baseline a
    retrieval model must beat, measured in the same run on the same users."""
    top = np.zeros((users.size, k), dtype=np.int64)
    head = by_popularity[: k + int(np.diff(data.train_indptr).max(initial=0))]
    for row, user in enumerate(users.tolist()):
        seen = data.train_items[data.train_indptr[user] : data.train_indptr[user + 1]]
        kept = head[~np.isin(head, seen)][:k]
        top[row, : kept.size] = kept
    return top


@torch.no_grad()
def compare_allocations(
    module: KnnEmbedQuery,
    state: KnnEmbedState,
    data: Interactions,
    allocations: Sequence[AllocationConfig],
    *,
    ks: Sequence[int] = (20, 50, 100, 200),
    batch_size: int = 512,
    users: UserState | None = None,
    popularity_prior: float = 0.0,
    extra_scores: Callable[[np.ndarray, int], dict[str, np.ndarray]] | None = None,
) -> list[list[dict[str, Any]]]:
    """`compare_retrieval`'s rows for each allocation. The query model and single-vector
    retrieval, which do not depend on the allocation, run once for all of them.
    `extra_scores(top (B, k) item ids, k)`: more per-user figures of every list (e.g. its
    diversity in a space shared by several models), averaged into the rows like the others."""
    module.eval()
    if users is None:
        config = exact_user_state_config(int(state.centroids.shape[0]))
        users = build_user_state(module, state, data, config)
    ks = sorted(set(int(k) for k in ks))
    items = module.model.all_item_vectors()
    item_np = items.numpy().astype(np.float32)
    clusters = state.item_clusters.numpy().astype(np.int64)
    prior = item_prior(data, item_np.shape[0], popularity_prior)
    index = item_index.build_cluster_index(
        item_np[1:],
        clusters[1:],
        state.centroids.numpy(),
        np.arange(1, item_np.shape[0]),
        item_prior=None if prior is None else prior[1:],
    )
    histories = torch.from_numpy(data.model_histories(module.model.config))
    tested = test_users(data)
    sums: list[dict[tuple[str, int], dict[str, float]]] = [{} for _ in allocations]

    def scored(top: np.ndarray, chunk: np.ndarray, k: int) -> dict[str, float]:
        ranking = ranking_metrics(top, data, chunk, (k,))
        values = {
            "recall": ranking[f"recall@{k}"],
            "ndcg": ranking[f"ndcg@{k}"],
            **diversity(top, item_np, clusters, k),
            **(extra_scores(top, k) if extra_scores is not None else {}),
        }
        return {key: float(v.sum()) for key, v in values.items()}

    def add(which: int, method: str, k: int, values: dict[str, float]) -> None:
        row = sums[which].setdefault((method, k), {})
        for key, value in values.items():
            row[key] = row.get(key, 0.0) + value

    by_popularity = np.argsort(-data.item_popularity()[1:], kind="stable") + 1
    for lo in range(0, tested.size, batch_size):
        chunk = tested[lo : lo + batch_size]
        popular = most_popular(by_popularity, data, chunk, max(ks))
        u = torch.from_numpy(chunk)
        hist = histories[u]
        query, _, components = module(u, hist, (hist > 0).float())
        single = exact_topk(query, items, data, chunk, max(ks), item_prior=prior)
        mixture_np = users.mixtures.dense(chunk, users.num_clusters)
        components_np = components.numpy()
        excluded = csr_rows(data.train_indptr, data.train_items, chunk)
        popular_values = {k: scored(popular[:, :k], chunk, k) for k in ks}
        for k in ks:
            single_values = scored(single[:, :k], chunk, k)
            for which, allocation in enumerate(allocations):
                knn, _ = search_mixture(
                    index, clusters, mixture_np, components_np, k, excluded, allocation
                )
                add(which, "single", k, single_values)
                add(which, "knn_embed", k, scored(knn, chunk, k))
                add(which, "popular", k, popular_values[k])
    n = max(tested.size, 1)
    return [
        [
            {
                "method": method,
                "k": k,
                **{key: v / n for key, v in totals[(method, k)].items()},
                "users": int(tested.size),
            }
            for method in METHODS
            for k in ks
        ]
        for totals in sums
    ]
