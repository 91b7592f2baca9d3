"""Known users' training items in the bundle, Elias-Fano coded: what the service needs of a
history in about n * (2 + log2(N / n)) bits for n of N items, against 32 bits an item as int32.

The service needs two things of a known user's history: the set of its training items (dropped
from its candidates) and its last `window` items (the query model's history input, which the
bundle's query models pool, so their order does not matter). Each user's record is

    varint n | window flags (ceil(n / 8) bytes, only when n > window) | low bits | high bits

over the user's items sorted by internal id `s_0 <= ... <= s_{n-1}` (1..N), with
`l = max(0, floor(log2((N + 1) / n)))` low bits an item (Elias 1974, Fano 1971; the layout of
Vigna, "Quasi-succinct indices", WSDM 2013, Sec. 3): the low halves `s_i mod 2^l` packed in
`n * l` bits, then the high halves in unary, bit `(s_i >> l) + i` set, in
`n + ((N + 1) >> l) + 1` bits. Both depend on n and N only, so every record of a given n has the
same length and whole groups of users encode as one array. The window flags mark, in sorted
order, the items among the user's last `window` in time.

Decoding one user is a handful of vectorised numpy calls (unpack, a dot with powers of two, the
positions of the set bits), tens of microseconds, against a slice of an int32 array before.

Example:
    >>> indptr = np.array([0, 0, 3, 4])  # user 1: items 7, 2, 9 (oldest first); user 2: 5
    >>> store = HistoryStore.build(indptr, np.array([7, 2, 9, 5]), num_items=10, window=2)
    >>> store.items(1).tolist(), store.window(1).tolist()
    ([2, 7, 9], [2, 9])
"""

from __future__ import annotations

from typing import Any

import numpy as np
from plexus.platform.errors import RegistryError
from plexus.serving.monotone import MonotoneArray

__all__ = ["HistoryStore", "HISTORY_ARRAYS"]

HISTORY_ARRAYS = (
    "history_offsets",  # (U+2,) uint32 (uint64 past 4 GiB) byte offset of each user's record;
    # loaded as a `MonotoneArray` (about 2 bytes a user)
    "history_bytes",  # (total,) uint8 the records, user 0 (padding) empty
)


def _low_bits(n: np.ndarray | int, universe: int) -> np.ndarray:
    """Elias-Fano low bits for n items (n >= 1) below `universe`: floor(log2(universe / n))."""
    n = np.maximum(np.asarray(n, np.int64), 1)
    return np.maximum(np.floor(np.log2(universe / n)).astype(np.int64), 0)


def _varint(values: np.ndarray) -> list[np.ndarray]:
    """LEB128 bytes of non-negative ints, as byte columns (column j: byte j where present)."""
    columns, rest = [], values.astype(np.uint64)
    while True:
        byte = (rest & np.uint64(0x7F)).astype(np.uint8)
        rest = rest >> np.uint64(7)
        more = rest > 0
        columns.append(byte | (more.astype(np.uint8) << 7))
        if not more.any():
            return columns


def _read_varint(record: np.ndarray) -> tuple[int, int]:
    value = shift = pos = 0
    while True:
        byte = int(record[pos])
        value |= (byte & 0x7F) << shift
        pos += 1
        if byte < 0x80:
            return value, pos
        shift += 7


def _offset_dtype(total: int) -> type[np.unsignedinteger[Any]]:
    """uint32 byte offsets, uint64 once the records pass 4 GiB."""
    return np.uint64 if total >= 2**32 else np.uint32


def _record_size(n: int, universe: int, window: int) -> int:
    """Bytes of the record of an n-item history (0 for none)."""
    if n == 0:
        return 0
    low = int(_low_bits(n, universe))
    flags = (n + 7) // 8 if n > window else 0
    return (
        len(_varint(np.array([n]))) + flags + (n * low + 7) // 8 + (n + (universe >> low) + 8) // 8
    )


def _encode_group(rows: np.ndarray, universe: int, window: int) -> np.ndarray:
    """(k, n) histories of one length n, time order -> (k, record bytes) uint8."""
    k, n = rows.shape
    order = np.argsort(rows, axis=1, kind="stable")
    ids = np.take_along_axis(rows, order, axis=1)
    parts = [np.stack(_varint(np.full(k, n)), axis=1)]
    if n > window:
        parts.append(np.packbits(order >= n - window, axis=1))
    low = int(_low_bits(n, universe))
    if low:
        shifts = np.arange(low - 1, -1, -1, dtype=np.int64)
        bits = ((ids[:, :, None] >> shifts) & 1).astype(np.uint8)
        parts.append(np.packbits(bits.reshape(k, n * low), axis=1))
    high = np.zeros((k, n + (universe >> low) + 1), np.uint8)
    high[np.arange(k)[:, None], (ids >> low) + np.arange(n)] = 1
    parts.append(np.packbits(high, axis=1))
    return np.concatenate(parts, axis=1)


