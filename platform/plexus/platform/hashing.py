"""Stable hashing: the same ids on every machine, process and Python version.

Python's `hash()` is salted per process, so it is never used. Two documented functions:

* `splitmix64(x)`: the SplitMix64 finaliser (Steele et al., 2014; constants from Vigna's
  reference implementation) over unsigned 64-bit integers, wrapping on overflow. It is pure
  integer arithmetic (xor, shift, multiply), so the same function can run inside an exported
  ONNX graph or in torch.
* `hash_strings(values)`: BLAKE2b with an 8-byte digest of the UTF-8 bytes, read little-endian
  as an unsigned 64-bit integer.

`bucketize_ids(h, seed, n)` = `splitmix64(h ^ splitmix64(seed)) % n`: per-feature (and per-probe)
seeds keep features distinguishable when they share a table.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)


def splitmix64(x: np.ndarray | int) -> np.ndarray:
    """SplitMix64 of each element; int64 input is reinterpreted as uint64 (two's complement)."""
    z = np.asarray(x)
    z = z.view(np.uint64) if z.dtype == np.int64 else z.astype(np.uint64)
    with np.errstate(over="ignore"):
        z = z + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MUL1
        z = (z ^ (z >> np.uint64(27))) * _MUL2
        return z ^ (z >> np.uint64(31))


def hash_strings(values: Iterable[str]) -> np.ndarray:
    """BLAKE2b-64 of each string's UTF-8 bytes, as uint64."""
    digests = b"".join(hashlib.blake2b(v.encode(), digest_size=8).digest() for v in values)
    return np.frombuffer(digests, dtype="<u8").astype(np.uint64)


def feature_seed(feature: str, probe: int = 0) -> int:
    """The seed of a (feature, probe) pair: a stable function of the name, never of the order."""
    return int(hash_strings([f"{feature}#{probe}"])[0])


def bucketize_ids(ids: np.ndarray, seed: int, num_buckets: int) -> np.ndarray:
    """Map 64-bit ids to `[0, num_buckets)` with a seeded SplitMix64, as int64."""
    if num_buckets <= 0:
        raise ValueError(f"num_buckets must be positive, got {num_buckets}")
    mixed_seed = splitmix64(np.uint64(seed))
    return (splitmix64(np.asarray(ids).astype(np.uint64, copy=False) ^ mixed_seed)
            % np.uint64(num_buckets)).astype(np.int64)
