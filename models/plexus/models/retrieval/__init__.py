"""Retrieval models: a two-tower / MF candidate generator and the kNN-Embed multi-interest head.

`TwoTower` learns user and item vectors (user id and/or padded history + mask); `fit_knn_embed`
clusters the items and builds the batch-job tables; `KnnEmbedQuery` (an export-ready module of
plain gathers, no user tables of its own) gives the history's interest histogram and
per-interest query vectors, and `KnnEmbedQuery.smoothed_mixture` the dense neighbour smoothing
that the export runs for every known user.
"""

from plexus.models.retrieval.config import (
    HistoryPick,
    KnnEmbedConfig,
    LossKind,
    QueryVariant,
    TwoTowerConfig,
)
from plexus.models.retrieval.kmeans import spherical_kmeans
from plexus.models.retrieval.knn_embed import KnnEmbedQuery, KnnEmbedState, fit_knn_embed
from plexus.models.retrieval.loss import (
    cosine_contrastive_loss,
    retrieval_loss,
    sampled_softmax_loss,
)
from plexus.models.retrieval.side import SideFeatures
from plexus.models.retrieval.two_tower import TwoTower

__all__ = [
    "HistoryPick",
    "KnnEmbedConfig",
    "KnnEmbedQuery",
    "KnnEmbedState",
    "LossKind",
    "QueryVariant",
    "SideFeatures",
    "TwoTower",
    "TwoTowerConfig",
    "cosine_contrastive_loss",
    "fit_knn_embed",
    "retrieval_loss",
    "sampled_softmax_loss",
    "spherical_kmeans",
]
