"""kNN-Embed (El-Kishky et al., 2022): users as smoothed mixtures over item-interest clusters.

`fit_knn_embed` clusters item vectors with spherical k-means and builds, for every training
user, its query vector and its engagement distribution over clusters: batch-job tables, never
exported. `KnnEmbedQuery` is the export-ready query side: from (user id, padded history, mask)
it computes the user vector, the history's cluster histogram and one query vector per cluster.
It holds no user table beyond the model's own (in whatever form the embedding method made it)
and no user distributions: the neighbour smoothing of a mixture is `smoothed_mixture`, run by
the batch job for every known user over all users (exact, or an HNSW graph at scale), and by the service for new users
over a sample index (`plexus.serving.user_state`). Plain gathers and matmuls: it exports to ONNX.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from plexus.models.retrieval.config import KnnEmbedConfig, QueryVariant
from plexus.models.retrieval.kmeans import spherical_kmeans
from plexus.models.retrieval.two_tower import TwoTower
from torch import nn


@dataclasses.dataclass(frozen=True)
class KnnEmbedState:
    """Fitted tables. centroids (C, D); item_clusters (N + 1,) int64 with [0] = -1;
    user_table (U + 1, D) unit user vectors ([0] = 0); user_dist (U + 1, C) engagement
    distribution over clusters of each user's training items ([0] = 0). The two user tables
    feed the batch job's smoothing and the new-user index; the query model holds neither."""

    centroids: torch.Tensor
    item_clusters: torch.Tensor
    user_table: torch.Tensor
    user_dist: torch.Tensor


@torch.no_grad()
def user_table(
    model: TwoTower,
    histories: torch.Tensor,
    users: np.ndarray | None = None,
    *,
    batch_size: int = 4096,
) -> torch.Tensor:
    """Unit vectors of training users from their stored histories (U + 1, L): of every user,
    (U + 1, D) with the padding row 0 zeroed, or of the given user ids in their order."""
    ids = torch.arange(histories.shape[0]) if users is None else torch.from_numpy(users)
    rows = []
    for start in range(0, ids.shape[0], batch_size):
        chunk = ids[start : start + batch_size]
        hist = histories[chunk]
        rows.append(model.user_vectors(chunk, hist, (hist > 0).float()))
    table = torch.cat(rows) if rows else torch.zeros(0, model.config.dim)
    if users is None:
        table[0] = 0.0
    return table


@torch.no_grad()
def fit_knn_embed(
    model: TwoTower,
    histories: torch.Tensor,
    seen_indptr: torch.Tensor,
    seen_items: torch.Tensor,
    config: KnnEmbedConfig,
) -> KnnEmbedState:
    """Cluster the items and build the user tables.

    histories (U + 1, L) int64 padded recent items per user (the tower input); seen_indptr
    (U + 2,) / seen_items (nnz,) the CSR of all training items per user (the distributions).
    """
    items = model.all_item_vectors()[1:]
    centroids, assign = spherical_kmeans(
        items, config.num_clusters, iters=config.kmeans_iters, seed=config.seed
    )
    clusters = torch.cat([torch.tensor([-1]), assign])
    num_users = seen_indptr.shape[0] - 1
    c = centroids.shape[0]
    lengths = seen_indptr[1:] - seen_indptr[:-1]
    rows = torch.repeat_interleave(torch.arange(num_users), lengths)
    flat = rows * c + clusters[seen_items]
    counts = torch.bincount(flat, minlength=num_users * c).reshape(num_users, c).float()
    dist = counts / counts.sum(dim=1, keepdim=True).clamp(min=1.0)
    dist[0] = 0.0
    return KnnEmbedState(
        centroids=centroids,
        item_clusters=clusters,
        user_table=user_table(model, histories),
        user_dist=dist,
    )


