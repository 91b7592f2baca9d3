"""`batch_from_arrow`: single-valued, multi-valued and dense columns into one model batch."""

from __future__ import annotations

import pyarrow as pa
import pytest
import torch
from plexus.models.batch import batch_from_arrow, pad_sparse
from plexus.platform.errors import DataError
from tiny_ctr_data import tiny_spec


def _table() -> pa.Table:
    return pa.table(
        {
            "user": pa.array([1, 2, 3], pa.int64()),
            "item": pa.array([4, 5, 6], pa.int64()),
            "x0": pa.array([0.5, None, -1.0], pa.float32()),
            "x1": pa.array([1.0, 2.0, 3.0], pa.float32()),
            "tags": pa.array([[7, 8], [], None], pa.list_(pa.int64())),
            "hour": pa.array([0, 1, 2], pa.int64()),
            "click": pa.array([1.0, 0.0, 1.0], pa.float32()),
        }
    )


def test_single_multi_and_dense_columns() -> None:
    batch = batch_from_arrow(_table(), tiny_spec())
    assert len(batch) == 3
    assert batch.sparse.keys() == ["user", "item", "tags", "hour"]
    jagged = batch.sparse.to_dict()
    assert jagged["user"].values().tolist() == [1, 2, 3]
    assert jagged["user"].lengths().tolist() == [1, 1, 1]
    assert jagged["tags"].values().tolist() == [7, 8]
    assert jagged["tags"].lengths().tolist() == [2, 0, 0]
    assert batch.sparse.values().dtype == torch.int64
    assert batch.sparse.length_per_key() == [3, 3, 2, 3]
    torch.testing.assert_close(batch.dense, torch.tensor([[0.5, 1.0], [0.0, 2.0], [-1.0, 3.0]]))
    assert batch.labels.tolist() == [1.0, 0.0, 1.0] and batch.labels.dtype == torch.float32


def test_chunked_and_sliced_columns_match_the_whole_table() -> None:
    table = _table()
    chunked = pa.concat_tables([table.slice(0, 1), table.slice(1, 2)])
    assert chunked.column("tags").num_chunks == 2
    a, b = batch_from_arrow(table, tiny_spec()), batch_from_arrow(chunked, tiny_spec())
    assert torch.equal(a.sparse.values(), b.sparse.values())
    assert torch.equal(a.sparse.lengths(), b.sparse.lengths())
    sliced = batch_from_arrow(table.slice(1, 2), tiny_spec())
    assert sliced.sparse.to_dict()["tags"].lengths().tolist() == [0, 0]
    assert sliced.sparse.to_dict()["user"].values().tolist() == [2, 3]


def test_no_dense_features_gives_an_empty_dense_block() -> None:
    table = _table().drop_columns(["x0", "x1"])
    batch = batch_from_arrow(table, tiny_spec(num_dense=0))
    assert batch.dense.shape == (3, 0) and batch.dense.dtype == torch.float32


def test_missing_column_is_a_data_error() -> None:
    with pytest.raises(DataError, match="tags"):
        batch_from_arrow(_table().drop_columns(["tags"]), tiny_spec())


def test_pad_sparse_pads_and_truncates_bags() -> None:
    batch = batch_from_arrow(_table(), tiny_spec())
    ids, lengths = pad_sparse(batch.sparse, ["tags", "user"])
    assert ids.shape == (3, 2, 2) and lengths.tolist() == [[2, 1], [0, 1], [0, 1]]
    assert ids[:, 0].tolist() == [[7, 8], [0, 0], [0, 0]] and ids[:, 1, 0].tolist() == [1, 2, 3]
    ids, lengths = pad_sparse(batch.sparse, ["tags"], max_length=1)
    assert ids[:, 0].tolist() == [[7], [0], [0]] and lengths[:, 0].tolist() == [1, 0, 0]
