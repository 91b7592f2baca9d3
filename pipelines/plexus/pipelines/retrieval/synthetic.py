"""Planted multi-interest interactions: the fixture that tests (and smoke runs) assert on.

Items fall into `num_groups` interest groups; each user has 2-3 interests with unequal weights
and draws its items from them, so a good retriever must cover a user's minor interests too.
The log is written in the LightGCN format and goes through the ingest like any other.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from plexus.pipelines.data.synth import planted_lists, write_lightgcn
from plexus.pipelines.retrieval.data import Interactions, ingest_interactions


def ingest_lightgcn(folder: str | Path, *, validation_users: int = 5000) -> Interactions:
    """Ingest a LightGCN-format folder into a temporary place and return its lists."""
    from plexus.pipelines.ingest import DataConfig
    from plexus.platform.config import from_dict

    config = from_dict(
        DataConfig,
        {
            "format": "lightgcn",
            "path": str(folder),
            "interactions": {"split": "given", "validation_users": validation_users},
        },
    )
    with tempfile.TemporaryDirectory() as tmp:
        _, data = ingest_interactions(config, Path(tmp) / "shards", progress=False)
    return data


def planted_interests(**planted: Any) -> tuple[Interactions, dict[int, np.ndarray]]:
    """`data.synth.planted_lists(**planted)` through the ingest: -> (interactions, {external
    user id: its planted interest groups})."""
    train, test, groups = planted_lists(**planted)
    with tempfile.TemporaryDirectory() as tmp:
        data = ingest_lightgcn(write_lightgcn(Path(tmp) / "planted", train, test))
    return data, groups


def planted_bundle(
    directory: str | Path,
    *,
    seed: int = 0,
    epochs: int = 15,
    embedding: Any = None,
    user_state: Any = None,
    popularity_prior: float = 0.0,
) -> tuple[Path, Interactions, dict[int, np.ndarray], Any, Any]:
    """Train a tiny model on planted data and write its bundle: a smoke-run / test fixture.
    `embedding`: the towers' `EmbeddingConfig` (None: full tables); `user_state`: the bundle's
    `UserStateConfig` (None: the default compact store); `popularity_prior`: the bundle's
    `export.popularity_prior`.

    Returns (bundle folder, interactions, planted interests, KnnEmbedQuery, KnnEmbedState).
    """
    from plexus.models.retrieval import KnnEmbedConfig, TwoTowerConfig
    from plexus.pipelines.retrieval.compare import fit_knn_embed_query
    from plexus.pipelines.retrieval.export import write_retrieval_bundle
    from plexus.pipelines.retrieval.train import RetrievalTrainConfig, train_two_tower
    from plexus.pipelines.retrieval.user_state import build_user_state
    from plexus.platform.config import from_dict
    from plexus.serving.knn_embed import AllocationConfig
    from plexus.serving.user_state import UserStateConfig

    data, planted = planted_interests(
        num_users=120, num_groups=6, items_per_group=20, per_user=16, test_per_user=4, seed=seed
    )
    model_cfg = TwoTowerConfig(dim=16, history_len=12)
    train_cfg = from_dict(
        RetrievalTrainConfig,
        {
            "epochs": epochs,
            "batch_size": 128,
            "num_negatives": 64,
            "lr": 0.02,
            "loss": "sampled_softmax",
            "temperature": 0.2,
            "threads": 1,
            "seed": seed,
        },
    )
    model, _ = train_two_tower(data, model_cfg, train_cfg, embedding=embedding)
    knn_cfg = KnnEmbedConfig(num_clusters=6, neighbors=5, seed=seed)
    module, state = fit_knn_embed_query(model, data, knn_cfg)
    folder, _ = write_retrieval_bundle(
        directory,
        name="planted",
        module=module,
        state=state,
        data=data,
        users=build_user_state(module, state, data, user_state or UserStateConfig()),
        history_len=model_cfg.history_len,
        allocation=AllocationConfig(),
        popularity_prior=popularity_prior,
    )
    return folder, data, planted, module, state
