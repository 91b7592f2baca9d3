"""Full-ranking evaluation (train items excluded) and the diversity measures of retrieved lists.

Recall@K = hits in the top K / number of test items of the user; NDCG@K with binary gains and the
ideal DCG over min(K, |test|) items (the LightGCN protocol). Averaged over users with test items.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from plexus.models.retrieval import TwoTower
from plexus.models.retrieval.knn_embed import user_table
from plexus.pipelines.retrieval.data import Interactions
from plexus.serving.index import popularity_prior


def test_users(data: Interactions) -> np.ndarray:
    """Internal ids of users with at least one test item, ordered by training-list length
    (so that evaluation batches hold users with similar exclusion counts)."""
    users = np.nonzero(np.diff(data.test_indptr) > 0)[0]
    return users[np.argsort(np.diff(data.train_indptr)[users], kind="stable")]


def csr_rows(
    indptr: np.ndarray, items: np.ndarray, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(row position, item) pairs of the CSR lists of `rows`."""
    counts = indptr[rows + 1] - indptr[rows]
    pos = np.repeat(np.arange(rows.size), counts)
    offsets = np.arange(pos.size) - np.repeat(np.cumsum(counts) - counts, counts)
    return pos, items[np.repeat(indptr[rows], counts) + offsets]


def ranking_metrics(
    top: np.ndarray, data: Interactions, users: np.ndarray, ks: Sequence[int]
) -> dict[str, np.ndarray]:
    """Per-user recall@k and ndcg@k of ranked internal ids top (B, >= max k) (-1 = empty)."""
    pos, items = csr_rows(data.test_indptr, data.test_items, users)
    stride = max(data.num_items, int(top.max(initial=0))) + 2  # catalog ids follow N
    truth = pos * stride + items
    kmax = max(ks)
    keys = np.arange(users.size)[:, None] * stride + top[:, :kmax]
    hit = np.isin(keys, truth) & (top[:, :kmax] >= 0)
    n_test = np.bincount(pos, minlength=users.size)
    out: dict[str, np.ndarray] = {}
    discount = 1.0 / np.log2(np.arange(2, kmax + 2))
    for k in ks:
        out[f"recall@{k}"] = hit[:, :k].sum(1) / n_test
        dcg = (hit[:, :k] * discount[:k]).sum(1)
        ideal = np.cumsum(discount[:k])[np.minimum(n_test, k) - 1]
        out[f"ndcg@{k}"] = dcg / ideal
    return out


def diversity(
    top: np.ndarray, item_vectors: np.ndarray, item_clusters: np.ndarray, k: int
) -> dict[str, np.ndarray]:
    """Per-user distinct clusters and intra-list distance (mean pairwise 1 - cosine) in the top k."""
    ids = top[:, :k]
    valid = ids > 0
    clusters = np.where(valid, item_clusters[np.maximum(ids, 0)], -1)
    sorted_c = np.sort(clusters, axis=1)
    distinct = ((sorted_c[:, 1:] != sorted_c[:, :-1]) & (sorted_c[:, 1:] >= 0)).sum(1)
    distinct = distinct + (sorted_c[:, 0] >= 0)
    # Mean pairwise cosine of unit vectors from their sum: (|sum|^2 - n) / (n (n - 1)). The sum
    # is a bag lookup, so no (B, k, D) gather of the lists' vectors is materialised.
    s = F.embedding_bag(
        torch.from_numpy(np.maximum(ids, 0)),
        torch.from_numpy(np.ascontiguousarray(item_vectors, dtype=np.float32)),
        mode="sum",
        per_sample_weights=torch.from_numpy(valid.astype(np.float32)),
    ).numpy()
    n = valid.sum(1).astype(np.float64)
    pair_cos = ((s.astype(np.float64) ** 2).sum(1) - n) / np.maximum(n * (n - 1), 1.0)
    return {"distinct_clusters": distinct.astype(np.float64), "intra_list_distance": 1.0 - pair_cos}


def item_prior(data: Interactions, num_vectors: int, weight: float) -> np.ndarray | None:
    """(num_vectors,) the popularity prior (`plexus.serving.index.popularity_prior`) of every
    item vector of a model over `data`: the padding row 0 and catalog items that were never
    trained on get 0. None at weight 0 (the index then stays as it was without one)."""
    if weight == 0:
        return None
    counts = np.zeros(num_vectors, dtype=np.float64)
    trained = data.item_popularity()[:num_vectors]
    counts[: trained.size] = trained
    return popularity_prior(counts, weight)


@torch.no_grad()
def exact_topk(
    user_vectors: torch.Tensor,
    item_vectors: torch.Tensor,
    data: Interactions,
    users: np.ndarray,
    k: int,
    *,
    item_prior: np.ndarray | None = None,
) -> np.ndarray:
    """Exact top-k internal item ids (B, k) by inner product, plus `item_prior` (N + 1,) where
    given (`item_prior()`), with the users' training items and the padding item excluded.
    user_vectors (B, D), item_vectors (N + 1, D)."""
    scores = user_vectors @ item_vectors.T
    if item_prior is not None:
        scores += torch.from_numpy(item_prior)
    scores[:, 0] = -torch.inf
    pos, items = csr_rows(data.train_indptr, data.train_items, users)
    scores[torch.from_numpy(pos), torch.from_numpy(items)] = -torch.inf
    return torch.topk(scores, min(k, data.num_items), dim=1).indices.numpy()


@torch.no_grad()
def evaluate_tower(
    model: TwoTower,
    data: Interactions,
    *,
    ks: Sequence[int] = (20, 50, 100, 200),
    batch_size: int = 1024,
) -> dict[str, float]:
    """Full-ranking Recall@k / NDCG@k of the two-tower model over all test users."""
    model.eval()
    histories = torch.from_numpy(data.model_histories(model.config))
    items = model.all_item_vectors()
    users = test_users(data)
    vectors = user_table(model, histories, users)
    sums: dict[str, float] = {}
    for lo in range(0, users.size, batch_size):
        chunk = users[lo : lo + batch_size]
        top = exact_topk(vectors[lo : lo + batch_size], items, data, chunk, max(ks))
        for key, values in ranking_metrics(top, data, chunk, ks).items():
            sums[key] = sums.get(key, 0.0) + float(values.sum())
    return {key: value / max(users.size, 1) for key, value in sums.items()}
