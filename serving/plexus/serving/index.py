"""The item index: a FAISS inverted-file index whose lists ARE the kNN-Embed interest clusters.

Items are added to the inverted list of their interest cluster (preassigned, not re-clustered),
with faiss ids = internal item ids. That gives two searches from one index:

* `search_clusters`: the nearest items to each query *inside one given cluster* (kNN-Embed),
  exact within the cluster, for any number of (query, cluster) pairs in ONE faiss call;
* `search`: plain single-vector ANN over `nprobe` lists (`nprobe = C` is exact).

Inner product on L2-normalised vectors (cosine). Imports faiss lazily so that an import of
`plexus.serving` never fails on a machine without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from plexus.platform.errors import RegistryError, require

__all__ = [
    "build_cluster_index",
    "search",
    "search_clusters",
    "exact_search",
    "index_recall",
    "save_index",
    "set_threads",
    "load_index",
]


def _faiss() -> Any:
    return require("faiss", "serve")


def build_cluster_index(
    vectors: np.ndarray, clusters: np.ndarray, centroids: np.ndarray, ids: np.ndarray
) -> Any:
    """An inner-product IVF-Flat index with item `i` stored in list `clusters[i]`.

    Shapes: vectors (N, D) float32, clusters (N,) int in [0, C), centroids (C, D), ids (N,) int64.
    """
    faiss = _faiss()
    from faiss.contrib.ivf_tools import add_preassigned

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    centroids = np.ascontiguousarray(centroids, dtype=np.float32)
    n_lists, dim = centroids.shape
    quantizer = faiss.IndexFlatIP(dim)
    quantizer.add(centroids)
    index = faiss.IndexIVFFlat(quantizer, dim, n_lists, faiss.METRIC_INNER_PRODUCT)
    index.is_trained = True
    index.own_fields = True
    quantizer.this.disown()
    index.nprobe = 1  # search_clusters relies on nprobe == 1; `search` passes its own nprobe
    add_preassigned(
        index,
        vectors,
        np.ascontiguousarray(clusters, dtype=np.int64),
        np.ascontiguousarray(ids, dtype=np.int64),
    )
    return index


def search(
    index: Any, queries: np.ndarray, k: int, *, nprobe: int
) -> tuple[np.ndarray, np.ndarray]:
    """Single-vector ANN: (Q, D) queries -> scores (Q, k) float32, ids (Q, k) int64 (-1 = none)."""
    faiss = _faiss()
    q = np.ascontiguousarray(queries, dtype=np.float32)
    params = faiss.SearchParametersIVF(nprobe=int(min(nprobe, index.nlist)))
    scores, ids = index.search(q, int(k), params=params)
    return scores, ids


def search_clusters(
    index: Any, queries: np.ndarray, clusters: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest items to each query inside its own cluster, in one faiss call.

    Shapes: queries (A, D), clusters (A,) -> scores (A, k), ids (A, k) (-1 past the list end).
    """
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if q.shape[0] == 0 or k <= 0:
        return np.zeros((q.shape[0], 0), np.float32), np.zeros((q.shape[0], 0), np.int64)
    if index.nprobe != 1:
        raise RegistryError("cluster index must keep nprobe=1; pass nprobe to search() instead")
    assign = np.ascontiguousarray(clusters, dtype=np.int64).reshape(-1, 1)
    coarse = np.zeros(assign.shape, dtype=np.float32)
    scores, ids = index.search_preassigned(q, int(k), assign, coarse)
    return scores, ids


def exact_search(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Brute-force top-k ids by inner product: the reference for `index_recall`. (Q, k) int64."""
    scores = np.asarray(queries, np.float32) @ np.asarray(vectors, np.float32).T
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(scores, top, axis=1).argsort(axis=1)[:, ::-1]
    return np.asarray(ids)[np.take_along_axis(top, order, axis=1)]


def index_recall(
    index: Any, vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int, *, nprobe: int
) -> float:
    """Recall@k of `search(nprobe)` against exact search: the share of exact top-k found."""
    truth = exact_search(vectors, ids, queries, k)
    _, found = search(index, queries, k, nprobe=nprobe)
    hits = sum(np.intersect1d(t, f).size for t, f in zip(truth, found, strict=True))
    return float(hits / truth.size)


def set_threads(threads: int) -> None:
    """faiss OpenMP threads for this process (1 is fastest for single requests and on busy hosts)."""
    _faiss().omp_set_num_threads(int(threads))


def save_index(index: Any, path: str | Path) -> Path:
    """Write the index to `path` (faiss binary format)."""
    _faiss().write_index(index, str(path))
    return Path(path)


def load_index(path: str | Path) -> Any:
    """Read an index written by `save_index`; fails with RegistryError if missing or unreadable."""
    file = Path(path)
    if not file.is_file():
        raise RegistryError(f"item index not found: {file}; the bundle is incomplete, re-export it")
    try:
        index = _faiss().read_index(str(file))
    except RuntimeError as exc:
        raise RegistryError(f"{file}: not a readable faiss index: {exc}") from exc
    index.nprobe = 1
    return index
