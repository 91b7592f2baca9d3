"""The batch half of kNN-Embed's user state: every known user's smoothed mixture, computed at
export over all users (exact, or through an HNSW graph past `export.user_state.exact_users`) and
stored as its top-M clusters, plus the sample index that the service smooths new users with
(`plexus.serving.user_state`)."""

from __future__ import annotations

import numpy as np
import torch
from plexus.models.retrieval import KnnEmbedQuery, KnnEmbedState
from plexus.pipelines.retrieval.data import Interactions
from plexus.platform.errors import require
from plexus.serving.user_state import (
    CompactMixtures,
    ReferenceIndex,
    UserState,
    UserStateConfig,
    WeightDtype,
    sample_reference,
)

__all__ = ["HnswUsers", "build_user_state", "exact_user_state_config"]

# HNSW graph degree and search depth: at these values the graph found 0.99 of the exact
# 10 nearest users on Gowalla's user vectors (README, "A bundle that scales with users").
HNSW_DEGREE = 32
HNSW_EF_SEARCH = 128
HNSW_EF_CONSTRUCTION = 80


class HnswUsers:
    """Approximate nearest known users by inner product: a faiss HNSW graph over the unit user
    vectors (rows 1..U of `user_table`; inner product is cosine there, so the L2 graph of
    `IndexHNSWFlat` orders neighbours as the exact search does). Building costs about
    U log U distance evaluations instead of the exact search's U^2."""

    def __init__(self, user_table: torch.Tensor, neighbors: int) -> None:
        faiss = require("faiss", "serve")
        vectors = np.ascontiguousarray(user_table[1:].numpy(), dtype=np.float32)
        self.neighbors = neighbors
        self.index = faiss.IndexHNSWFlat(vectors.shape[1], HNSW_DEGREE, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        self.index.hnsw.efSearch = max(HNSW_EF_SEARCH, neighbors + 1)
        self.index.add(vectors)

    def __call__(self, users: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """(B, neighbors) ids nearest to `query` (B, D), never `users` themselves."""
        fetch = self.neighbors + 1
        _, found = self.index.search(np.ascontiguousarray(query.numpy(), np.float32), fetch)
        found = torch.from_numpy(found) + 1  # index rows are users 1..U; -1 (none) becomes 0
        keep = (found != users.unsqueeze(1)) & (found > 0)
        # the first `neighbors` kept ids of each row; a row short of them repeats its nearest
        order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, : self.neighbors]
        top = torch.gather(found, 1, order)
        short = torch.gather(keep, 1, order)
        return torch.where(short, top, top[:, :1])


def exact_user_state_config(num_clusters: int) -> UserStateConfig:
    """A store that keeps every cluster in float32 and indexes every user: the served
    mixtures are then the dense computation's (the reference of the compact forms)."""
    return UserStateConfig(
        top_clusters=num_clusters, weight_dtype=WeightDtype.FLOAT32, reference_users=2**62
    )


@torch.no_grad()
def build_user_state(
    module: KnnEmbedQuery,
    state: KnnEmbedState,
    data: Interactions,
    config: UserStateConfig,
    *,
    batch_size: int = 2048,
) -> UserState:
    """Each known user's mixture exactly as the dense model computes it from the user's stored
    history (the history the service feeds it), compacted to `config.top_clusters` per user;
    the reference sample's training distributions in the same form."""
    module.eval()
    num_users = data.num_users
    num_clusters = int(state.centroids.shape[0])
    histories = torch.from_numpy(data.model_histories(module.model.config))
    search = None if config.exact_for(num_users) else HnswUsers(state.user_table, module.neighbors)
    store = CompactMixtures.empty(
        num_users + 1, config.top_clusters, num_clusters, config.weight_dtype
    )
    for lo in range(1, num_users + 1, batch_size):
        users = torch.arange(lo, min(lo + batch_size, num_users + 1))
        hist = histories[users]
        query, own, _ = module(users, hist, (hist > 0).float())
        nearest = None if search is None else search(users, query)
        mixture = module.smoothed_mixture(users, query, own, state, nearest).numpy()
        part = CompactMixtures.from_dense(
            mixture, top=config.top_clusters, dtype=config.weight_dtype
        )
        store.clusters[lo : lo + users.numel()] = part.clusters
        store.weights[lo : lo + users.numel()] = part.weights
    ref = sample_reference(num_users, config.reference_users, config.seed)
    reference = ReferenceIndex(
        ref,
        state.user_table[ref].numpy().astype(np.float32),
        CompactMixtures.from_dense(
            state.user_dist[ref].numpy(), top=config.top_clusters, dtype=config.weight_dtype
        ),
    )
    return UserState(
        mixtures=store,
        reference=reference,
        num_clusters=num_clusters,
        neighbors=module.neighbors,
        smoothing=module.smoothing,
    )
