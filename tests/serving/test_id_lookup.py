"""The service's external -> internal id map: exact for every id (dense, spread over int64, at
the int64 ends, absent), in the narrowest offsets the ids allow."""

from __future__ import annotations

import numpy as np
import pytest
from plexus.serving.bundle import IdLookup

RNG = np.random.default_rng(0)
CASES = {
    "dense": (np.arange(1, 3001) * 10 + 1, np.uint16),
    "shuffled": (RNG.permutation(5000), np.uint8),
    "spread": (RNG.integers(-(2**63), 2**63 - 1, 3000, dtype=np.int64), np.uint64),
    "ends": (np.array([-(2**63), 2**63 - 1, 0, -1, 1]), np.uint64),
    "one": (np.array([5]), np.uint8),
    "none": (np.zeros(0, np.int64), np.uint8),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_id_maps_to_its_row_and_others_to_zero(case: str) -> None:
    ids, narrowest = CASES[case]
    external = np.concatenate([[-1], ids]).astype(np.int64)
    lookup = IdLookup(external)
    np.testing.assert_array_equal(lookup(external[1:]), np.arange(1, external.size))
    np.testing.assert_array_equal(lookup.external(), external)
    assert lookup._sorted._gaps.dtype == narrowest
    row = {int(v): i for i, v in enumerate(external) if i}
    near = np.concatenate([external[1:] + 1, external[1:] - 1])  # wraps at the int64 ends
    probes = np.concatenate([near, RNG.integers(-(2**63), 2**63 - 1, 2000, dtype=np.int64)])
    want = np.array([row.get(int(v), 0) for v in probes], np.int64)
    np.testing.assert_array_equal(lookup(probes), want)


def test_dense_ids_take_six_bytes_a_row() -> None:
    lookup = IdLookup(np.concatenate([[-1], np.arange(100_000) * 7]).astype(np.int64))
    assert lookup.nbytes / 100_000 < 6.1  # 2 (offset) + 4 (argsort) + 8 / 256 (base)


@pytest.mark.parametrize("spread", [3, 70_000, 2**40])
def test_monotone_array_indexes_and_searches_like_the_plain_array(spread: int) -> None:
    from plexus.serving.monotone import MonotoneArray

    values = np.sort(RNG.integers(-spread, spread, 1000)).astype(np.int64)  # duplicates too
    values[:5] = values[0]  # a run across the start
    compact = MonotoneArray(values)
    np.testing.assert_array_equal(compact.to_numpy(), values)
    np.testing.assert_array_equal(compact[np.array([0, 255, 256, 999])], values[[0, 255, 256, 999]])
    targets = np.concatenate([values, values + 1, values - 1, [-(2**62), 2**62]])
    np.testing.assert_array_equal(compact.lower_bound(targets), np.searchsorted(values, targets))
    with pytest.raises(ValueError, match="non-decreasing"):
        MonotoneArray(values[::-1])
