"""The bundle's Elias-Fano histories: every user's items and last-window items come back
exactly, in the bytes the code promises, and the service answers from them as from the CSR."""

from __future__ import annotations

import numpy as np
import pytest
from plexus.platform.errors import RegistryError
from plexus.serving.history import HistoryStore


def _csr(lengths: np.ndarray, num_items: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    indptr = np.concatenate([[0, 0], np.cumsum(lengths)])
    items = np.random.default_rng(seed).integers(1, num_items + 1, int(indptr[-1]))
    return indptr, items


@pytest.mark.parametrize("num_items", [1, 7, 1000, 2**31 + 5])
def test_every_history_and_its_window_round_trip(num_items: int) -> None:
    rng = np.random.default_rng(num_items % 97)
    lengths = rng.integers(0, 40, 300)
    lengths[:3] = [0, 1, 200]
    indptr, items = _csr(lengths, num_items, seed=1)
    items[:2] = [1, num_items]  # the ends of the id range
    window = 6
    store = HistoryStore.build(indptr, items, num_items=num_items, window=window, chunk=17)
    assert store.num_users == lengths.size
    for user in range(lengths.size + 1):
        history = items[indptr[user] : indptr[user + 1]]  # oldest first; duplicates possible
        got, last = store.both(user)
        np.testing.assert_array_equal(got, np.sort(history))
        np.testing.assert_array_equal(last, np.sort(history[-window:]))
        np.testing.assert_array_equal(store.items(user), got)
        np.testing.assert_array_equal(store.window(user), last)
    for unknown in (-1, lengths.size + 1, 10**9):
        assert store.items(unknown).size == 0


def test_the_records_take_the_elias_fano_bound() -> None:
    """n items of N in at most n * (2 + log2(N / n)) bits plus a few bytes of framing, a
    fraction of int32's 32 bits an item."""
    num_items, n, users = 1_000_000, 20, 5000
    indptr, items = _csr(np.full(users, n), num_items, seed=2)
    store = HistoryStore.build(indptr, items, num_items=num_items, window=n)
    bound_bits = n * (2 + np.log2((num_items + 1) / n))
    per_user = store.data.nbytes / users
    assert per_user <= bound_bits / 8 + 3  # varint count and byte padding
    assert per_user < 0.6 * 4 * n


def test_bad_inputs_and_manifests_are_refused() -> None:
    with pytest.raises(ValueError, match="1..5"):
        HistoryStore.build(np.array([0, 0, 1]), np.array([6]), num_items=5, window=2)
    with pytest.raises(ValueError, match="user 0"):
        HistoryStore.build(np.array([0, 1, 1]), np.array([3]), num_items=5, window=2)
    with pytest.raises(RegistryError, match="re-export"):
        HistoryStore.from_arrays({}, {"encoding": "int32"})
