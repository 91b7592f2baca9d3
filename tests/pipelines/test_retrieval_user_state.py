"""The compact user state against the dense kNN-Embed computation: the stored mixtures (known
users) and the reference index (new users) give the dense candidates exactly when the store
keeps every cluster in float32 and the index holds every user, and nearly the same otherwise;
the exported bundle (no dense user table) serves both through onnxruntime."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from plexus.pipelines.retrieval.evaluate import csr_rows
from plexus.pipelines.retrieval.synthetic import planted_bundle
from plexus.pipelines.retrieval.user_state import build_user_state
from plexus.serving import index as item_index
from plexus.serving.bundle import Bundle, search_mixture
from plexus.serving.user_state import UserStateConfig, WeightDtype

K = 10
EXACT = UserStateConfig(weight_dtype=WeightDtype.FLOAT32)  # M = 8 >= C = 6, all 120 users


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder, data, _, module, state = planted_bundle(
        tmp_path_factory.mktemp("user_state") / "bundle", seed=3, epochs=8, user_state=EXACT
    )
    items = module.model.all_item_vectors().detach().numpy()
    clusters = state.item_clusters.numpy()
    index = item_index.build_cluster_index(
        items[1:], clusters[1:], state.centroids.numpy(), np.arange(1, data.num_items + 1)
    )
    return folder, data, module, state, index


def _dense(exported, *, new_users: bool) -> tuple[np.ndarray, np.ndarray]:
    """Candidates (U, K) internal ids and scores of the dense computation for every user from
    its stored history, as itself (known) or as an anonymous history (new)."""
    _, data, module, state, index = exported
    users = np.arange(1, data.num_users + 1)
    asking = torch.zeros(users.size, dtype=torch.long) if new_users else torch.from_numpy(users)
    hist = torch.from_numpy(data.model_histories(module.model.config)[users])
    with torch.no_grad():
        query, own, components = module(asking, hist, (hist > 0).float())
    mixture = module.smoothed_mixture(asking, query, own, state).numpy()
    excluded = csr_rows(data.train_indptr, data.train_items, users)
    clusters = state.item_clusters.numpy()
    bundle_allocation = Bundle.load(exported[0]).allocation
    return search_mixture(
        index, clusters, mixture, components.numpy(), K, excluded, bundle_allocation
    )


def _untied(scores: np.ndarray) -> np.ndarray:
    gaps = np.abs(np.diff(scores, prepend=np.inf, append=-np.inf))
    return np.minimum(gaps[:-1], gaps[1:]) > 1e-5


@pytest.mark.parametrize("new_users", [False, True])
def test_bundle_gives_the_dense_candidates_for_known_and_new_users(exported, new_users) -> None:
    folder, data, *_ = exported
    bundle = Bundle.load(folder)  # a real onnxruntime session on a graph without user tables
    want_ids, want_scores = _dense(exported, new_users=new_users)
    users = np.arange(1, data.num_users + 1)
    if new_users:  # the whole training list as the request's history (excluded as seen)
        histories = [data.item_ids[data.train_of(int(u))].tolist() for u in users]
        got = bundle.recommend_batch([None] * users.size, histories, k=K)
    else:
        got = bundle.recommend_batch([int(u) for u in data.user_ids[users]], k=K)
    for row in range(users.size):
        np.testing.assert_allclose(got[row].scores, want_scores[row], atol=1e-5)
        keep = _untied(want_scores[row])
        assert got[row].item_ids[keep].tolist() == data.item_ids[want_ids[row][keep]].tolist()


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([np.intersect1d(x, y).size / K for x, y in zip(a, b, strict=True)]))


def test_compact_store_and_sampled_index_stay_close_to_dense(exported) -> None:
    """M = 3 of 6 clusters in float16, and an index over half the users: the candidates agree
    with the dense ones on >= 90 % of the top 10 on average (measured: 0.995 known users,
    0.973 new users; seed 3)."""
    _, data, module, state, index = exported
    compact = build_user_state(
        module,
        state,
        data,
        UserStateConfig(top_clusters=3, reference_users=data.num_users // 2),
    )
    assert compact.mixtures.clusters.shape == (data.num_users + 1, 3)
    assert len(compact.reference) == data.num_users // 2
    users = np.arange(1, data.num_users + 1)
    hist = torch.from_numpy(data.model_histories(module.model.config)[users])
    excluded = csr_rows(data.train_indptr, data.train_items, users)
    clusters = state.item_clusters.numpy()
    allocation = Bundle.load(exported[0]).allocation
    for new_users in (False, True):
        asking = np.zeros(users.size, np.int64) if new_users else users
        with torch.no_grad():
            query, own, components = module(torch.from_numpy(asking), hist, (hist > 0).float())
        stored = np.full(users.size, not new_users)
        mixture = compact.mixture(asking, query.numpy(), own.numpy(), stored)
        got, _ = search_mixture(
            index, clusters, mixture, components.numpy(), K, excluded, allocation
        )
        want, _ = _dense(exported, new_users=new_users)
        assert _overlap(got, want) >= 0.9, (new_users, _overlap(got, want))


def test_the_hnsw_batch_step_finds_the_exact_neighbours_and_mixtures(exported) -> None:
    """The export's HNSW search (what `auto` uses past `exact_users`) against the exact one on
    the same users: nearly the same neighbours, never the user itself, and the stored mixtures
    equal to the exact ones (float32, every cluster kept) where the neighbours agree."""
    from plexus.pipelines.retrieval.user_state import HnswUsers
    from plexus.serving.user_state import NeighborSearch

    _, data, module, state, _ = exported
    users = torch.arange(1, data.num_users + 1)
    hist = torch.from_numpy(data.model_histories(module.model.config)[users.numpy()])
    with torch.no_grad():
        query, _, _ = module(users, hist, (hist > 0).float())
    exact = module.nearest_users(users, query, state)
    approx = HnswUsers(state.user_table, module.neighbors)(users, query)
    assert approx.shape == exact.shape
    assert not (approx == users.unsqueeze(1)).any() and (approx > 0).all()
    found = [np.intersect1d(a, e).size for a, e in zip(approx, exact, strict=True)]
    recall = np.mean(found) / exact.shape[1]
    assert recall >= 0.95, recall

    same = (torch.sort(approx).values == torch.sort(exact).values).all(dim=1).numpy()
    assert same.mean() >= 0.8
    stores = {
        search: build_user_state(
            module, state, data, dataclasses.replace(EXACT, neighbor_search=search)
        ).mixtures
        for search in (NeighborSearch.EXACT, NeighborSearch.HNSW)
    }
    rows = users.numpy()[same]
    np.testing.assert_allclose(
        stores[NeighborSearch.HNSW].dense(rows, state.centroids.shape[0]),
        stores[NeighborSearch.EXACT].dense(rows, state.centroids.shape[0]),
        atol=1e-6,
    )


def test_auto_search_is_exact_up_to_its_user_count() -> None:
    auto = UserStateConfig(exact_users=1_000)
    assert auto.exact_for(1_000) and not auto.exact_for(1_001)
    assert UserStateConfig(neighbor_search="exact", exact_users=0).exact_for(10**7)
    assert not UserStateConfig(neighbor_search="hnsw").exact_for(10)


def test_the_bundle_history_is_each_users_training_list_and_last_window(exported) -> None:
    folder, data, module, *_ = exported
    bundle = Bundle.load(folder)
    length = module.model.config.history_len
    windows = data.histories(length)
    longer = 0
    for user in range(1, data.num_users + 1):
        items, window = bundle.history.both(user)
        trained = data.train_of(user)
        longer += trained.size > length
        np.testing.assert_array_equal(items, np.sort(trained))
        np.testing.assert_array_equal(window, np.sort(windows[user][windows[user] > 0]))
    assert longer > 0  # some users' lists are longer than the query model's window


def test_a_store_cut_at_the_allocations_components_gives_the_same_candidates(exported) -> None:
    """The export keeps at most `allocation.max_components` clusters a user: the allocation
    reads no more, so the known users' candidates equal those of the store with every cluster."""
    from plexus.pipelines.retrieval.config import RetrievalExportConfig
    from plexus.serving.knn_embed import AllocationConfig

    _, data, module, state, index = exported
    export = RetrievalExportConfig(allocation=AllocationConfig(max_components=3), user_state=EXACT)
    assert export.stored_user_state.top_clusters == 3 < EXACT.top_clusters
    users = np.arange(1, data.num_users + 1)
    hist = torch.from_numpy(data.model_histories(module.model.config)[users])
    excluded = csr_rows(data.train_indptr, data.train_items, users)
    with torch.no_grad():
        query, own, components = module(torch.from_numpy(users), hist, (hist > 0).float())
    found = []
    for config in (EXACT, export.stored_user_state):
        store = build_user_state(module, state, data, config)
        mixture = store.mixture(users, query.numpy(), own.numpy(), np.ones(users.size, bool))
        found.append(
            search_mixture(
                index,
                state.item_clusters.numpy(),
                mixture,
                components.numpy(),
                K,
                excluded,
                export.allocation,
            )
        )
    np.testing.assert_array_equal(found[0][0], found[1][0])
    np.testing.assert_allclose(found[0][1], found[1][1], atol=1e-6)
