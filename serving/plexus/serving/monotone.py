"""A non-decreasing int64 array in about 2 bytes a value where its values are dense: the service's
sorted user ids and the bundle's history offsets.

Every `BLOCK` values one int64 base (the block's first value), and each value as its distance
from its block's base in the narrowest unsigned type that holds every distance (uint8 to
uint64). Indexing adds the base back; `lower_bound` is a binary search over the bases, then a
count of the block's values below the target, vectorised over the queries.

Example:
    >>> values = MonotoneArray(np.array([3, 5, 5, 900]))
    >>> values[np.array([0, 3])].tolist(), values.lower_bound(np.array([4, 5, 901])).tolist()
    ([3, 900], [1, 1, 4])
"""

from __future__ import annotations

import numpy as np

__all__ = ["MonotoneArray"]

_UNSIGNED = (np.uint8, np.uint16, np.uint32, np.uint64)


class MonotoneArray:
    """`values` (n,) int64, non-decreasing (checked)."""

    BLOCK = 256
    CHUNK = 4096  # targets compared at once: (CHUNK, BLOCK) booleans

    def __init__(self, values: np.ndarray) -> None:
        values = np.ascontiguousarray(values, dtype=np.int64)
        if values.ndim != 1 or np.any(values[1:] < values[:-1]):
            raise ValueError("MonotoneArray: values must be a non-decreasing 1-d array")
        self._size = values.size
        self._bases = values[:: self.BLOCK].copy()
        gaps = values.view(np.uint64) - self._base_of(np.arange(values.size)).view(np.uint64)
        widest = int(gaps.max()) if gaps.size else 0
        dtype = next(t for t in _UNSIGNED if widest <= np.iinfo(t).max)
        self._gaps = gaps.astype(dtype)

    def __len__(self) -> int:
        return self._size

    def _base_of(self, index: np.ndarray) -> np.ndarray:
        return self._bases[index // self.BLOCK]

    def __getitem__(self, index: np.ndarray | int) -> np.ndarray:
        """Values at `index` (int or int array, 0 <= index < n) as int64."""
        index = np.asarray(index, dtype=np.int64)
        total = self._base_of(index).view(np.uint64) + self._gaps[index].astype(np.uint64)
        return total.view(np.int64)

    def lower_bound(self, targets: np.ndarray) -> np.ndarray:
        """(m,) int64 -> (m,) the first position whose value is >= each target (n if none)."""
        targets = np.asarray(targets, dtype=np.int64)
        if self._size == 0:
            return np.zeros(targets.shape, np.int64)
        out = np.empty(targets.shape, np.int64)
        for lo in range(0, targets.size, self.CHUNK):
            out[lo : lo + self.CHUNK] = self._lower_bound(targets[lo : lo + self.CHUNK])
        return out

    def _lower_bound(self, targets: np.ndarray) -> np.ndarray:
        # The block of the last base below the target, then how many of its values are below:
        # one (m, BLOCK) comparison, cheaper in numpy than a loop of binary-search steps.
        block = np.maximum(np.searchsorted(self._bases, targets, side="left") - 1, 0)
        start = block * self.BLOCK
        at = start[:, None] + np.arange(self.BLOCK)
        inside = at < self._size
        distance = targets.view(np.uint64) - self._bases[block].view(np.uint64)
        after_base = targets > self._bases[block]  # else (block 0 only) the answer is 0
        below = np.less(self._gaps[np.minimum(at, self._size - 1)], distance[:, None])
        return start + (below & inside & after_base[:, None]).sum(axis=1)

    def to_numpy(self) -> np.ndarray:
        return self[np.arange(self._size)] if self._size else np.zeros(0, np.int64)

    @property
    def nbytes(self) -> int:
        return int(self._bases.nbytes + self._gaps.nbytes)
