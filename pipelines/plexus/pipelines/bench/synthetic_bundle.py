"""The synthetic bundle of `plexus bench serve`: a clustered catalog, users with 1-3 interests,
a query model written directly as ONNX (no torch) and the user state built as the export builds
it. Also the tiny bundles of the serving tests (`tests/serving/conftest.py`)."""

from __future__ import annotations

import dataclasses
import datetime
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from plexus.serving import index as item_index
from plexus.serving.bundle import write_bundle
from plexus.serving.history import HistoryStore
from plexus.serving.knn_embed import AllocationConfig
from plexus.serving.user_state import (
    CompactMixtures,
    ReferenceIndex,
    UserState,
    UserStateConfig,
    sample_reference,
)

__all__ = ["build_synthetic_bundle", "synthetic_query_onnx", "synthetic_user_state"]


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def synthetic_query_onnx(
    path: Path,
    *,
    user_table: np.ndarray,
    item_table: np.ndarray,
    item_clusters: np.ndarray,
    centroids: np.ndarray,
    component_mix: float = 0.3,
) -> Path:
    """Write the bundle's query model as a plain ONNX graph (Gather, ReduceSum, MatMul).

    Tables: user (U+1, D), item (N+1, D) with row 0 = 0, item_clusters (N+1,), centroids (C, D).
    Inputs user (B,), history (B, L), history_mask (B, L); outputs query (B, D),
    history_mixture (B, C) and component_queries (B, C, D), as
    `plexus.serving.bundle.ONNX_OUTPUTS` requires.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    num_clusters, dim = centroids.shape
    init = [
        numpy_helper.from_array(np.ascontiguousarray(user_table, np.float32), "U"),
        numpy_helper.from_array(np.ascontiguousarray(item_table, np.float32), "I"),
        numpy_helper.from_array(np.maximum(item_clusters, 0).astype(np.int64), "IC"),
        numpy_helper.from_array(np.ascontiguousarray(centroids, np.float32), "CENT"),
        numpy_helper.from_array(np.arange(num_clusters, dtype=np.int64), "CIDS"),
        numpy_helper.from_array(np.array([1], np.int64), "ax1"),
        numpy_helper.from_array(np.array([-1], np.int64), "axl"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array(1e-12, np.float32), "eps"),
        numpy_helper.from_array(np.array(1.0 - component_mix, np.float32), "keep"),
        numpy_helper.from_array(np.array(component_mix, np.float32), "mix"),
    ]
    n = helper.make_node
    nodes = [
        n("Gather", ["U", "user"], ["ue"]),
        n("Gather", ["I", "history"], ["hv"]),
        n("Unsqueeze", ["history_mask", "axl"], ["m3"]),
        n("Mul", ["hv", "m3"], ["hvm"]),
        n("ReduceSum", ["hvm", "ax1"], ["hs"], keepdims=0),
        n("ReduceSum", ["history_mask", "ax1"], ["cnt"], keepdims=1),
        n("Max", ["cnt", "one"], ["cnt1"]),
        n("Div", ["hs", "cnt1"], ["hmean"]),
        n("Add", ["ue", "hmean"], ["q0"]),
        n("ReduceL2", ["q0"], ["qn"], axes=[-1], keepdims=1),
        n("Max", ["qn", "eps"], ["qn1"]),
        n("Div", ["q0", "qn1"], ["query"]),
        # Own interest distribution: the cluster histogram of the (masked) history.
        n("Gather", ["IC", "history"], ["hc"]),
        n("Unsqueeze", ["hc", "axl"], ["hc3"]),
        n("Equal", ["hc3", "CIDS"], ["eq"]),
        n("Cast", ["eq"], ["onehot"], to=TensorProto.FLOAT),
        n("Mul", ["onehot", "m3"], ["ohm"]),
        n("ReduceSum", ["ohm", "ax1"], ["counts"], keepdims=0),
        n("ReduceSum", ["counts", "axl"], ["total"], keepdims=1),
        n("Max", ["total", "one"], ["total1"]),
        n("Div", ["counts", "total1"], ["history_mixture"]),
        # Component queries: the query pulled towards each centroid. (B, 1, D) + (C, D)
        n("Unsqueeze", ["query", "ax1"], ["q3"]),
        n("Mul", ["q3", "keep"], ["q3k"]),
        n("Mul", ["CENT", "mix"], ["centm"]),
        n("Add", ["q3k", "centm"], ["c0"]),
        n("ReduceL2", ["c0"], ["cn"], axes=[-1], keepdims=1),
        n("Max", ["cn", "eps"], ["cn1"]),
        n("Div", ["c0", "cn1"], ["component_queries"]),
    ]
    graph = helper.make_graph(
        nodes,
        "plexus_synthetic_query",
        [
            helper.make_tensor_value_info("user", TensorProto.INT64, ["B"]),
            helper.make_tensor_value_info("history", TensorProto.INT64, ["B", "L"]),
            helper.make_tensor_value_info("history_mask", TensorProto.FLOAT, ["B", "L"]),
        ],
        [
            helper.make_tensor_value_info("query", TensorProto.FLOAT, ["B", dim]),
            helper.make_tensor_value_info(
                "history_mixture", TensorProto.FLOAT, ["B", num_clusters]
            ),
            helper.make_tensor_value_info(
                "component_queries", TensorProto.FLOAT, ["B", num_clusters, dim]
            ),
        ],
        init,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path


def synthetic_user_state(
    user_table: np.ndarray,
    item_table: np.ndarray,
    seen: np.ndarray,
    item_clusters: np.ndarray,
    num_clusters: int,
    *,
    config: UserStateConfig,
    neighbors: int = 10,
    smoothing: float = 0.3,
    chunk: int = 8192,
) -> UserState:
    """The user state of the synthetic model, built as the export builds it: each user's own
    history histogram smoothed with its `neighbors` nearest users' (searched in the reference
    sample, as the service does for new users; the export searches all users), compacted.

    Shapes: user_table (U+1, D), item_table (N+1, D), seen (U, L) internal item ids,
    item_clusters (N+1,)."""
    users, length = seen.shape

    def queries(rows: np.ndarray) -> np.ndarray:
        return _normalize(user_table[rows] + item_table[seen[rows - 1]].mean(axis=1))

    def histograms(rows: np.ndarray) -> np.ndarray:
        flat = np.arange(rows.size)[:, None] * num_clusters + item_clusters[seen[rows - 1]]
        counts = np.bincount(flat.ravel(), minlength=rows.size * num_clusters)
        return (counts.reshape(rows.size, num_clusters) / length).astype(np.float32)

    top, dtype = config.top_clusters, config.weight_dtype
    ref = sample_reference(users, config.reference_users, config.seed)
    reference = ReferenceIndex(
        ref, queries(ref), CompactMixtures.from_dense(histograms(ref), top=top, dtype=dtype)
    )
    state = UserState(
        mixtures=CompactMixtures.empty(users + 1, top, num_clusters, dtype),
        reference=reference,
        num_clusters=num_clusters,
        neighbors=neighbors,
        smoothing=smoothing,
    )
    for lo in range(1, users + 1, chunk):
        rows = np.arange(lo, min(lo + chunk, users + 1))
        mixture = state.smooth(histograms(rows), queries(rows), rows)
        part = CompactMixtures.from_dense(mixture, top=top, dtype=dtype)
        state.mixtures.clusters[rows] = part.clusters
        state.mixtures.weights[rows] = part.weights
    return state


def _recall(truth: np.ndarray, found: np.ndarray) -> float:
    hits = sum(np.intersect1d(t, f).size for t, f in zip(truth, found, strict=True))
    return float(hits / truth.size)


def build_synthetic_bundle(
    directory: str | Path,
    *,
    items: int = 1_000_000,
    users: int = 100_000,
    dim: int = 64,
    clusters: int | None = None,
    history_len: int = 20,
    noise: float = 1.0,
    target_recall: float = 0.95,
    recall_queries: int = 1000,
    seed: int = 0,
    name: str = "synthetic",
    user_state: UserStateConfig | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Write a bundle over a clustered synthetic catalog; returns (folder, info).

    `clusters` defaults to ~sqrt(items)/4 (256 at 1M): the IVF lists are the interest
    clusters. Item i (internal 1..N) has external id 10 * i; user u has 10 * u + 1.
    `user_state`: the store (default `UserStateConfig`: top 24 clusters, log8, a reference
    sample of 20,000 users), keeping at most the default allocation's `max_components` (16)
    clusters a user, as the export does.
    info: {"nprobe", "index_recall" (recall@100 vs exact at that nprobe), "recall_by_nprobe",
    "build_seconds", "user_state_bytes"}.
    """
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    c = clusters or max(4, int(np.sqrt(items) / 4))
    centers = _normalize(rng.standard_normal((c, dim), dtype=np.float32))
    sizes = rng.multinomial(items - c, rng.dirichlet(np.full(c, 5.0))) + 1
    item_cluster = rng.permutation(np.repeat(np.arange(c), sizes))
    vectors = centers[item_cluster] + rng.standard_normal((items, dim), dtype=np.float32) * (
        noise / np.sqrt(dim)
    )
    vectors = _normalize(vectors).astype(np.float32)
    centroids = _normalize(np.stack([vectors[item_cluster == j].mean(0) for j in range(c)]))
    # Users: 1-3 interests, histories drawn from them (internal item ids 1..N).
    by_cluster = np.argsort(item_cluster, kind="stable")
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    interests = rng.integers(0, c, size=(users, 3))
    n_int = rng.integers(1, 4, size=users)
    slot = np.floor(rng.random((users, history_len)) * n_int[:, None]).astype(np.int64)
    cl = np.take_along_axis(interests, slot, axis=1)
    pick = starts[cl] + np.floor(rng.random((users, history_len)) * sizes[cl]).astype(np.int64)
    seen = (by_cluster[pick] + 1).astype(np.int64)  # (U, L) internal ids
    user_table = np.zeros((users + 1, dim), np.float32)
    user_table[1:] = _normalize(rng.standard_normal((users, dim), dtype=np.float32)) * 0.2
    item_table = np.zeros((items + 1, dim), np.float32)
    item_table[1:] = vectors
    clusters_full = np.concatenate([[-1], item_cluster]).astype(np.int64)
    allocation = AllocationConfig()
    # the store keeps what the allocation reads, as the export does
    stored = (user_state or UserStateConfig(seed=seed)).capped(allocation.max_components)
    users_state = synthetic_user_state(
        user_table,
        item_table,
        seen,
        clusters_full,
        c,
        config=stored,
    )
    history = HistoryStore.build(
        np.concatenate([[0], np.arange(users + 1) * history_len]),
        seen.ravel(),
        num_items=items,
        window=history_len,
    )
    arrays = {
        "item_ids": np.concatenate([[-1], np.arange(1, items + 1) * 10]).astype(np.int64),
        "item_clusters": clusters_full,
        "item_popularity": np.bincount(seen.ravel(), minlength=items + 1).astype(np.float32),
        "user_ids": np.concatenate([[-1], np.arange(1, users + 1) * 10 + 1]).astype(np.int64),
        **history.arrays(),
        **users_state.arrays(),
    }
    ids = np.arange(1, items + 1, dtype=np.int64)
    index = item_index.build_cluster_index(vectors, item_cluster, centroids, ids)
    out = Path(directory)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = synthetic_query_onnx(
            Path(tmp) / "query.onnx",
            user_table=user_table,
            item_table=item_table,
            item_clusters=clusters_full,
            centroids=centroids,
        )
        # Real queries for the recall check: the model's own output for sampled users.
        import onnxruntime as ort

        sample = rng.choice(users, min(recall_queries, users), replace=False) + 1
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        hist = seen[sample - 1]
        (queries,) = session.run(
            ["query"],
            {"user": sample, "history": hist, "history_mask": np.ones(hist.shape, np.float32)},
        )
        del session
        k = min(100, items)
        truth = np.concatenate(
            [
                item_index.exact_search(vectors, ids, queries[lo : lo + 64], k)
                for lo in range(0, len(queries), 64)
            ]
        )
        recall_by_nprobe: dict[str, float] = {}
        nprobe = 1
        while True:
            _, found = item_index.search(index, queries, k, nprobe=nprobe)
            recall_by_nprobe[str(nprobe)] = _recall(truth, found)
            if recall_by_nprobe[str(nprobe)] >= target_recall or nprobe >= c:
                break
            nprobe = min(nprobe * 2, c)
        recall = recall_by_nprobe[str(nprobe)]
        manifest = {
            "name": name,
            "bundle_id": f"synthetic-{items}-{dim}-{seed}",
            "created_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "dim": dim,
            "history_len": history_len,
            "num_clusters": c,
            "scoring": "cosine",
            "retrieval": {"nprobe": nprobe, "allocation": dataclasses.asdict(allocation)},
            "user_state": users_state.manifest(),
            "history": history.manifest(),
            "index": {"kind": "ivf_flat_clusters", "nlist": c, "recall_vs_exact": {str(k): recall}},
            "metrics": {},
            "synthetic": {"noise": noise, "seed": seed, "users": users},
        }
        write_bundle(out, onnx_model=onnx_path, index=index, arrays=arrays, manifest=manifest)
    info = {
        "nprobe": nprobe,
        "index_recall": recall,
        "recall_by_nprobe": recall_by_nprobe,
        "clusters": c,
        "build_seconds": time.perf_counter() - started,
        "user_state_bytes": users_state.nbytes(),
    }
    return out, info
