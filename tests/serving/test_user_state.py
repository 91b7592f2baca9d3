"""The compact user state: top-M mixtures, the new-user reference index, and the bundle format
that carries them instead of a dense user table (numpy + faiss only, no torch)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import reseal
from plexus.platform.errors import ConfigError, RegistryError
from plexus.serving.bundle import FORMAT_VERSION, Bundle
from plexus.serving.user_state import (
    CompactMixtures,
    ReferenceIndex,
    UserState,
    UserStateConfig,
    WeightDtype,
    sample_reference,
)


def _mixtures(rows: int, clusters: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dense = rng.dirichlet(np.full(clusters, 0.5), size=rows).astype(np.float32)
    dense[0] = 0.0
    return dense


def _unit(rows: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_compact_store_is_exact_when_m_covers_all_clusters() -> None:
    dense = _mixtures(50, 6)
    store = CompactMixtures.from_dense(dense, top=8, dtype=WeightDtype.FLOAT32)
    assert store.clusters.shape == (50, 6) and store.clusters.dtype == np.uint8
    np.testing.assert_allclose(store.dense(np.arange(50), 6), dense, atol=1e-6)


@pytest.mark.parametrize(
    ("dtype", "entry_bytes", "rtol"),
    [(WeightDtype.LOG8, 2, 0.05), (WeightDtype.FLOAT16, 3, 2e-3)],
)
def test_compact_store_keeps_the_top_m_renormalised(dtype, entry_bytes, rtol) -> None:
    """log8: +-2.2 % per weight before renormalising (<= 5 % after); float16: 3 digits."""
    dense = _mixtures(200, 32)
    store = CompactMixtures.from_dense(dense, top=8, dtype=dtype)
    assert store.clusters.dtype == np.uint8
    assert store.clusters.nbytes + store.weights.nbytes == 200 * 8 * entry_bytes
    got = store.dense(np.arange(200), 32)
    for row in range(1, 200):
        top = np.argsort(-dense[row], kind="stable")[:8]
        assert set(np.nonzero(got[row])[0]) <= set(top)
        expected = dense[row, top] / dense[row, top].sum()
        kept = expected > 2e-5  # log8 reaches down to 1.6e-5
        np.testing.assert_allclose(got[row, top][kept], expected[kept], rtol=rtol)
    assert got[0].sum() == 0.0
    wide = CompactMixtures.from_dense(_mixtures(3, 300), top=4, dtype=dtype)
    assert wide.clusters.dtype == np.uint16  # ids above 255


def _brute_force_neighbours(vectors, dists, ref, query, user, k) -> np.ndarray:
    sims = vectors[ref] @ query
    sims[ref == user] = -np.inf
    top = np.argsort(-sims, kind="stable")[:k]
    return dists[ref[top]].mean(axis=0)


def test_reference_index_is_the_brute_force_neighbour_mean_without_the_user_itself() -> None:
    users, clusters, dim = 300, 12, 16
    vectors, dists = _unit(users + 1, dim, 1), _mixtures(users + 1, clusters, 2)
    for size in (users, 100):  # every user, and a sample
        ref = sample_reference(users, size, seed=0)
        index = ReferenceIndex(
            ref,
            vectors[ref],
            CompactMixtures.from_dense(dists[ref], top=clusters, dtype=WeightDtype.FLOAT32),
        )
        asking = np.array([0, 5, int(ref[3]), 0])  # new users, known ones (one in the sample)
        query = vectors[np.array([7, 5, int(ref[3]), 9])]
        got = index.neighbour_mixture(query, asking, 4, clusters)
        for row in range(4):
            want = _brute_force_neighbours(vectors, dists, ref, query[row], asking[row], 4)
            np.testing.assert_allclose(got[row], want, atol=1e-5)


def test_user_state_serves_stored_rows_and_smooths_the_others() -> None:
    users, clusters, dim = 80, 5, 8
    vectors, dists = _unit(users + 1, dim, 3), _mixtures(users + 1, clusters, 4)
    stored = _mixtures(users + 1, clusters, 5)
    ref = sample_reference(users, 1000, seed=0)
    state = UserState(
        mixtures=CompactMixtures.from_dense(stored, top=clusters, dtype=WeightDtype.FLOAT32),
        reference=ReferenceIndex(
            ref, vectors[ref], CompactMixtures.from_dense(dists[ref], top=clusters)
        ),
        num_clusters=clusters,
        neighbors=3,
        smoothing=0.4,
    )
    own = np.zeros((3, clusters), np.float32)
    own[1, 2] = own[2, 0] = 1.0
    query = vectors[[4, 9, 11]]
    got = state.mixture(np.array([4, 0, 11]), query, own, np.array([True, False, False]))
    np.testing.assert_allclose(got[0], stored[4], atol=1e-6)
    for row, user in ((1, 0), (2, 11)):
        neigh = _brute_force_neighbours(vectors, dists, ref, query[row], user, 3)
        want = 0.6 * own[row] + 0.4 * neigh
        np.testing.assert_allclose(got[row], want / want.sum(), atol=2e-3)  # float16 dists
    empty = state.smooth(np.zeros((1, clusters), np.float32), query[:1], np.array([0]))
    np.testing.assert_allclose(empty.sum(), 1.0, atol=1e-6)  # no history: neighbours alone


def test_config_names_the_key() -> None:
    with pytest.raises(ConfigError, match="export.user_state.top_clusters"):
        UserStateConfig(top_clusters=0)
    with pytest.raises(ConfigError, match="export.user_state.weight_dtype"):
        UserStateConfig(weight_dtype="int8")


def test_bundle_has_no_dense_user_table_and_answers_known_and_new_users(bundle_dirs) -> None:
    import onnx

    folder = bundle_dirs["v1"]
    bundle = Bundle.load(folder)
    model = onnx.load(str(folder / "query.onnx"))
    by_rows = [
        tuple(t.dims)
        for t in model.graph.initializer
        if t.dims and t.dims[0] == bundle.num_users + 1
    ]
    assert by_rows == [(bundle.num_users + 1, bundle.dim)], by_rows  # the model's own table only
    state = bundle.user_state
    assert state.mixtures.clusters.shape[0] == bundle.num_users + 1
    assert state.mixtures.weights.dtype == np.uint8  # log8 by default
    known = bundle.recommend(user_id=int(bundle.user_ids[3]), k=10)
    new = bundle.recommend(history=bundle.item_ids[[1, 2, 3]].tolist(), k=10)
    assert len(known.item_ids) == len(new.item_ids) == 10


@pytest.mark.parametrize("version", [2, 3])
def test_older_bundle_formats_are_refused_with_the_version_and_what_to_do(
    bundle_dirs, tmp_path, version: int
) -> None:
    folder = tmp_path / "old"
    shutil.copytree(bundle_dirs["v1"], folder)
    manifest = json.loads((folder / "bundle.json").read_text())
    manifest["format_version"] = version
    (folder / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(RegistryError, match=rf"v{version} is not supported .*v4.*re-export"):
        Bundle.load(folder)
    assert FORMAT_VERSION == 4


@pytest.mark.parametrize("section", ["user_state", "history"])
def test_a_bundle_missing_a_manifest_section_is_refused(bundle_dirs, tmp_path, section) -> None:
    folder = tmp_path / "partial"
    shutil.copytree(bundle_dirs["v1"], folder)
    manifest = json.loads((folder / "bundle.json").read_text())
    del manifest[section]
    (folder / "bundle.json").write_text(json.dumps(manifest))
    reseal(folder, "query.onnx")
    with pytest.raises(RegistryError, match=f"{section}.*re-export"):
        Bundle.load(folder)
