"""Sparse embedding tables: masked training (shared by DSL and magnitude pruning) and the
row-compressed form they are stored and served in.

Storage (`SparseTable`, one per physical table of `rows x dim`), whichever is smaller:

* **blocked CSR**: the non-zeros in row-major order as float32 `values` (nnz,), a local
  position per value `index` (nnz,) = `(row % G) * dim + col` (uint8 when `G * dim <= 256`,
  else int16 offset by 32768), and int32 `block_ptr` (ceil(rows / G) + 1,): where each block
  of G consecutive rows starts in `values`. G = 1 is plain CSR (column indices and row
  pointers); a larger G shares one pointer between G rows, which a very sparse table needs:
  at dim 16 an int32 pointer per row alone is 1/16 of the dense bytes. G is the smallest power
  of two whose pointers cost at most 5% of the values and indices (`POINTER_SHARE`), so the
  lookup scans as few entries as the byte count allows.
* **bitmap** (the packed per-row form): the non-zeros' float32 `values` (nnz,) in row-major
  order, a bit per position `bits` (rows, ceil(dim / 8)) uint8 (bit j of byte k: column
  8k + j), and int32 `row_ptr` (rows,): where each row starts in `values`. At half density
  and dim 256 it costs 0.53 of the dense bytes, where 1-byte CSR indices cost 0.63: a dense
  row needs 32 bits of float per position, the bitmap one bit.
* **dense**: the plain `rows x dim` float32 table (zeros included), when that is smaller.

Bytes are those of these arrays, indices and pointers included (as the VLDB 2024 compression
study counts a pruned table), and `nonzeros_for_budget` turns a byte budget into per-table
non-zero counts with that overhead included. `SparseTable.gather(rows)` rebuilds looked-up
rows from the packed arrays with gathers and a scatter-add: no dense table exists at serving
time, and the ONNX export of a CTR model over `CompactSparseTables` gathers from the same
arrays.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from typing import Any

import torch
from plexus.models.embeddings.base import (
    EmbeddingConfig,
    EmbeddingMethod,
    EmbeddingTables,
    pool_padded,
)
from plexus.models.embeddings.hashed import HashedEmbeddingTables, Plan
from plexus.models.embeddings.protocol import StepContext
from plexus.platform.errors import ConfigError
from torch import nn
from torchrec import KeyedJaggedTensor, KeyedTensor

POINTER_SHARE = 0.05  # block pointers may cost this share of the values' and indices' bytes
MOMENTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer")


def _index_bytes(rows_per_block: int, dim: int) -> int:
    return 1 if rows_per_block * dim <= 256 else 2


def block_rows(rows: int, dim: int, nnz: int) -> int:
    """G, the rows sharing one block pointer: the smallest power of two whose pointers cost at
    most `POINTER_SHARE` of the values and indices, within a 1-byte (else 2-byte) local index."""
    limit = max(1, 256 // dim) if dim <= 256 else max(1, 65536 // dim)
    g = 1
    while g < limit and 4 * (math.ceil(rows / g) + 1) > POINTER_SHARE * (4 + 1) * nnz:
        g *= 2
    return g


def _blocked_bytes(rows: int, dim: int, nnz: int) -> int:
    g = block_rows(rows, dim, nnz)
    return (4 + _index_bytes(g, dim)) * nnz + 4 * (math.ceil(rows / g) + 1)


def _bitmap_bytes(rows: int, dim: int, nnz: int) -> int:
    return 4 * nnz + rows * (math.ceil(dim / 8) + 4)


def storage_form(rows: int, dim: int, nnz: int) -> str:
    """The stored form of a `rows x dim` table with `nnz` non-zeros: the smallest of "dense",
    "csr" (blocked) and "bitmap", in that order on ties."""
    sizes = {
        "dense": 4 * rows * dim,
        "csr": _blocked_bytes(rows, dim, nnz),
        "bitmap": _bitmap_bytes(rows, dim, nnz),
    }
    return min(sizes, key=lambda form: sizes[form])


def stored_dense(rows: int, dim: int, nnz: int) -> bool:
    """Whether a `rows x dim` table with `nnz` non-zeros is stored dense (no sparse form is
    smaller)."""
    return storage_form(rows, dim, nnz) == "dense"


def sparse_bytes(rows: int, dim: int, nnz: int) -> int:
    """Bytes of one `rows x dim` table with `nnz` non-zeros in its stored form (the smallest
    of blocked CSR, bitmap and dense float32)."""
    return min(_blocked_bytes(rows, dim, nnz), _bitmap_bytes(rows, dim, nnz), 4 * rows * dim)


def nonzeros_for_budget(shapes: Sequence[tuple[int, int]], budget_bytes: float) -> list[int]:
    """Per-table non-zeros at one density d (uniform per tensor, `round(d * rows * dim)` each),
    the largest d whose stored bytes (`sparse_bytes`, indices and pointers included) fit
    `budget_bytes`. Raises ConfigError when not even one non-zero per table fits."""

    def counts(d: float) -> list[int]:
        return [max(1, round(d * r * c)) for r, c in shapes]

    def size(d: float) -> int:
        return sum(sparse_bytes(r, c, n) for (r, c), n in zip(shapes, counts(d), strict=True))

    if size(0.0) > budget_bytes:
        raise ConfigError(
            f"a byte budget of {budget_bytes:,.0f} cannot hold one non-zero per table "
            f"({size(0.0):,} bytes with pointers): raise embedding.options.byte_budget"
        )
    lo, hi = 0.0, 1.0
    if size(hi) <= budget_bytes:
        return counts(hi)
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if size(mid) <= budget_bytes else (lo, mid)
    return counts(lo)


class SparseTable(nn.Module):
    """One table in its stored form (see the module docstring); `gather(rows)` -> (..., dim)."""

    def __init__(self, weight: torch.Tensor, mask: torch.Tensor) -> None:
        super().__init__()
        rows, dim = weight.shape
        values = (weight * mask).detach()
        nnz = int(mask.sum())
        self.rows, self.dim = rows, dim
        g = block_rows(rows, dim, nnz)
        self.form = storage_form(rows, dim, nnz)
        self.dense = self.form == "dense"
        if self.dense:
            self.register_buffer("values", values.clone())
            self.rows_per_block, self.max_block, self.max_row = 1, 0, 0
            return
        if self.form == "bitmap":
            self._pack_bitmap(values, mask)
            return
        self.rows_per_block = g
        flat = mask.reshape(-1).nonzero().squeeze(1)  # row-major positions of the non-zeros
        row, col = flat // dim, flat % dim
        local = (row % g) * dim + col
        if _index_bytes(g, dim) == 1:
            index = local.to(torch.uint8)
        else:
            index = (local - 32768).to(torch.int16)
        blocks = math.ceil(rows / g)
        per_block = torch.bincount(row // g, minlength=blocks)
        pointer = torch.zeros(blocks + 1, dtype=torch.int64)
        pointer[1:] = torch.cumsum(per_block, 0)
        self.max_block = int(per_block.max()) if nnz else 0
        self.max_row = int(torch.bincount(row, minlength=rows).max()) if nnz else 0
        self.register_buffer("values", values.reshape(-1)[flat].clone())
        self.register_buffer("index", index)
        self.register_buffer("block_ptr", pointer.to(torch.int32))

    def _pack_bitmap(self, values: torch.Tensor, mask: torch.Tensor) -> None:
        rows, dim = mask.shape
        width = math.ceil(dim / 8)
        padded = nn.functional.pad(mask.to(torch.int64), (0, 8 * width - dim))
        bits = (padded.view(rows, width, 8) * (2 ** torch.arange(8))).sum(-1)
        counts = mask.sum(1)
        self.rows_per_block, self.max_block, self.max_row = 1, 0, int(counts.max())
        self.register_buffer("values", values[mask].clone())  # row-major
        self.register_buffer("bits", bits.to(torch.uint8))
        self.register_buffer("row_ptr", (torch.cumsum(counts, 0) - counts).to(torch.int32))

    def _gather_bitmap(self, rows: torch.Tensor) -> torch.Tensor:
        """A row's bits unpacked (integer division and remainder: plain ONNX ops), each set
        bit's value found at the row's start plus the set bits before it."""
        powers = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.int32, device=rows.device)
        packed = self.bits[rows].to(torch.int32).unsqueeze(-1)  # (..., width, 1)
        bits = torch.remainder(torch.div(packed, powers, rounding_mode="floor"), 2)
        bits = bits.flatten(-2)[..., : self.dim].to(torch.int64)  # (..., dim) 0/1
        start = self.row_ptr[rows].to(torch.int64).unsqueeze(-1)
        position = torch.clamp(start + torch.cumsum(bits, -1) - 1, 0, self.values.numel() - 1)
        return self.values[position] * bits.to(self.values.dtype)

    def num_values(self) -> int:
        return self.values.numel()

    def num_bytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.buffers())

    def gather(self, rows: torch.Tensor) -> torch.Tensor:
        """rows (...) int64 -> their vectors (..., dim), rebuilt from the packed arrays.

        A row finds its entries in its block's `max_block` entries (those of earlier rows of
        the block come first: their count is the row's offset), gathers at most `max_row` of
        them and scatter-adds each into its column (entries of other rows into a spare one)."""
        if self.dense:
            return nn.functional.embedding(rows, self.values)
        if self.form == "bitmap":
            return self._gather_bitmap(rows)
        if self.max_block == 0:
            return torch.zeros((*rows.shape, self.dim), dtype=self.values.dtype, device=rows.device)
        g, last = self.rows_per_block, self.values.numel() - 1
        block = torch.div(rows, g, rounding_mode="floor")
        start = self.block_ptr[block].to(torch.int64)
        end = self.block_ptr[block + 1].to(torch.int64)
        first = ((rows - block * g) * self.dim).unsqueeze(-1)  # the row's first local position
        if g == 1:
            count = end - start
        else:
            scan = start.unsqueeze(-1) + torch.arange(self.max_block, device=rows.device)
            valid = scan < end.unsqueeze(-1)
            local = self._local(torch.clamp(scan, max=last))
            before = ((local < first) & valid).sum(-1)
            count = ((local < first + self.dim) & valid).sum(-1) - before
            start = start + before
        k = torch.arange(self.max_row, device=rows.device)
        position = torch.clamp(start.unsqueeze(-1) + k, max=last)  # (..., K)
        keep = k < count.unsqueeze(-1)
        column = torch.where(keep, self._local(position) - first, self.dim)  # spare: dropped
        values = self.values[position] * keep.to(self.values.dtype)
        out = torch.zeros((*rows.shape, self.dim + 1), dtype=values.dtype, device=rows.device)
        return out.scatter_add(-1, column, values)[..., : self.dim]

    def _local(self, position: torch.Tensor) -> torch.Tensor:
        local = self.index[position].to(torch.int64)
        return local + 32768 if self.index.dtype == torch.int16 else local


@torch.no_grad()
def mask_with_moments(
    weight: torch.Tensor, keep: torch.Tensor, context: StepContext | None
) -> None:
    """Zero `weight` where `keep` (the mask as 0/1 floats, `KeepMasks`) is 0 and, given the
    step's context, its optimiser moments."""
    weight.mul_(keep)
    state = {} if context is None else context.optimizer_state(weight)
    for key in MOMENTS:
        if isinstance(state.get(key), torch.Tensor) and state[key].shape == keep.shape:
            state[key].mul_(keep)


