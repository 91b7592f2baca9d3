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


def splitmix64(x: np.ndarray | np.integer | int) -> np.ndarray:
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
    return (
        splitmix64(np.asarray(ids).astype(np.uint64, copy=False) ^ mixed_seed)
        % np.uint64(num_buckets)
    ).astype(np.int64)


# --- The in-model hash: 32-bit arithmetic only, so torch and ONNX reproduce it bit for bit. ---

_M32 = np.uint64(0xFFFFFFFF)
LOWBIAS32_MUL1 = 0x7FEB352D
LOWBIAS32_MUL2 = 0x846CA68B
MAX_HASH_BUCKETS = 1 << 31


def lowbias32(x: np.ndarray) -> np.ndarray:
    """Wellons' `lowbias32` integer mixer (hash-prospector), a bijection on uint32."""
    z = np.asarray(x, dtype=np.uint32)
    with np.errstate(over="ignore"):
        z = z ^ (z >> np.uint32(16))
        z = z * np.uint32(LOWBIAS32_MUL1)
        z = z ^ (z >> np.uint32(15))
        z = z * np.uint32(LOWBIAS32_MUL2)
        return z ^ (z >> np.uint32(16))


def seed_halves(seed: int) -> tuple[int, int]:
    """The (low, high) 32-bit halves of a 64-bit seed, e.g. of `feature_seed(name, probe)`."""
    seed &= 0xFFFFFFFFFFFFFFFF
    return seed & 0xFFFFFFFF, seed >> 32


def hash_bucket(ids: np.ndarray, seed: int, num_buckets: int) -> np.ndarray:
    """Map raw 64-bit ids to `[0, num_buckets)` inside a model: the reference of the torch twin.

    `h = lowbias32(lowbias32(lo(id) ^ lo(seed)) ^ hi(id) ^ hi(seed)) % num_buckets`, with `lo`/`hi`
    the 32-bit halves of the two's-complement id and all arithmetic mod 2^32. It is built from
    32-bit products only so that `plexus.models.layers.hashing.hash_bucket` (torch int64 ops that
    export to ONNX and run in onnxruntime) gives identical results for every int64, negative or
    huge. Used by the hashing, multiplexed and unified embeddings with `feature_seed(name, probe)`.
    """
    if not 0 < num_buckets <= MAX_HASH_BUCKETS:
        raise ValueError(f"num_buckets must be in [1, 2**31], got {num_buckets}")
    u = np.asarray(ids).astype(np.int64, copy=False).view(np.uint64)
    lo = (u & _M32).astype(np.uint32)
    hi = (u >> np.uint64(32)).astype(np.uint32)
    seed_lo, seed_hi = seed_halves(seed)
    h = lowbias32(lo ^ np.uint32(seed_lo))
    h = lowbias32(h ^ hi ^ np.uint32(seed_hi))
    return (h % np.uint32(num_buckets)).astype(np.int64)
