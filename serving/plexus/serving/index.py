"""The item index: a FAISS inverted-file index whose lists ARE the kNN-Embed interest clusters.

Items are added to the inverted list of their interest cluster (preassigned, not re-clustered),
with faiss ids = internal item ids. That gives two searches from one index:

* `search_clusters`: the nearest items to each query *inside one given cluster* (kNN-Embed),
  exact within the cluster, for any number of (query, cluster) pairs in ONE faiss call;
* `search`: plain single-vector ANN over `nprobe` lists (`nprobe = C` is exact).

Inner product on L2-normalised vectors (cosine), plus an optional additive score per item (the
popularity prior, `popularity_prior`): it is stored as one more coordinate of every item vector,
0 in the centroids' (so which lists a query probes does not change), and every search appends a
1 to its queries, so faiss ranks by q . v + prior(item) exactly. Imports faiss lazily so that an
import of `plexus.serving` never fails on a machine without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from plexus.platform.errors import RegistryError, require

__all__ = [
    "build_cluster_index",
    "popularity_prior",
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


def popularity_prior(popularity: np.ndarray, weight: float) -> np.ndarray:
    """The additive score of each item: `weight * log(1 + training interactions)`, float32.

    Cosine scores are bounded and the towers' loss (SimpleX's CCL) puts no popularity into them,
    while the next items users pick are skewed to popular ones; a log-count prior with its
    weight chosen on the validation hold-out (`plexus bench retrieval --tune-prior`) restores it.
    Items never trained on (count 0) get 0."""
    return (float(weight) * np.log1p(np.asarray(popularity, dtype=np.float64))).astype(np.float32)


def build_cluster_index(
    vectors: np.ndarray,
    clusters: np.ndarray,
    centroids: np.ndarray,
    ids: np.ndarray,
    *,
    item_prior: np.ndarray | None = None,
) -> Any:
    """An inner-product IVF-Flat index with item `i` stored in list `clusters[i]`.

    Shapes: vectors (N, D) float32, clusters (N,) int in [0, C), centroids (C, D), ids (N,) int64,
    `item_prior` (N,): an additive score per item (`popularity_prior`), kept as coordinate D.
    """
    faiss = _faiss()
    from faiss.contrib.ivf_tools import add_preassigned

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    centroids = np.ascontiguousarray(centroids, dtype=np.float32)
    if item_prior is not None:
        vectors = np.hstack([vectors, _column(item_prior, vectors.shape[0])])
        centroids = np.hstack([centroids, np.zeros((centroids.shape[0], 1), np.float32)])
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


def _column(values: np.ndarray, rows: int) -> np.ndarray:
    column = np.asarray(values, dtype=np.float32).reshape(-1, 1)
    if column.shape[0] != rows:
        raise RegistryError(f"item_prior has {column.shape[0]} values for {rows} items")
    return column


def _queries(index: Any, queries: np.ndarray) -> np.ndarray:
    """(Q, D) queries as the index takes them: a 1 appended where the index keeps a prior."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if q.ndim == 2 and q.shape[1] == index.d - 1:
        return np.hstack([q, np.ones((q.shape[0], 1), np.float32)])
    if q.ndim != 2 or q.shape[1] != index.d:
        raise RegistryError(
            f"queries of shape {q.shape} for an item index of dimension {index.d}; the query "
            "model and the index come from different bundles, re-export it"
        )
    return q


def search(
    index: Any, queries: np.ndarray, k: int, *, nprobe: int
) -> tuple[np.ndarray, np.ndarray]:
    """Single-vector ANN: (Q, D) queries -> scores (Q, k) float32, ids (Q, k) int64 (-1 = none)."""
    faiss = _faiss()
    q = _queries(index, queries)
    params = faiss.SearchParametersIVF(nprobe=int(min(nprobe, index.nlist)))
    scores, ids = index.search(q, int(k), params=params)
    return scores, ids


def search_clusters(
    index: Any, queries: np.ndarray, clusters: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest items to each query inside its own cluster, in one faiss call.

    Shapes: queries (A, D), clusters (A,) -> scores (A, k), ids (A, k) (-1 past the list end).
    """
    q = _queries(index, queries)
    if q.shape[0] == 0 or k <= 0:
        return np.zeros((q.shape[0], 0), np.float32), np.zeros((q.shape[0], 0), np.int64)
    if index.nprobe != 1:
        raise RegistryError("cluster index must keep nprobe=1; pass nprobe to search() instead")
    assign = np.ascontiguousarray(clusters, dtype=np.int64).reshape(-1, 1)
    coarse = np.zeros(assign.shape, dtype=np.float32)
    scores, ids = index.search_preassigned(q, int(k), assign, coarse)
    return scores, ids


def exact_search(
    vectors: np.ndarray,
    ids: np.ndarray,
    queries: np.ndarray,
    k: int,
    *,
    item_prior: np.ndarray | None = None,
) -> np.ndarray:
    """Brute-force top-k ids by inner product (plus `item_prior`): the reference for
    `index_recall`. (Q, k) int64."""
    scores = np.asarray(queries, np.float32) @ np.asarray(vectors, np.float32).T
    if item_prior is not None:
        scores += _column(item_prior, scores.shape[1]).T
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(scores, top, axis=1).argsort(axis=1)[:, ::-1]
    return np.asarray(ids)[np.take_along_axis(top, order, axis=1)]


def index_recall(
    index: Any,
    vectors: np.ndarray,
    ids: np.ndarray,
    queries: np.ndarray,
    k: int,
    *,
    nprobe: int,
    item_prior: np.ndarray | None = None,
) -> float:
    """Recall@k of `search(nprobe)` against exact search: the share of exact top-k found."""
    truth = exact_search(vectors, ids, queries, k, item_prior=item_prior)
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
