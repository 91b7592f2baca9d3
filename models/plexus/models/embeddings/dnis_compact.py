"""DNIS's serving forms and its alpha plot (the method itself is `dnis.py`).

Both forms read raw ids (hashing and block lookup stay in the graph) and give the pruned
masked model's outputs; every stored array is a buffer whose name starts with `store_`, and
`num_bytes()` is the sum of their sizes:

* `CompactStructured` (full base): per feature, its rows as segments of consecutive rows that
  keep the same dimensions (a frequency block, or part of one): `store_starts` (F, G) int32
  first row of each segment (padded with 2^31 - 1), `store_offsets` (F, G) int32 where its
  values start, `store_widths` (F, G) uint8 its width, `store_cols` (F, G, D) uint8 which
  dimensions it keeps, and `store_values` every kept value (alpha merged), row after row.
* `CompactCSR` (any base): per table, CSR over the pruned entries: `store_values_k` float32,
  `store_cols_k` uint8 column indices, `store_rowptr_k` (rows + 1) int32; on a shared base
  also `store_alpha` (P, S, D) float32 and `store_bounds` (F, S - 1) int32 block boundaries,
  since alpha differs between the (feature, chunk) lookups that share a row.

A looked-up row becomes a `dim`-wide vector by gathering up to `dim` stored values and placing
each at its column (a one-hot sum: plain ops, so the ONNX export needs no scatter).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from plexus.models.batch import pad_sparse
from plexus.models.embeddings.base import pool_padded
from plexus.models.embeddings.hashed import HashedEmbeddingTables
from torchrec import KeyedJaggedTensor, KeyedTensor

if TYPE_CHECKING:
    from plexus.models.embeddings.dnis import DNISTables

INT32_MAX = 2**31 - 1


def col_dtype(dim: int) -> torch.dtype:
    """The column-index type of a `dim`-wide table."""
    return torch.uint8 if dim <= 256 else torch.int16


def _place(values: torch.Tensor, cols: torch.Tensor, valid: torch.Tensor, dim: int) -> torch.Tensor:
    """values, cols, valid (..., W) -> (..., dim): each valid value at its column, else 0."""
    onehot = (cols.unsqueeze(-1) == torch.arange(dim, device=cols.device)) & valid.unsqueeze(-1)
    return (values.unsqueeze(-1) * onehot.to(values.dtype)).sum(-2)


class _CompactDNIS(HashedEmbeddingTables):
    """Shared serving path: padded lookups per table, alpha on a shared base, pooling."""

    def __init__(self, source: DNISTables) -> None:
        super().__init__(source.config, source.features)
        self._build(*source._plan, with_tables=False)
        self.merged = source.merged
        if not self.merged:
            self.register_buffer("store_alpha", source.alpha.detach().clone())
            self.register_buffer(
                "store_bounds", source._bounds.clamp(max=INT32_MAX).to(torch.int32)
            )

    def _rows(self, k: int, rows: torch.Tensor) -> torch.Tensor:
        """Rows (...) of table k -> (..., dim) stored vectors (zeros where pruned)."""
        raise NotImplementedError

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        ids, lengths = pad_sparse(features, self.feature_names)
        return KeyedTensor(
            keys=list(self.feature_names),
            length_per_key=[self._widths[n] for n in self.feature_names],
            values=self.forward_padded(ids, lengths),
        )

    def forward_padded(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        pooled = []
        for k, (_, index, rows) in enumerate(self.padded_rows(ids)):
            feature = self._probe_feature[index]
            vectors = self._rows(k, rows)  # (B, Pt, L, dim)
            if not self.merged:
                probe = torch.tensor(index, device=ids.device).view(1, -1, 1)
                bounds = self.store_bounds[self._probe_feature[probe]].to(torch.int64)
                block = (ids[:, feature, :].unsqueeze(-1) >= bounds).sum(-1)
                vectors = vectors * self.store_alpha[probe, block]
            pooled.append(pool_padded(vectors, lengths[:, feature], self.config.pooling))
        return self._combine(torch.cat(pooled, dim=1).transpose(0, 1))

    def num_parameters(self) -> int:
        values = sum(b.numel() for n, b in self.named_buffers() if n.startswith("store_values"))
        return values + (0 if self.merged else self.store_alpha.numel())

    def num_bytes(self) -> int:
        return sum(
            b.numel() * b.element_size() for n, b in self.named_buffers() if n.startswith("store_")
        )


class CompactCSR(_CompactDNIS):
    """DNIS served from CSR tables (see the module docstring)."""

    def __init__(self, source: DNISTables) -> None:
        super().__init__(source)
        dim = self.config.dim
        for k, table in enumerate(source.table_rows):
            mask = source._mask(k)
            weight = source._weight(table).detach() * mask.to(source.alpha.dtype)
            if self.merged:
                weight = weight * _row_alpha(source, k)
            nonzero = torch.nonzero(mask)
            counts = mask.sum(1).to(torch.int64)
            rowptr = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(counts, 0)])
            self.register_buffer(f"store_values_{k}", weight[mask].clone())
            self.register_buffer(f"store_cols_{k}", nonzero[:, 1].to(col_dtype(dim)))
            self.register_buffer(f"store_rowptr_{k}", rowptr.to(torch.int32))
        self.eval()

    def _rows(self, k: int, rows: torch.Tensor) -> torch.Tensor:
        values = getattr(self, f"store_values_{k}")
        dim = self.config.dim
        if values.numel() == 0:
            return values.new_zeros(*rows.shape, dim)
        rowptr = getattr(self, f"store_rowptr_{k}").to(torch.int64)
        start = rowptr[rows]
        count = rowptr[rows + 1] - start
        j = torch.arange(dim, device=rows.device)
        valid = j < count.unsqueeze(-1)
        index = (start.unsqueeze(-1) + j).clamp(max=values.numel() - 1)
        cols = getattr(self, f"store_cols_{k}").to(torch.int64)[index]
        return _place(values[index] * valid.to(values.dtype), cols, valid, dim)


class CompactStructured(_CompactDNIS):
    """DNIS on full tables served from mixed-width segments (see the module docstring)."""

    def __init__(self, source: DNISTables) -> None:
        super().__init__(source)
        dim = self.config.dim
        starts, offsets, widths, cols, values = [], [], [], [], []
        stored = 0
        for k, table in enumerate(source.table_rows):
            mask = source._mask(k)
            weight = source._weight(table).detach() * mask.to(source.alpha.dtype)
            weight = weight * _row_alpha(source, k)
            change = (mask[1:] != mask[:-1]).any(1)
            first = torch.cat([torch.zeros(1, dtype=torch.int64), torch.nonzero(change)[:, 0] + 1])
            row_counts = mask.sum(1).to(torch.int64)
            row_offset = torch.cumsum(row_counts, 0) - row_counts
            starts.append(first)
            offsets.append(stored + row_offset[first])
            widths.append(row_counts[first])
            cols.append(
                torch.stack(
                    [
                        torch.nn.functional.pad(
                            torch.nonzero(mask[r])[:, 0], (0, dim - int(row_counts[r]))
                        )
                        for r in first.tolist()
                    ]
                )
            )
            values.append(weight[mask])
            stored += int(row_counts.sum())
        groups = max(len(s) for s in starts)

        def padded(parts: list[torch.Tensor], fill: int, dtype: torch.dtype) -> torch.Tensor:
            out = torch.full((len(parts), groups, *parts[0].shape[1:]), fill, dtype=torch.int64)
            for i, part in enumerate(parts):
                out[i, : len(part)] = part
            return out.to(dtype)

        self.register_buffer("store_starts", padded(starts, INT32_MAX, torch.int32))
        self.register_buffer("store_offsets", padded(offsets, 0, torch.int32))
        self.register_buffer("store_widths", padded(widths, 0, torch.uint8))
        self.register_buffer("store_cols", padded(cols, 0, col_dtype(dim)))
        self.register_buffer("store_values", torch.cat(values).clone())
        # Table k holds feature _table_feature[k] (one unhashed probe per table).
        self._table_feature = [
            int(self._probe_feature[[i for i, p in enumerate(self.probes) if p.table == t][0]])
            for t in self.table_rows
        ]
        self.eval()

    def _rows(self, k: int, rows: torch.Tensor) -> torch.Tensor:
        dim = self.config.dim
        if self.store_values.numel() == 0:
            return self.store_values.new_zeros(*rows.shape, dim)
        f = self._table_feature[k]
        starts = self.store_starts[f].to(torch.int64)  # (G,)
        segment = (rows.unsqueeze(-1) >= starts).sum(-1) - 1  # (...)
        width = self.store_widths[f].to(torch.int64)[segment]
        offset = self.store_offsets[f].to(torch.int64)[segment]
        j = torch.arange(dim, device=rows.device)
        valid = j < width.unsqueeze(-1)
        index = offset + (rows - starts[segment]) * width
        index = (index.unsqueeze(-1) + j).clamp(max=self.store_values.numel() - 1)
        cols = self.store_cols[f].to(torch.int64)[segment]
        values = self.store_values[index] * valid.to(self.store_values.dtype)
        return _place(values, cols, valid, dim)


def _row_alpha(source: DNISTables, k: int) -> torch.Tensor:
    """(rows, dim): alpha of each row of table k of a merged base (its probe, its block)."""
    probe = [i for i, p in enumerate(source.probes) if p.table == list(source.table_rows)[k]][0]
    rows = torch.arange(source.table_rows[source.probes[probe].table])
    feature = source._probe_feature[probe]
    return source.alpha.detach()[probe, source.block_of(torch.full_like(rows, int(feature)), rows)]


def alpha_figure(tables: DNISTables) -> Any:
    """Alpha after the search: its mean per (lookup, block) and every value per dimension."""
    from matplotlib.figure import Figure

    alpha = tables.alpha.detach().cpu()
    probes, blocks, dim = alpha.shape
    used = torch.zeros(probes, blocks, dtype=torch.bool)
    for i in range(probes):
        used[i, : tables.block_counts[int(tables._probe_feature[i])]] = True
    mean = alpha.mean(-1).masked_fill(~used, float("nan"))
    names = [p.key if tables._probes_per_feature > 1 else p.feature for p in tables.probes]
    height = max(4.0, 0.18 * probes + 1.5)
    figure = Figure(figsize=(13, height))
    left, right = figure.subplots(1, 2, gridspec_kw={"width_ratios": [1, 2]})
    image = left.imshow(mean.numpy(), aspect="auto", vmin=0, vmax=1, cmap="viridis")
    left.set_yticks(range(probes), names, fontsize=6)
    left.set_xticks(range(blocks), [f"b{b}" for b in range(blocks)])
    left.set_xlabel("frequency block (b0: most frequent ids)")
    left.set_title("mean alpha per field and block")
    flat = alpha.masked_fill(~used.unsqueeze(-1), float("nan")).reshape(probes, blocks * dim)
    right.imshow(flat.numpy(), aspect="auto", vmin=0, vmax=1, cmap="viridis")
    right.set_xticks([b * dim for b in range(blocks)], [f"b{b}" for b in range(blocks)])
    right.set_yticks([])
    right.set_xlabel(f"block x dimension ({dim} per block)")
    right.set_title(f"alpha per dimension (threshold |e * alpha| = {float(tables.threshold):.2e})")
    figure.colorbar(image, ax=right, fraction=0.03)
    return figure