class HistoryStore:
    """Every known user's training items (internal ids 1..N), Elias-Fano coded per user.

    `items(u)`: the user's items in increasing id order (duplicates kept); `window(u)`: those of
    its last `window` items in time, in the same order. User 0 and unknown users are empty."""

    def __init__(self, offsets: np.ndarray, data: np.ndarray, *, num_items: int, window: int):
        self.offsets = MonotoneArray(offsets)  # ~2 bytes a user held, 4 stored
        self.data = data
        self.universe = int(num_items) + 1
        self.window_len = int(window)

    @property
    def num_users(self) -> int:
        return len(self.offsets) - 2

    @classmethod
    def build(
        cls,
        indptr: np.ndarray,
        items: np.ndarray,
        *,
        num_items: int,
        window: int,
        chunk: int = 65_536,
    ) -> HistoryStore:
        """From the CSR of the users' training items: user u's are
        `items[indptr[u]:indptr[u + 1]]`, oldest first, for u = 0..U (`indptr` (U+2,), user 0
        the padding row), ids 1..N. Users are encoded `chunk` at a time per history length."""
        indptr = np.asarray(indptr, np.int64)
        items = np.asarray(items, np.int64)
        if indptr.ndim != 1 or indptr.size < 2 or np.any(np.diff(indptr) < 0):
            raise ValueError("HistoryStore.build: indptr must be non-decreasing, (U+2,)")
        if items.size and (items.min() < 1 or items.max() > num_items):
            raise ValueError(f"HistoryStore.build: item ids must be in 1..{num_items}")
        counts = np.diff(indptr)
        if counts[0]:
            raise ValueError("HistoryStore.build: user 0 is padding and must have no items")
        universe = num_items + 1
        lengths = np.unique(counts)
        record = np.array([_record_size(int(n), universe, window) for n in lengths])
        sizes = record[np.searchsorted(lengths, counts)]
        offsets = np.concatenate([[0, 0], np.cumsum(sizes[1:])])
        offsets = offsets.astype(_offset_dtype(int(offsets[-1])))
        data = np.zeros(int(offsets[-1]), np.uint8)
        for n in lengths[lengths > 0]:
            group = np.flatnonzero(counts == n)
            for lo in range(0, group.size, chunk):
                who = group[lo : lo + chunk]
                block = _encode_group(items[indptr[who][:, None] + np.arange(n)], universe, window)
                at = offsets[who].astype(np.int64)[:, None] + np.arange(block.shape[1])
                data[at] = block
        return cls(offsets, data, num_items=num_items, window=window)

    def _decode(self, user: int) -> tuple[np.ndarray, np.ndarray | None]:
        if not 0 < user <= self.num_users:
            return np.zeros(0, np.int64), None
        start, stop = self.offsets[np.array([user, user + 1])]
        record = self.data[int(start) : int(stop)]
        if record.size == 0:
            return np.zeros(0, np.int64), None
        n, pos = _read_varint(record)
        flags = None
        if n > self.window_len:
            width = (n + 7) // 8
            flags = np.unpackbits(record[pos : pos + width])[:n].astype(bool)
            pos += width
        low = int(_low_bits(n, self.universe))
        values = np.zeros(n, np.int64)
        if low:
            width = (n * low + 7) // 8
            bits = np.unpackbits(record[pos : pos + width])[: n * low].reshape(n, low)
            values = bits.astype(np.int64) @ (np.int64(1) << np.arange(low - 1, -1, -1))
            pos += width
        high = np.flatnonzero(np.unpackbits(record[pos:]))[:n] - np.arange(n)
        return (high << low) | values, flags

    def items(self, user: int) -> np.ndarray:
        """(n,) int64 the user's training items, increasing."""
        return self._decode(user)[0]

    def window(self, user: int) -> np.ndarray:
        """(min(n, window),) int64 the user's last `window` items, increasing."""
        items, flags = self._decode(user)
        return items if flags is None else items[flags]

    def both(self, user: int) -> tuple[np.ndarray, np.ndarray]:
        """(items, window) with one decode."""
        items, flags = self._decode(user)
        return items, (items if flags is None else items[flags])

    def arrays(self) -> dict[str, np.ndarray]:
        offsets = self.offsets.to_numpy()
        offsets = offsets.astype(_offset_dtype(int(offsets[-1])))
        return {"history_offsets": offsets, "history_bytes": self.data}

    def manifest(self) -> dict[str, Any]:
        return {
            "encoding": "elias-fano",
            "num_items": self.universe - 1,
            "window": self.window_len,
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], manifest: Any) -> HistoryStore:
        """From a bundle's arrays and its manifest's `history` section."""
        if not isinstance(manifest, dict) or manifest.get("encoding") != "elias-fano":
            raise RegistryError(
                "bundle manifest: history is missing or not 'elias-fano'; re-export the bundle"
            )
        return cls(
            arrays["history_offsets"],
            arrays["history_bytes"],
            num_items=int(manifest["num_items"]),
            window=int(manifest["window"]),
        )

    def nbytes(self) -> int:
        return int(self.offsets.nbytes + self.data.nbytes)
