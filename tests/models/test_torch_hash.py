"""The in-model hash: torch, its numpy reference and onnxruntime agree bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from plexus.models.layers.hashing import hash_bucket, seed_tensors
from plexus.platform import hashing as ref
from plexus.platform.hashing import feature_seed, seed_halves

EDGES = np.array(
    [
        0,
        1,
        -1,
        2,
        -2,
        2**31 - 1,
        2**31,
        2**32 - 1,
        2**32,
        -(2**32),
        2**63 - 1,
        -(2**63),
        -(2**63) + 1,
    ],
    dtype=np.int64,
)


def _ids(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    wide = rng.integers(-(2**63), 2**63 - 1, n, dtype=np.int64, endpoint=True)
    small = rng.integers(0, 1000, n // 4, dtype=np.int64)
    return np.concatenate([EDGES, wide, small])


@pytest.mark.parametrize("num_buckets", [1, 7, 1000, 2**31])
def test_torch_matches_the_numpy_reference(num_buckets: int) -> None:
    ids = _ids(20_000)
    for probe in range(3):
        seed = feature_seed("site_id", probe)
        lo, hi = seed_halves(seed)
        got = hash_bucket(torch.from_numpy(ids), lo, hi, num_buckets).numpy()
        np.testing.assert_array_equal(got, ref.hash_bucket(ids, seed, num_buckets))
        assert got.min() >= 0 and got.max() < num_buckets


@pytest.mark.parametrize("num_buckets", [1, 1000, 2**31])
def test_training_path_matches_the_exportable_one(num_buckets: int) -> None:
    ids = torch.from_numpy(_ids(20_000, seed=2))
    lo, hi = seed_halves(feature_seed("site_id", 1))
    exported = hash_bucket(ids, lo, hi, num_buckets)
    fast = hash_bucket(ids, lo, hi, num_buckets, exportable=False)
    torch.testing.assert_close(fast, exported, rtol=0, atol=0)


def test_per_id_seed_tensors_match_scalar_seeds() -> None:
    ids = _ids(1000, seed=1)
    seeds = [feature_seed("a", 0), feature_seed("b", 1)]
    lo, hi = seed_tensors(seeds)
    which = torch.arange(len(ids)) % 2
    buckets = torch.tensor([97, 1009])[which]
    got = hash_bucket(torch.from_numpy(ids), lo[which], hi[which], buckets).numpy()
    for k, seed in enumerate(seeds):
        mask = which.numpy() == k
        np.testing.assert_array_equal(got[mask], ref.hash_bucket(ids[mask], seed, [97, 1009][k]))


def test_buckets_are_uniform_and_probes_independent() -> None:
    ids = np.arange(100_000, dtype=np.int64)
    a = ref.hash_bucket(ids, feature_seed("f", 0), 100)
    b = ref.hash_bucket(ids, feature_seed("f", 1), 100)
    counts = np.bincount(a, minlength=100)
    chi2 = float(((counts - 1000) ** 2 / 1000).sum())
    assert chi2 < 200  # 99 degrees of freedom: p < 1e-7 to exceed by chance
    assert abs((a == b).mean() - 0.01) < 0.002  # two probes collide like independent hashes


def test_reference_rejects_bad_bucket_counts() -> None:
    with pytest.raises(ValueError, match="num_buckets"):
        ref.hash_bucket(np.array([1]), 0, 0)


def test_onnxruntime_matches_torch(tmp_path) -> None:
    """Exported graph (dynamo exporter, dynamic batch) hashes exactly like torch on int64 extremes."""
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    seeds = [feature_seed("user", 0), feature_seed("user", 1)]
    lo, hi = seed_tensors(seeds)

    class Hash(torch.nn.Module):
        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            rows = [hash_bucket(ids, lo[k], hi[k], 1_000_003) for k in range(len(seeds))]
            return torch.stack(rows, dim=1)

    path = tmp_path / "hash.onnx"
    example = torch.from_numpy(_ids(8))
    torch.onnx.export(
        Hash(),
        (example,),
        str(path),
        dynamo=True,
        input_names=["ids"],
        dynamic_shapes=({0: torch.export.Dim("n")},),
        verbose=False,
    )
    ids = _ids(50_000, seed=3)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    served = session.run(None, {session.get_inputs()[0].name: ids})[0]
    np.testing.assert_array_equal(served, Hash()(torch.from_numpy(ids)).numpy())
    for k, seed in enumerate(seeds):
        np.testing.assert_array_equal(served[:, k], ref.hash_bucket(ids, seed, 1_000_003))
