"""The row-compressed storage of sparse tables: exact lookups, real bytes, budgets with the index
overhead, and the serving tables equal to the masked training tables."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from plexus.models.batch import pad_sparse
from plexus.models.embeddings import EmbeddingConfig, build_embedding_tables
from plexus.models.embeddings.sparse_storage import (
    CompactSparseTables,
    KeepMasks,
    MaskedTables,
    SparseTable,
    block_rows,
    nonzeros_for_budget,
    sparse_bytes,
)
from plexus.platform.config import from_dict
from plexus.platform.errors import ConfigError
from tiny_ctr_data import random_kjt, sparse_features

SPARSE = [f.name for f in sparse_features()]


def _table(rows: int, dim: int, density: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, dim, generator=g)
    mask = torch.rand(rows, dim, generator=g) < density
    mask[rows // 2, dim // 2] = True  # never empty
    return weight, mask


@pytest.mark.parametrize(
    ("rows", "dim", "density"),
    [
        (100, 4, 0.5),  # blocks of rows sharing a pointer
        (1000, 16, 0.01),  # very sparse: the widest blocks
        (200, 16, 0.3),
        (50, 16, 0.9),  # the bitmap is smaller than CSR and dense
        (50, 16, 0.99),  # dense is smaller: stored dense
        (40, 256, 0.5),  # the bitmap (DSL's density 0.5 at a retrieval width): 0.53 of dense
        (30, 20, 0.6),  # a bitmap whose last byte is padded
        (300, 300, 0.05),  # 2-byte local indices
        (7, 3, 0.0),  # a single non-zero
    ],
)
def test_lookups_equal_the_masked_table_and_bytes_are_the_arrays(rows, dim, density) -> None:
    weight, mask = _table(rows, dim, density)
    table = SparseTable(weight, mask)
    ids = torch.randint(0, rows, (64, 3), generator=torch.Generator().manual_seed(1))
    ids[0, :] = torch.tensor([0, rows - 1, rows // 2])  # the edges and the planted non-zero
    assert torch.equal(table.gather(ids), (weight * mask)[ids])
    nnz = int(mask.sum())
    assert table.num_bytes() == sparse_bytes(rows, dim, nnz)
    assert table.num_bytes() <= 4 * rows * dim
    if table.form == "bitmap":
        assert table.num_bytes() == 4 * nnz + rows * (math.ceil(dim / 8) + 4)
        assert table.num_values() == nnz
    if table.form == "csr":
        g = table.rows_per_block
        index_bytes = 1 if g * dim <= 256 else 2
        assert table.index.element_size() == index_bytes
        assert table.num_bytes() == (4 + index_bytes) * nnz + 4 * (math.ceil(rows / g) + 1)
        assert table.num_values() == nnz


def test_dense_storage_when_the_csr_would_be_larger() -> None:
    weight, mask = _table(50, 16, 0.99)
    assert SparseTable(weight, mask).dense
    assert sparse_bytes(50, 16, int(mask.sum())) == 4 * 50 * 16


def test_the_bitmap_form_at_half_density_is_under_the_csr_form() -> None:
    """At DSL's density 0.5 and the retrieval width 256, 1-byte CSR indices cost 0.63 of the
    dense bytes; the bitmap (one bit per position, a pointer per row) 0.53."""
    weight, mask = _table(40, 256, 0.5)
    table = SparseTable(weight, mask)
    assert table.form == "bitmap" and table.bits.dtype == torch.uint8
    assert table.num_bytes() < 0.54 * 4 * 40 * 256
    assert table.num_bytes() < (4 + 1) * int(mask.sum())  # CSR's values and indices alone


def test_block_rows_spend_at_most_the_pointer_share_unless_at_the_index_limit() -> None:
    assert block_rows(10_000, 16, 200_000) == 1  # dense enough: a pointer per row is cheap
    g = block_rows(10_000, 16, 2_000)
    assert g == 16  # very sparse: as wide as a 1-byte index allows (16 x 16 = 256)
    g = block_rows(10_000, 16, 20_000)
    assert 4 * (math.ceil(10_000 / g) + 1) <= 0.05 * 5 * 20_000
    assert 4 * (math.ceil(10_000 / (g // 2)) + 1) > 0.05 * 5 * 20_000


@pytest.mark.parametrize("fraction", [1 / 4, 1 / 16, 1 / 64])
def test_nonzeros_for_a_byte_budget_include_the_index_overhead(fraction: float) -> None:
    shapes = [(5_000, 16), (300, 16), (20_000, 16)]
    dense = sum(4 * r * c for r, c in shapes)
    counts = nonzeros_for_budget(shapes, fraction * dense)
    stored = sum(sparse_bytes(r, c, n) for (r, c), n in zip(shapes, counts, strict=True))
    assert stored <= fraction * dense
    # Float32 values alone would allow more: the indices and pointers are paid for.
    assert sum(counts) < fraction * dense / 4
    more = [n + max(1, n // 50) for n in counts]
    assert sum(sparse_bytes(r, c, n) for (r, c), n in zip(shapes, more, strict=True)) > stored
    densities = [n / (r * c) for (r, c), n in zip(shapes, counts, strict=True)]
    assert max(densities) - min(densities) < 1e-3  # uniform per tensor


def test_a_budget_below_the_pointers_is_refused_with_the_key() -> None:
    with pytest.raises(ConfigError, match="byte_budget"):
        nonzeros_for_budget([(1_000_000, 16)], 100.0)


BASES = {
    "full": {"dim": 4},
    "hashing": {"dim": 4, "budget": 0.5, "options": {"base": "hashing"}},
    "unified": {"dim": 2, "budget": 0.5, "chunks": 2, "options": {"base": "unified"}},
    "multiplexed": {
        "dim": 4,
        "budget": 0.5,
        "probes": 2,
        "pooling": "mean",
        "options": {"base": "multiplexed"},
    },
}


@pytest.mark.parametrize("base", list(BASES))
@pytest.mark.parametrize("method", ["dsl", "magnitude_pruning"])
def test_the_compact_form_serves_the_masked_tables_exactly(base: str, method: str) -> None:
    raw = {"method": method, **BASES[base]}
    raw["options"] = {**raw.get("options", {}), "byte_budget": 0.3}
    torch.manual_seed(0)
    tables = build_embedding_tables(from_dict(EmbeddingConfig, raw), sparse_features())
    assert isinstance(tables, MaskedTables)
    if method == "magnitude_pruning":
        tables.prune()
    tables.eval()
    compact = tables.compact()
    assert isinstance(compact, CompactSparseTables)
    kjt = random_kjt(batch=64, seed=5)
    with torch.no_grad():
        expected = tables(kjt).values()
        torch.testing.assert_close(compact(kjt).values(), expected, rtol=0, atol=1e-7)
        ids, lengths = pad_sparse(kjt, SPARSE)
        torch.testing.assert_close(
            compact.forward_padded(ids, lengths), expected, rtol=0, atol=1e-7
        )
    assert compact.num_bytes() == tables.num_bytes()
    assert compact.num_parameters() == tables.num_parameters()
    dense_bytes = 4 * sum(rows * tables.config.dim for rows in tables.table_rows.values())
    assert compact.num_bytes() <= 0.3 * dense_bytes
    assert not any(p.requires_grad for p in compact.parameters())


def test_keep_masks_follow_every_change_of_their_mask() -> None:
    """The cached 0/1 floats that masking multiplies by are made again after an in-place
    write, a `load_state_dict` and for a copy; never a stale mask."""
    keep = KeepMasks()
    module = torch.nn.Module()
    module.register_buffer("mask", torch.tensor([[True, False], [False, True]]))
    like = torch.zeros(2, 2)
    assert keep(module.mask, like).tolist() == [[1.0, 0.0], [0.0, 1.0]]
    assert keep(module.mask, like) is keep(module.mask, like)  # cached while unchanged
    module.mask[0, 1] = True
    assert keep(module.mask, like).tolist() == [[1.0, 1.0], [0.0, 1.0]]
    module.load_state_dict({"mask": torch.tensor([[False, False], [True, True]])})
    assert keep(module.mask, like).tolist() == [[0.0, 0.0], [1.0, 1.0]]
    assert keep(module.mask, like.double()).dtype == torch.float64
    copied = copy.deepcopy(keep)
    assert copied(module.mask, like).tolist() == [[0.0, 0.0], [1.0, 1.0]]
    # A mask replaced by another object (as `module.to(device)` does) takes its copy with it.
    module.mask = torch.tensor([[True, True], [True, True]])
    assert keep(module.mask, like).tolist() == [[1.0, 1.0], [1.0, 1.0]]
    assert len(keep) == 1
