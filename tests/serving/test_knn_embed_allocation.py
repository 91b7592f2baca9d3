"""kNN-Embed query-time numpy: allocation of K over a mixture, and merging per-component lists."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from plexus.platform.errors import ConfigError
from plexus.serving.knn_embed import (
    AllocationConfig,
    ComponentPlan,
    allocate,
    cap_allocation,
    merge_components,
    plan_components,
)


def test_allocation_is_proportional_with_largest_remainder() -> None:
    alloc = allocate(np.array([[0.5, 0.3, 0.2], [0.34, 0.33, 0.33]]), 10, floor_components=0)
    assert alloc.tolist() == [[5, 3, 2], [4, 3, 3]]


def test_floor_gives_top_components_a_minimum_and_max_components_caps() -> None:
    weights = np.array([[0.96, 0.02, 0.01, 0.01]])
    assert allocate(weights, 20, floor_components=0).tolist() == [[19, 1, 0, 0]]
    floored = allocate(weights, 20, floor_components=3, floor_fraction=0.1)
    assert floored[0, :3].min() >= 2 and floored.sum() == 20
    capped = allocate(weights, 20, max_components=1)
    assert capped.tolist() == [[20, 0, 0, 0]]


def test_zero_weights_fall_back_to_the_top_component() -> None:
    assert allocate(np.zeros((1, 3)), 5).sum() == 5


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 6),
    st.integers(1, 9),
    st.integers(1, 300),
    st.integers(0, 4),
    st.floats(0.0, 0.5),
    st.integers(0, 2**31),
)
def test_allocation_always_sums_to_k(
    batch, comps, k, floor_components, floor_fraction, seed
) -> None:
    weights = np.random.default_rng(seed).dirichlet(np.ones(comps), size=batch)
    weights[weights < 0.05] = 0.0
    alloc = allocate(weights, k, floor_components=floor_components, floor_fraction=floor_fraction)
    assert (alloc.sum(axis=1) == k).all()
    assert (alloc >= 0).all()
    assert (alloc[weights == 0] == 0).all() or (weights == 0).all(axis=1).any()


def test_allocation_config_validates() -> None:
    with pytest.raises(ConfigError, match="max_components"):
        AllocationConfig(max_components=0)


def test_merge_keeps_shares_dedupes_excludes_and_backfills() -> None:
    # User 0 has two components (clusters 0 and 1) wanting 2 + 2 items; cluster 1 runs short.
    plan = ComponentPlan(
        rows=np.array([0, 0]), clusters=np.array([0, 1]), counts=np.array([2, 2]), fetch=4
    )
    ids = np.array([[10, 11, 12, 13], [20, 10, -1, -1]])
    scores = np.array([[0.9, 0.8, 0.7, 0.6], [0.95, 0.5, -np.inf, -np.inf]], dtype=np.float32)
    out_ids, out_scores = merge_components(
        plan, ids, scores, batch=1, k=4, excluded=(np.array([0]), np.array([11]))
    )
    # 11 excluded; 10 deduplicated; share: 10, 12 (cluster 0), 20 (cluster 1); backfill 13.
    assert out_ids.tolist() == [[20, 10, 12, 13]]
    assert np.all(np.diff(out_scores[0, :3]) <= 0)


def test_plan_fetches_enough_to_survive_exclusions() -> None:
    alloc = np.array([[3, 0, 1]])
    plan = plan_components(alloc, excluded_per_cluster=np.array([[5, 0, 0]]), slack=2)
    assert plan.rows.tolist() == [0, 0] and plan.clusters.tolist() == [0, 2]
    assert plan.fetch == 3 + 5 + 2


def test_power_below_one_flattens_toward_minor_interests() -> None:
    weights = np.array([[0.81, 0.09, 0.09, 0.01]])
    proportional = allocate(weights, 20, floor_components=0)
    flat = allocate(weights, 20, floor_components=0, power=0.5)
    uniform = allocate(weights, 20, floor_components=0, power=0.0)
    assert flat[0, 0] < proportional[0, 0] and flat[0, 1] > proportional[0, 1]
    assert uniform.tolist() == [[5, 5, 5, 5]]


def test_cap_allocation_moves_the_surplus_of_small_clusters_to_the_next_interests() -> None:
    alloc = np.array([[80, 20, 0, 0], [10, 0, 0, 0]])
    capacity = np.array([[30, 50, 40, 5], [4, 3, 0, 100]])
    weights = np.array([[0.7, 0.3, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    capped = cap_allocation(alloc, capacity, weights)
    assert capped.tolist() == [[30, 50, 20, 0], [4, 0, 0, 6]]  # outside the mixture: most room
    assert (capped <= capacity).all() and capped.sum(axis=1).tolist() == [100, 10]
    tiny = cap_allocation(np.array([[9, 0]]), np.array([[2, 3]]), np.array([[1.0, 0.0]]))
    assert tiny.tolist() == [[2, 3]]  # the catalog holds only 5: all of it


def test_knn_embed_returns_k_items_like_single_vector_near_the_catalog_size(bundle_dirs) -> None:
    from plexus.serving.bundle import Bundle

    bundle = Bundle.load(bundle_dirs["v1"])
    for user in bundle.user_ids[1:11]:
        for k in (100, 300):
            diverse = bundle.recommend(user_id=int(user), k=k, diversify=True)
            single = bundle.recommend(user_id=int(user), k=k, diversify=False)
            assert len(diverse.item_ids) == len(single.item_ids) == k
            assert len(set(diverse.item_ids.tolist())) == k
