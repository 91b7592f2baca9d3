"""The cluster index: in-cluster search is exact, full search with all lists is exact."""

from __future__ import annotations

import numpy as np
import pytest
from plexus.platform.errors import RegistryError
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


def test_an_item_prior_is_added_to_every_score() -> None:
    """The prior rides as an extra coordinate: full search, in-cluster search and exact search
    all rank by q . v + prior, and probing still follows the centroids alone."""
    x, assign, cent, ids = _data()
    prior = item_index.popularity_prior(np.arange(x.shape[0]) % 7 * 40.0, 0.3)
    index = item_index.build_cluster_index(x, assign, cent, ids, item_prior=prior)
    q = x[:20] + 0.05
    want = np.argsort(-(q @ x.T + prior), axis=1)[:, :10] + 1
    scores, found = item_index.search(index, q, 10, nprobe=6)
    assert found.tolist() == want.tolist()
    np.testing.assert_allclose(scores, np.sort(q @ x.T + prior, axis=1)[:, ::-1][:, :10], atol=1e-5)
    assert item_index.exact_search(x, ids, q, 10, item_prior=prior).tolist() == want.tolist()
    assert item_index.index_recall(index, x, ids, q, 10, nprobe=6, item_prior=prior) == 1.0
    plain = item_index.exact_search(x, ids, q, 10)
    assert plain.tolist() != want.tolist()  # the prior does reorder these lists
    _, in_cluster = item_index.search_clusters(index, q[:6], np.arange(6), 5)
    for row in range(6):
        members = np.nonzero(assign == row)[0]
        best = members[np.argsort(-(x[members] @ q[row] + prior[members]))[:5]] + 1
        valid = in_cluster[row][in_cluster[row] >= 0]
        assert valid.tolist() == best[: valid.size].tolist()
    # probing by the query's nearest list: the same list with the prior as without it
    nearest = np.argmax(q @ cent.T, axis=1)
    _, one_list = item_index.search(index, q, 3, nprobe=1)
    assert np.all(
        assign[one_list[one_list >= 0] - 1] == np.repeat(nearest, 3)[one_list.ravel() >= 0]
    )
    assert prior[0] == 0.0  # items never trained on get no prior


def test_queries_of_another_width_are_refused() -> None:
    x, assign, cent, ids = _data()
    index = item_index.build_cluster_index(x, assign, cent, ids)
    with pytest.raises(RegistryError, match="dimension 8"):
        item_index.search(index, np.ones((2, 5), np.float32), 3, nprobe=6)
