"""The batch half of kNN-Embed's user state: every known user's smoothed mixture, computed
exactly (dense, over all users) at export and stored as its top-M clusters, plus the sample
index that the service smooths new users with (`plexus.serving.user_state`)."""

from __future__ import annotations

import numpy as np
import torch
from plexus.models.retrieval import KnnEmbedQuery, KnnEmbedState
from plexus.pipelines.retrieval.data import Interactions
from plexus.serving.user_state import (
    CompactMixtures,
    ReferenceIndex,
    UserState,
    UserStateConfig,
    WeightDtype,
    sample_reference,
)

__all__ = ["build_user_state", "exact_user_state_config"]


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
    histories = torch.from_numpy(data.histories(module.model.config.history_len))
    store = CompactMixtures.empty(
        num_users + 1, config.top_clusters, num_clusters, config.weight_dtype
    )
    for lo in range(1, num_users + 1, batch_size):
        users = torch.arange(lo, min(lo + batch_size, num_users + 1))
        hist = histories[users]
        query, own, _ = module(users, hist, (hist > 0).float())
        mixture = module.smoothed_mixture(users, query, own, state).numpy()
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
