"""The cluster index: in-cluster search is exact, full search with all lists is exact."""

from __future__ import annotations

import numpy as np
from plexus.serving import index as item_index


def _data(n: int = 300, d: int = 8, c: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    cent = x[rng.choice(n, c, replace=False)]
    assign = np.argmax(x @ cent.T, axis=1)
    return x, assign, cent, np.arange(1, n + 1)


def test_search_clusters_returns_exact_in_cluster_neighbours(tmp_path) -> None:
    x, assign, cent, ids = _data()
    index = item_index.load_index(
        item_index.save_index(item_index.build_cluster_index(x, assign, cent, ids), tmp_path / "i")
    )
    q = x[:5] + 0.1
    clusters = np.array([0, 1, 2, 3, 4])
    scores, found = item_index.search_clusters(index, q, clusters, 5)
    for row in range(5):
        members = np.nonzero(assign == clusters[row])[0]
        best = ids[members[np.argsort(-(x[members] @ q[row]))[:5]]]
        valid = found[row][found[row] >= 0]
        assert valid.tolist() == best[: valid.size].tolist()
        assert np.all(assign[valid - 1] == clusters[row])


def test_full_search_with_all_lists_is_exact() -> None:
    x, assign, cent, ids = _data()
    index = item_index.build_cluster_index(x, assign, cent, ids)
    assert item_index.index_recall(index, x, ids, x[:50], 10, nprobe=6) == 1.0
    assert item_index.index_recall(index, x, ids, x[:50], 10, nprobe=1) < 1.0
