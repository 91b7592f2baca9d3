"""The in-model id hash in torch: raw ids in, table rows out, inside the exported graph.

A twin of `plexus.platform.hashing.hash_bucket` (the numpy reference and its definition), written
with int64 ops whose results never leave `[0, 2**49)` once the id is split: `&` with masks, exact
integer floor division for right shifts, products of a 32-bit value with 16-bit halves of
the multiplier, `^` and `%`. No uint64 kernels, no `BitShift` (unsigned-only in ONNX), no
arithmetic-vs-logical shift ambiguity and no signed overflow, so torch, ONNX export and
onnxruntime agree bit for bit on every int64, including negative and huge ids.

`exportable=False` swaps the exported graph's floor divisions and power-of-two products for
`>>` and `<<`, which give the same integers on these non-negative (or, for the high half,
arithmetically shifted) values and cost a tenth as much on CPU: the training path, which is
never exported, uses it.
"""

from __future__ import annotations

import torch
from plexus.platform.hashing import (
    LOWBIAS32_MUL1,
    LOWBIAS32_MUL2,
    MAX_HASH_BUCKETS,
    seed_halves,
)

_M32 = 0xFFFFFFFF
_M16 = 0xFFFF


def _shr(x: torch.Tensor, bits: int, exportable: bool = True) -> torch.Tensor:
    """Right shift of int64 values (floor division by `2**bits`).

    Floor division exports as an integer `Div` (plus a sign fix-up); `torch.div(rounding_mode=...)`
    would export through a float cast and lose bits, and ONNX's `BitShift` is unsigned-only.
    """
    if exportable:
        return torch.floor_divide(x, 1 << bits)
    return torch.bitwise_right_shift(x, bits)


def _mul32(x: torch.Tensor, c: int, exportable: bool = True) -> torch.Tensor:
    """`(x * c) mod 2**32` for x in [0, 2**32) without leaving int64's positive range."""
    low = x * (c & _M16)
    high = torch.bitwise_and(x * (c >> 16), _M16)
    high = high * (1 << 16) if exportable else torch.bitwise_left_shift(high, 16)
    return torch.bitwise_and(low + high, _M32)


def lowbias32(x: torch.Tensor, *, exportable: bool = True) -> torch.Tensor:
    """Wellons' `lowbias32` on uint32 values held in int64: (...) -> (...)."""
    x = torch.bitwise_xor(x, _shr(x, 16, exportable))
    x = _mul32(x, LOWBIAS32_MUL1, exportable)
    x = torch.bitwise_xor(x, _shr(x, 15, exportable))
    x = _mul32(x, LOWBIAS32_MUL2, exportable)
    return torch.bitwise_xor(x, _shr(x, 16, exportable))


def split_ids(ids: torch.Tensor, *, exportable: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The unsigned (low, high) 32-bit halves of int64 ids, each held in int64: (...) -> 2 x (...)."""
    lo = torch.bitwise_and(ids, _M32)
    # An arithmetic shift of the id is the floor division of `ids - lo`: same high half.
    high = _shr(ids - lo, 32) if exportable else _shr(ids, 32, exportable=False)
    return lo, torch.bitwise_and(high, _M32)


def hash_bucket(
    ids: torch.Tensor,
    seed_lo: torch.Tensor | int,
    seed_hi: torch.Tensor | int,
    num_buckets: torch.Tensor | int,
    *,
    exportable: bool = True,
) -> torch.Tensor:
    """Rows in `[0, num_buckets)` for raw int64 ids: (...) -> (...) int64.

    Seeds and bucket counts are ints or int64 tensors broadcastable to `ids` (e.g. one per id),
    so one call hashes every (feature, probe) segment of a batch. Bit-identical to
    `plexus.platform.hashing.hash_bucket` either way; `exportable=False` is the faster
    training-only path (see the module docstring).

    Example:
        >>> lo, hi = seed_halves(feature_seed("site_id", probe=0))
        >>> rows = hash_bucket(ids, lo, hi, 1000)
    """
    lo, hi = split_ids(ids.to(torch.int64), exportable=exportable)
    h = lowbias32(torch.bitwise_xor(lo, seed_lo), exportable=exportable)
    h = lowbias32(torch.bitwise_xor(torch.bitwise_xor(h, hi), seed_hi), exportable=exportable)
    return torch.remainder(h, num_buckets)


def seed_tensors(seeds: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-segment (low, high) seed halves as int64 tensors: K seeds -> 2 x (K,)."""
    halves = [seed_halves(s) for s in seeds]
    return (
        torch.tensor([h[0] for h in halves], dtype=torch.int64),
        torch.tensor([h[1] for h in halves], dtype=torch.int64),
    )


def check_buckets(num_buckets: int) -> int:
    """Validate a table size for `hash_bucket` (at most 2**31 rows)."""
    if not 0 < num_buckets <= MAX_HASH_BUCKETS:
        raise ValueError(f"a hashed table needs 1..2**31 rows, got {num_buckets}")
    return num_buckets
