"""Retrieval models: a two-tower / MF candidate generator and the kNN-Embed multi-interest head.

`TwoTower` learns user and item vectors (user id and/or padded history + mask); `fit_knn_embed`
clusters the items and builds the tables that `KnnEmbedQuery` (an export-ready module of plain
gathers) turns into a mixture over interests and per-interest query vectors.
"""

from plexus.models.retrieval.config import KnnEmbedConfig, LossKind, QueryVariant, TwoTowerConfig
from plexus.models.retrieval.kmeans import spherical_kmeans
from plexus.models.retrieval.knn_embed import KnnEmbedQuery, KnnEmbedState, fit_knn_embed
from plexus.models.retrieval.loss import (
    cosine_contrastive_loss,
    retrieval_loss,
    sampled_softmax_loss,
)
from plexus.models.retrieval.two_tower import TwoTower

__all__ = [
    "KnnEmbedConfig",
    "KnnEmbedQuery",
    "KnnEmbedState",
    "LossKind",
    "QueryVariant",
    "TwoTower",
    "TwoTowerConfig",
    "cosine_contrastive_loss",
    "fit_knn_embed",
    "retrieval_loss",
    "sampled_softmax_loss",
    "spherical_kmeans",
]
