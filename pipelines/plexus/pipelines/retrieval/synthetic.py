"""Planted multi-interest interactions: the fixture that tests (and smoke runs) assert on.

Items fall into `num_groups` interest groups; each user has 2-3 interests with unequal weights
and draws its items from them, so a good retriever must cover a user's minor interests too.
The log is written in the LightGCN format and goes through the ingest like any other.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from plexus.pipelines.retrieval.data import Interactions, ingest_interactions


def write_lightgcn(
    folder: str | Path,
    train: Sequence[tuple[int, Sequence[int]]],
    test: Sequence[tuple[int, Sequence[int]]],
) -> Path:
    """Write (user, items) lists as a LightGCN-format folder (train.txt, test.txt)."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    for name, lists in (("train.txt", train), ("test.txt", test)):
        lines = [" ".join(map(str, [user, *items])) for user, items in lists if len(items)]
        (root / name).write_text("\n".join(lines) + "\n")
    return root


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


def planted_interests(
    *,
    num_users: int = 300,
    num_groups: int = 8,
    items_per_group: int = 25,
    per_user: int = 24,
    test_per_user: int = 6,
    dominant: float | None = None,
    seed: int = 0,
) -> tuple[Interactions, dict[int, np.ndarray]]:
    """-> (interactions, {external user id: its planted interest groups}); item g*P + j is in
    group g. Test items are drawn from the same interests as the training ones. `dominant`
    gives the first interest that share of the user's items (the rest split evenly)."""
    rng = np.random.default_rng(seed)
    planted: dict[int, np.ndarray] = {}
    train: list[tuple[int, list[int]]] = []
    test: list[tuple[int, list[int]]] = []
    for user in range(num_users):
        groups = rng.choice(num_groups, size=int(rng.integers(2, 4)), replace=False)
        if dominant is None:
            weights = np.sort(rng.dirichlet(np.full(groups.size, 2.0)))[::-1]
            weights = np.maximum(weights, 0.15)
            weights /= weights.sum()
        else:
            rest = (1.0 - dominant) / (groups.size - 1)
            weights = np.array([dominant] + [rest] * (groups.size - 1))
        planted[user] = groups
        total = per_user + test_per_user
        counts = np.maximum(1, np.round(weights * total).astype(int))
        items = np.concatenate(
            [
                g * items_per_group
                + rng.choice(items_per_group, size=min(c, items_per_group), replace=False)
                for g, c in zip(groups, counts, strict=True)
            ]
        )
        rng.shuffle(items)
        split = max(1, items.size - test_per_user)
        train.append((user, items[:split].tolist()))
        test.append((user, items[split:].tolist()))
    with tempfile.TemporaryDirectory() as tmp:
        data = ingest_lightgcn(write_lightgcn(Path(tmp) / "planted", train, test))
    return data, planted


def planted_bundle(
    directory: str | Path, *, seed: int = 0, epochs: int = 15, embedding: Any = None
) -> tuple[Path, Interactions, dict[int, np.ndarray], Any, Any]:
    """Train a tiny model on planted data and write its bundle: a smoke-run / test fixture.
    `embedding`: the towers' `EmbeddingConfig` (None: full tables).

    Returns (bundle folder, interactions, planted interests, KnnEmbedQuery, KnnEmbedState).
    """
    from plexus.models.retrieval import KnnEmbedConfig, TwoTowerConfig
    from plexus.pipelines.retrieval.compare import fit_knn_embed_query
    from plexus.pipelines.retrieval.export import write_retrieval_bundle
    from plexus.pipelines.retrieval.train import RetrievalTrainConfig, train_two_tower
    from plexus.platform.config import from_dict
    from plexus.serving.knn_embed import AllocationConfig

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
        history_len=model_cfg.history_len,
        allocation=AllocationConfig(),
    )
    return folder, data, planted, module, state
