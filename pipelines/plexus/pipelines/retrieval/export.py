"""Export: the kNN-Embed query side to ONNX (checked against torch) and the bundle folder.

The query model is exported with the dynamo exporter (the TorchScript one has no `bitwise_xor`,
which the hashed tables' in-graph hash needs): plain Gather, MatMul, TopK and the hash's integer
ops, with dynamic batch and history length, no EmbeddingBag offsets. The graph holds the
model's own user table only; known users' mixtures and the new-user index are the user state
(`plexus.pipelines.retrieval.user_state`), written beside it as compact arrays. With side
features the graph also holds each user's and item's feature ids (the smallest integer type
that fits: MovieLens-100K 8 bytes a user), so requests keep their inputs, and the item index
and `item_ids` also hold the catalog items never trained on (ids after the vocabulary).

The graph holds the towers' tables in their serving form (`served_query`: `TwoTower.compact`,
e.g. Dynamic Sparse Learning's row-compressed values, indices and pointers, gathered in the
graph), and the parity check compares it with the model as trained, so it covers both the
compact form and the export. The manifest's `export.embedding_bytes` gives those tables' bytes.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import json
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from plexus.models.retrieval import KnnEmbedQuery, KnnEmbedState
from plexus.pipelines.retrieval.data import Interactions
from plexus.pipelines.retrieval.evaluate import item_prior
from plexus.platform.feature_spec import Encoding, Feature, FeatureKind, FeatureSpec
from plexus.serving import index as item_index
from plexus.serving.bundle import ONNX_INPUTS, ONNX_OUTPUTS, write_bundle
from plexus.serving.history import HistoryStore
from plexus.serving.knn_embed import AllocationConfig
from plexus.serving.user_state import UserState

__all__ = [
    "default_nprobe",
    "export_query_model",
    "onnx_parity",
    "served_query",
    "write_retrieval_bundle",
]


def served_query(module: KnnEmbedQuery) -> KnnEmbedQuery:
    """A copy of `module` over the towers' serving form (`TwoTower.compact`): what the bundle's
    graph holds. Same outputs as `module` in eval mode."""
    compact = module.model.compact()
    return copy.deepcopy(module, {id(module.model): compact}).eval()  # towers copied once


def export_query_model(module: KnnEmbedQuery, path: str | Path, *, history_len: int) -> Path:
    """Write `module` as ONNX with inputs user (B,), history (B, L), history_mask (B, L)."""
    module = module.eval()
    example = (
        torch.tensor([1, 0], dtype=torch.int64),
        torch.ones(2, history_len, dtype=torch.int64),
        torch.ones(2, history_len, dtype=torch.float32),
    )
    batch, length = torch.export.Dim("batch", min=1), torch.export.Dim("length", min=1)
    # The exporter's notes (torchvision absent, pytree deprecations, merged dynamic axes)
    # are about torch itself, not the model: keep them out of the job's output.
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            warnings.filterwarnings("ignore", ".*axis name.*will not be used", UserWarning)
            torch.onnx.export(
                module,
                example,
                str(path),
                input_names=list(ONNX_INPUTS),
                output_names=list(ONNX_OUTPUTS),
                dynamic_shapes=({0: batch}, {0: batch, 1: length}, {0: batch, 1: length}),
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    finally:
        registration.setLevel(level)
    return Path(path)


def onnx_parity(
    module: KnnEmbedQuery,
    onnx_path: str | Path,
    *,
    num_users: int,
    num_items: int,
    history_len: int,
    batch: int = 64,
    seed: int = 0,
) -> float:
    """Max abs difference between torch and onnxruntime on random inputs (known users with and
    without history, history-only users, random padding). Trusted when <= 1e-5."""
    import onnxruntime as ort

    gen = torch.Generator().manual_seed(seed)
    user = torch.randint(0, num_users + 1, (batch,), generator=gen)
    user[: batch // 4] = 0
    history = torch.randint(1, num_items + 1, (batch, history_len), generator=gen)
    lengths = torch.randint(0, history_len + 1, (batch,), generator=gen)
    lengths[batch // 4 : batch // 2] = history_len
    lengths[::5] = 0  # some known users without a history, some unknown users without one
    mask = (torch.arange(history_len) < lengths.unsqueeze(1)).float()
    history = history * mask.long()
    with torch.no_grad():
        expected = module.eval()(user, history, mask)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(
        None, {"user": user.numpy(), "history": history.numpy(), "history_mask": mask.numpy()}
    )
    return float(max(np.abs(g - e.numpy()).max() for g, e in zip(got, expected, strict=True)))


def default_nprobe(num_items: int, num_clusters: int, *, exact_below: int = 200_000) -> int:
    """All lists (exact) for catalogs below `exact_below` items; else a quarter of the lists."""
    return num_clusters if num_items < exact_below else max(1, num_clusters // 4)


def write_retrieval_bundle(
    directory: str | Path,
    *,
    name: str,
    module: KnnEmbedQuery,
    state: KnnEmbedState,
    data: Interactions,
    users: UserState,
    history_len: int,
    allocation: AllocationConfig,
    nprobe: int | None = None,
    popularity_prior: float = 0.0,
    metrics: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    recall_queries: int = 1000,
) -> tuple[Path, dict[str, Any]]:
    """Export, check and write the whole bundle; returns (folder, export info: parity, index recall).

    `popularity_prior` > 0 stores each item's prior in the index (`item_prior`), so the service
    ranks as the offline evaluation did.

    Raises if the ONNX model (of the serving form, `served_query`) differs from torch (the
    model as trained) by more than 1e-5.
    """
    from plexus.models.embeddings import protocol
    from plexus.platform.errors import RegistryError

    out = Path(directory)
    served = served_query(module)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_query_model(served, Path(tmp) / "query.onnx", history_len=history_len)
        parity = onnx_parity(
            module,
            onnx_path,
            num_users=data.num_users,
            num_items=module.model.num_items,
            history_len=history_len,
        )
        if parity > 1e-5:
            raise RegistryError(
                f"ONNX export differs from torch by {parity:.2e} (> 1e-5); not written"
            )
        with torch.no_grad():
            vectors = module.model.all_item_vectors()[1:].numpy().astype(np.float32)
        centroids = state.centroids.numpy().astype(np.float32)
        clusters = state.item_clusters.numpy().astype(np.int64)
        ids = np.arange(1, vectors.shape[0] + 1, dtype=np.int64)  # catalog items after N
        prior = item_prior(data, vectors.shape[0] + 1, popularity_prior)
        prior = None if prior is None else prior[1:]
        index = item_index.build_cluster_index(
            vectors, clusters[1:], centroids, ids, item_prior=prior
        )
        num_clusters = centroids.shape[0]
        probe = nprobe or default_nprobe(data.num_items, num_clusters)
        sample = users.reference.index.reconstruct_n(0, len(users.reference))
        pick = np.random.default_rng(0).choice(
            len(sample), min(recall_queries, len(sample)), replace=False
        )
        recall = {
            str(k): item_index.index_recall(
                index, vectors, ids, sample[pick], k, nprobe=probe, item_prior=prior
            )
            for k in (20, 100)
            if k <= data.num_items
        }
        spec = FeatureSpec(
            name=f"{name}-retrieval",
            label="",
            features=(
                Feature(
                    name="user_id",
                    kind=FeatureKind.CATEGORICAL,
                    encoding=Encoding.VOCAB,
                    cardinality=data.num_users + 1,
                ),
                Feature(
                    name="history",
                    kind=FeatureKind.MULTI_CATEGORICAL,
                    encoding=Encoding.VOCAB,
                    cardinality=vectors.shape[0] + 1,
                    max_length=history_len,
                ),
            ),
            source={"data": data.name},
            splits={"train": int(data.train_items.size), "test": int(data.test_items.size)},
        )
        scored = vectors.tobytes() + (b"" if prior is None else prior.tobytes())
        digest = hashlib.sha256(onnx_path.read_bytes() + scored).hexdigest()[:16]
        table_bytes = protocol.embedding_bytes(served.model)  # the graph's user and item tables
        info = {
            "onnx_max_abs_diff": parity,
            "index_recall_vs_exact": recall,
            "nprobe": probe,
            "embedding_bytes": table_bytes,
        }
        history = HistoryStore.build(
            data.train_indptr,
            data.train_items,
            num_items=int(vectors.shape[0]),
            window=int(history_len),
        )
        manifest = {
            "name": name,
            "bundle_id": digest,
            "created_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "dim": int(vectors.shape[1]),
            "history_len": int(history_len),
            "num_clusters": int(num_clusters),
            "scoring": "cosine + popularity_prior * log1p(item_popularity)"
            if prior is not None
            else "cosine",
            "retrieval": {
                "nprobe": int(probe),
                "allocation": _asdict(allocation),
                "popularity_prior": float(popularity_prior),
            },
            "user_state": users.manifest(),
            "history": history.manifest(),
            "index": {
                "kind": "ivf_flat_clusters",
                "nlist": int(num_clusters),
                "recall_vs_exact": recall,
            },
            "export": {"onnx_max_abs_diff": parity, "embedding_bytes": table_bytes},
            "metrics": metrics or {},
        }
        arrays = {
            "item_ids": data.all_item_ids[: vectors.shape[0] + 1],
            "item_clusters": clusters,
            "item_popularity": np.pad(
                data.item_popularity(), (0, vectors.shape[0] - data.num_items)
            ),
            "user_ids": data.user_ids,
            **history.arrays(),
            **users.arrays(),
        }
        write_bundle(
            out,
            onnx_model=onnx_path,
            index=index,
            arrays=arrays,
            manifest=manifest,
            extra_files={
                "feature_spec.json": spec.to_json(),
                "config.json": json.dumps(config or {}, indent=1, sort_keys=True),
                "metrics.json": json.dumps(metrics or {}, indent=1, sort_keys=True),
            },
        )
    return out, info


def _asdict(allocation: AllocationConfig) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(allocation)