@torch.no_grad()
def exact_nearest_users(
    user: torch.Tensor, query: torch.Tensor, user_table: torch.Tensor, k: int
) -> torch.Tensor:
    """(B, k) ids of the rows of `user_table` (U + 1, D) nearest to `query` (B, D) by inner
    product, never the querying `user` (B,) itself nor the padding row 0: a (B, U) block."""
    sims = query @ user_table.T
    ids = torch.arange(user_table.shape[0])
    invalid = (ids.unsqueeze(0) == user.unsqueeze(1)) | (ids == 0)
    sims = torch.where(invalid, torch.full_like(sims, -10.0), sims)
    return torch.topk(sims, k, dim=1).indices


class KnnEmbedQuery(nn.Module):
    """The query side of kNN-Embed: (B,) user, (B, L) history, (B, L) mask -> query (B, D),
    history_mixture (B, C) (the history's cluster histogram, rows sum to 1, or 0 without a
    history), component_queries (B, C, D), all vectors unit norm.

    `neighbors` and `smoothing` are the configured smoothing, applied by `smoothed_mixture`
    outside the graph."""

    def __init__(self, model: TwoTower, state: KnnEmbedState, config: KnnEmbedConfig) -> None:
        super().__init__()
        self.model = model
        self.neighbors = int(min(config.neighbors, max(state.user_table.shape[0] - 2, 1)))
        self.smoothing = float(config.smoothing)
        self.component_mix = (
            float(config.component_mix) if config.query_variant is QueryVariant.PER_CLUSTER else 0.0
        )
        self.register_buffer("centroids", state.centroids.float().clone())
        self.register_buffer("item_clusters", state.item_clusters.clamp(min=0).clone())
        self.register_buffer("cluster_ids", torch.arange(state.centroids.shape[0]))

    def forward(
        self, user: torch.Tensor, history: torch.Tensor, history_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mask = history_mask.to(torch.float32)
        query = self.model.user_vectors(user, history, mask)
        # Own interest distribution: cluster histogram of the history. (B, L, C) -> (B, C)
        onehot = (self.item_clusters[history].unsqueeze(-1) == self.cluster_ids).to(torch.float32)
        onehot = onehot * mask.unsqueeze(-1)
        counts = onehot.sum(dim=1)
        own = counts / counts.sum(dim=1, keepdim=True).clamp(min=1.0)
        # Per-cluster queries: user vector mixed with the mean of its items in the cluster
        # (the cluster centroid where it has none).
        vecs = self.model.item_vectors(history) * mask.unsqueeze(-1)
        sums = torch.einsum("blc,bld->bcd", onehot, vecs)
        means = torch.where(
            counts.unsqueeze(-1) > 0, F.normalize(sums, dim=-1), self.centroids.unsqueeze(0)
        )
        beta = self.component_mix
        components = F.normalize((1.0 - beta) * query.unsqueeze(1) + beta * means, dim=-1)
        return query, own, components

    @torch.no_grad()
    def nearest_users(
        self, user: torch.Tensor, query: torch.Tensor, state: KnnEmbedState
    ) -> torch.Tensor:
        """(B, neighbors) ids of the users nearest to `query` (B, D) among all of
        `state.user_table`: `exact_nearest_users`."""
        return exact_nearest_users(user, query, state.user_table, self.neighbors)

    @torch.no_grad()
    def smoothed_mixture(
        self,
        user: torch.Tensor,
        query: torch.Tensor,
        own: torch.Tensor,
        state: KnnEmbedState,
        nearest: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The kNN-Embed mixture (B, C): `own` (B, C) smoothed with the mean distribution of
        the user's neighbours, `nearest` (B, k) ids when an index found them, else the exact
        `nearest_users`. The batch job's computation."""
        top = self.nearest_users(user, query, state) if nearest is None else nearest
        neigh = state.user_dist[top].mean(dim=1)
        lam = self.smoothing
        total = own.sum(dim=1, keepdim=True)
        mixture = torch.where(total > 0, (1.0 - lam) * own + lam * neigh, neigh)
        return mixture / mixture.sum(dim=1, keepdim=True).clamp(min=1e-12)