class KeepMasks:
    """Boolean masks as 0/1 float tensors, made again only when a mask changes.

    Masking is a multiply by these: on the CPU `masked_fill_(~mask, 0)` took 7x as long as
    `mul_(keep)` (3 tensors of 4.7M float32: 103 ms against 14 ms), and it runs on the weights
    and both Adam moments after every step. A cached tensor is used while its mask is the same
    object at the same version counter (every in-place write, `load_state_dict` included,
    moves it). Entries hold their mask weakly and go with it: a mask replaced by another
    object (`module.to(device)`) leaves no stale copy behind."""

    def __init__(self) -> None:
        self._cache: dict[int, tuple[weakref.ref, int, torch.Tensor]] = {}

    def __reduce__(self) -> tuple:
        return (KeepMasks, ())  # a copy (deepcopy, pickle) starts empty: its masks are new

    def __len__(self) -> int:
        return len(self._cache)

    def __call__(self, mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """`mask` as 0/1 in `like`'s dtype."""
        key = id(mask)
        hit = self._cache.get(key)
        stale = hit is None or hit[0]() is not mask or hit[1] != mask._version
        if stale or hit[2].dtype != like.dtype:
            cache = self._cache
            gone = weakref.ref(mask, lambda _ref: cache.pop(key, None))
            hit = (gone, mask._version, mask.to(like.dtype))
            cache[key] = hit
        return hit[2]


class MaskedTables(HashedEmbeddingTables):
    """A base's tables (probe plan) trained under a fixed-size 0/1 mask per table.

    The weights themselves hold the zeros: after every optimiser step `after_step` zeroes the
    masked weights **and** the optimiser's moments there (Adam's `exp_avg`/`exp_avg_sq`, SGD's
    momentum), so the forward is the base's plain lookup and masked positions still receive
    their gradient (what DSL's growth reads); after a step on sparse gradients (the retrieval
    towers') only the rows it touched are re-masked. Subclasses decide when masks change
    (`_update_masks`) and whether they apply yet (`_sparse`). `num_parameters`/`num_bytes` are
    those of the stored form, and `compact()` gives it (`CompactSparseTables`).
    """

    def _setup(
        self, base: EmbeddingConfig, density: float | None, byte_budget: float | None
    ) -> None:
        """Build the base's tables and one all-ones mask per table; `target_nonzeros` from the
        density, or from `byte_budget` (a fraction of the tables' dense float32 bytes)."""
        from plexus.models.embeddings.registry import method_class

        self._plan: Plan = method_class(base.method).plan(base, self.features)  # type: ignore[attr-defined]
        self._build(*self._plan)
        shapes = [(rows, self.config.dim) for rows in self.table_rows.values()]
        if byte_budget is not None:
            dense = sum(4 * r * c for r, c in shapes)
            self.target_nonzeros = nonzeros_for_budget(shapes, byte_budget * dense)
        else:
            assert density is not None
            self.target_nonzeros = [max(1, round(density * r * c)) for r, c in shapes]
        for k, (rows, dim) in enumerate(shapes):
            self.register_buffer(f"mask_{k}", torch.ones(rows, dim, dtype=torch.bool))
        self.keep = KeepMasks()

    def weights(self) -> list[nn.Parameter]:
        return [self.ebc.embedding_bags[t].weight for t in self.table_rows]

    def masks(self) -> list[torch.Tensor]:
        return [getattr(self, f"mask_{k}") for k in range(len(self.table_rows))]

    def _sparse(self) -> bool:
        """Whether the masks are in force (magnitude pruning's dense stage: not yet)."""
        return True

    def _update_masks(self, context: StepContext) -> bool:
        """Change the masks after this step (DSL's prune and grow); the weights are masked.
        True if a mask changed."""
        return False

    @torch.no_grad()
    def apply_masks(self, context: StepContext | None = None) -> None:
        """Zero the masked weights and, given the optimisers, their moments."""
        for weight, mask in zip(self.weights(), self.masks(), strict=True):
            mask_with_moments(weight, self.keep(mask, weight), context)

    def after_step(self, context: StepContext) -> None:
        if not self._sparse():
            return
        if self.sparse_gradients():
            self.mask_touched_rows(context)  # (the other rows did not move)
        else:
            self.apply_masks(context)
        if self._update_masks(context):
            self.apply_masks(context)  # grown positions start from zero weights and moments

    def sparse_gradients(self) -> bool:
        """Whether the last step gave the tables sparse gradients (the retrieval towers')."""
        return any(w.grad is not None and w.grad.is_sparse for w in self.weights())

    @torch.no_grad()
    def mask_touched_rows(self, context: StepContext) -> None:
        """Re-mask, in weights and optimiser moments, the rows this step's gradients touched
        (a sparse gradient's rows; a dense gradient: the whole table). The rows of a parameter
        without a gradient were not stepped (SparseAdam, Adam and SGD skip it)."""
        for weight, mask in zip(self.weights(), self.masks(), strict=True):
            grad = weight.grad
            if grad is None:
                continue
            if not grad.is_sparse:
                mask_with_moments(weight, self.keep(mask, weight), context)
                continue
            state = context.optimizer_state(weight)
            tensors = [weight.data, *(state.get(key) for key in MOMENTS)]
            tensors = [t for t in tensors if isinstance(t, torch.Tensor) and t.shape == mask.shape]
            rows = torch.unique(grad._indices()[0])  # (R,) touched rows; uncoalesced COO
            keep = mask.index_select(0, rows)  # (R, dim)
            for tensor in tensors:
                tensor.index_copy_(0, rows, tensor.index_select(0, rows) * keep)

    def nonzeros(self) -> list[int]:
        return [int(m.sum()) for m in self.masks()]

    def num_parameters(self) -> int:
        if not self._sparse():
            return super().num_parameters()
        dim = self.config.dim
        return sum(
            rows * dim if stored_dense(rows, dim, n) else n
            for rows, n in zip(self.table_rows.values(), self.nonzeros(), strict=True)
        )

    def num_bytes(self) -> int:
        if not self._sparse():
            return super().num_bytes()
        return sum(
            sparse_bytes(rows, self.config.dim, n)
            for rows, n in zip(self.table_rows.values(), self.nonzeros(), strict=True)
        )

    def compact(self) -> EmbeddingTables:
        return CompactSparseTables(self) if self._sparse() else self


class CompactSparseTables(HashedEmbeddingTables):
    """The serving form of `MaskedTables`: each table a `SparseTable`, hashing of a hashed base
    in the graph; same outputs as the masked model. `forward_padded` takes raw ids."""

    def __init__(self, source: MaskedTables) -> None:
        super().__init__(source.config, source.features)
        self._build(*source._plan, with_tables=False)
        self.tables = nn.ModuleList(
            SparseTable(w.detach(), m)
            for w, m in zip(source.weights(), source.masks(), strict=True)
        )
        self.eval()

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        probes = self.remap(features)
        batch = probes.stride()
        lengths = probes.lengths().to(torch.int64)  # (P * B,), probe-major in table order
        values = probes.values()
        bag = torch.repeat_interleave(
            torch.arange(lengths.numel(), device=values.device), lengths, output_size=values.numel()
        )
        offsets = torch.cumsum(lengths, 0)
        pooled, first = [], 0
        for table, count in zip(self.tables, self._probes_per_table.values(), strict=True):
            start = int(offsets[first * batch - 1]) if first else 0
            stop = int(offsets[(first + count) * batch - 1])
            vectors = table.gather(values[start:stop])
            out = vectors.new_zeros(count * batch, self.config.dim)
            pooled.append(out.index_add(0, bag[start:stop] - first * batch, vectors))
            first += count
        return self._keyed(self._pooled_output(pooled, lengths, batch))

    def forward_padded(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        pooled = []
        for table, (_, index, rows) in zip(self.tables, self.padded_rows(ids), strict=True):
            vectors = table.gather(rows)  # (B, Pt, L, dim)
            feature = self._probe_feature[index]
            pooled.append(pool_padded(vectors, lengths[:, feature], self.config.pooling))
        return self._combine(torch.cat(pooled, dim=1).transpose(0, 1))

    def num_parameters(self) -> int:
        return sum(t.num_values() for t in self.tables)

    def num_bytes(self) -> int:
        return sum(t.num_bytes() for t in self.tables)


def byte_budget_row(base: str, budget: float) -> tuple[float, dict[str, Any]]:
    """A benchmark row of a method that masks its base's tables to a byte budget (DSL,
    magnitude pruning; `LearnedOptions.at_budget`) at `budget` of the full tables' bytes: full
    tables at 1; a shared base at twice the budget in rows, so about half of it stays (near the
    official density 0.5)."""
    start = 1.0 if base == EmbeddingMethod.FULL.value else min(1.0, 2 * budget)
    options: dict[str, Any] = {"base": base}
    if budget < 1.0:
        options["byte_budget"] = min(1.0, budget / start)
    return start, options


def check_fraction(value: float | None, key: str) -> None:
    """A density or byte budget in (0, 1], or a ConfigError naming `key`."""
    if value is not None and not 0.0 < value <= 1.0:
        raise ConfigError(f"{key}={value} must be in (0, 1]")


__all__ = [
    "CompactSparseTables",
    "MaskedTables",
    "SparseTable",
    "block_rows",
    "byte_budget_row",
    "nonzeros_for_budget",
    "sparse_bytes",
    "storage_form",
]
