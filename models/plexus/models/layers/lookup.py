"""Pooled embedding lookups whose backward is one `index_add_` instead of `embedding_bag`'s.

On CPU, `embedding_bag`'s dense backward (`_embedding_bag_dense_backward`) sorts the indices and
accumulates row by row: with ~100k ids per batch into one shared table it took 20 ms of a
120 ms DeepFM step (2,048 rows, 26 features, two chunks of 8), 5x what scattering the per-id
gradients with `index_add_` takes. The forward stays `embedding_bag` (fast and exact); only the
gradient of the table is computed differently, and it is the same gradient.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.nn import functional
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

_MODES = ("sum", "mean")


class _PooledLookup(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, ids: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor, mode: str
    ) -> torch.Tensor:
        ctx.save_for_backward(ids, offsets)
        ctx.mode = mode
        ctx.rows = weight.shape[0]
        return functional.embedding_bag(ids, weight, offsets, mode=mode, include_last_offset=True)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, torch.Tensor, None, None]:
        ids, offsets = ctx.saved_tensors
        lengths = offsets[1:] - offsets[:-1]
        if ctx.mode == "mean":
            grad = grad / lengths.clamp(min=1).unsqueeze(1).to(grad.dtype)
        if ids.numel() == grad.shape[0]:  # every bag holds one id (the usual CTR case)
            per_id = grad
        else:
            per_id = torch.repeat_interleave(grad, lengths, dim=0, output_size=ids.numel())
        table = grad.new_zeros(ctx.rows, grad.shape[1])
        return None, table.index_add_(0, ids, per_id), None, None


def pooled_lookup(
    ids: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor, mode: str = "sum"
) -> torch.Tensor:
    """Sum- or mean-pooled rows of `weight` per bag: ids (N,), weight (R, D), offsets (bags + 1,)
    with the last offset = N -> (bags, D). Empty bags pool to zeros, as in `embedding_bag`."""
    if mode not in _MODES:
        raise ValueError(f"pooling mode must be one of {_MODES}, got {mode!r}")
    if not weight.requires_grad or not torch.is_grad_enabled():
        return functional.embedding_bag(ids, weight, offsets, mode=mode, include_last_offset=True)
    return _PooledLookup.apply(ids, weight, offsets, mode)


def pooled_key_blocks(
    features: KeyedJaggedTensor,
    blocks: Sequence[tuple[int, int, torch.Tensor]],
    mode: str = "sum",
) -> list[torch.Tensor]:
    """Pooled lookups of blocks of consecutive KJT keys, each into its own table.

    `blocks` holds (first key index, key count, table weight); each block gives
    (count * B, D), key-major, as the EBC would for those keys, with `pooled_lookup`'s gradient.
    """
    batch = features.stride()
    lengths = features.lengths().to(torch.int64)
    offsets = torch.cat([lengths.new_zeros(1), torch.cumsum(lengths, 0)])
    values = features.values()
    pooled = []
    for first, count, weight in blocks:
        bag_offsets = offsets[first * batch : (first + count) * batch + 1]
        start, stop = int(bag_offsets[0]), int(bag_offsets[-1])
        pooled.append(pooled_lookup(values[start:stop], weight, bag_offsets - start, mode))
    return pooled


def keyed_values(pooled: KeyedTensor, keys: Sequence[str]) -> torch.Tensor:
    """`pooled.values()` with its keys in `keys` order: (B, sum of the keys' widths).

    An unsharded `EmbeddingBagCollection` returns its keys in table order; a sharded one (TorchRec
    `DistributedModelParallel`) in the order of its shards, which depends on the plan.
    """
    if pooled.keys() == list(keys):
        return pooled.values()
    by_key = pooled.to_dict()
    return torch.cat([by_key[k] for k in keys], dim=1)
