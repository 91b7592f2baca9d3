"""One mini-batch as model input, built from an encoded Arrow table in a few vectorised steps."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from plexus.platform.errors import DataError
from plexus.platform.feature_spec import FeatureSpec
from torchrec import KeyedJaggedTensor


@dataclasses.dataclass
class Batch:
    """`dense` (B, Dn) float32 (Dn may be 0), `sparse` ids keyed by the spec's sparse features in
    spec order, `labels` (B,) float32."""

    dense: torch.Tensor
    sparse: KeyedJaggedTensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device | str, *, non_blocking: bool = False) -> Batch:
        """The same batch on `device` (the pipelines pick the device, never the model)."""
        return Batch(
            dense=self.dense.to(device, non_blocking=non_blocking),
            sparse=self.sparse.to(torch.device(device), non_blocking=non_blocking),
            labels=self.labels.to(device, non_blocking=non_blocking),
        )


def _column(table: pa.Table, name: str) -> pa.Array:
    if name not in table.column_names:
        raise DataError(
            f"batch lacks column {name!r} (columns: {table.column_names}); "
            "was it encoded with this feature spec?"
        )
    column = table.column(name)
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def _int64_numpy(array: pa.Array, name: str) -> np.ndarray:
    if not pa.types.is_integer(array.type):
        raise DataError(f"column {name!r} has type {array.type}; sparse ids must be int64")
    if array.null_count:
        array = pc.fill_null(array, 0)  # missing -> the OOV id 0
    return array.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)


def batch_from_arrow(table: pa.Table, spec: FeatureSpec) -> Batch:
    """Model input from an encoded table (see `plexus.platform.feature_spec` for the columns).

    Single-valued int64 columns give one id per row; `list<int64>` columns give their list
    lengths (a null or empty list is an empty bag, pooled to zeros). The `KeyedJaggedTensor` is
    built once, with its per-key lengths precomputed, so nothing syncs or loops over rows.
    """
    rows = table.num_rows
    values: list[np.ndarray] = []
    lengths: list[np.ndarray] = []
    for feature in spec.sparse:
        array = _column(table, feature.name)
        if pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
            lens = pc.fill_null(pc.list_value_length(array), 0).to_numpy(zero_copy_only=False)
            values.append(_int64_numpy(pc.list_flatten(array), feature.name))
            lengths.append(lens.astype(np.int32, copy=False))
        else:
            values.append(_int64_numpy(array, feature.name))
            lengths.append(np.ones(rows, dtype=np.int32))
    per_key = [int(v.shape[0]) for v in values]
    sparse = KeyedJaggedTensor(
        keys=[f.name for f in spec.sparse],
        values=torch.from_numpy(np.concatenate(values) if values else np.zeros(0, np.int64)),
        lengths=torch.from_numpy(np.concatenate(lengths) if lengths else np.zeros(0, np.int32)),
        stride=rows,
        length_per_key=per_key,
        offset_per_key=[0, *np.cumsum(per_key).tolist()],
    )
    dense_cols = [
        _column(table, f.name).cast(pa.float32()).fill_null(0.0).to_numpy(zero_copy_only=False)
        for f in spec.dense
    ]
    dense = np.stack(dense_cols, axis=1) if dense_cols else np.zeros((rows, 0), np.float32)
    labels = _column(table, spec.label).cast(pa.float32()).to_numpy(zero_copy_only=False)
    return Batch(
        dense=torch.from_numpy(np.ascontiguousarray(dense, dtype=np.float32)),
        sparse=sparse,
        labels=torch.from_numpy(
            np.array(labels, dtype=np.float32)
        ),  # a copy: Arrow memory is read-only
    )


def pad_sparse(
    sparse: KeyedJaggedTensor, names: Sequence[str], max_length: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded form of sparse ids for `forward_padded` (the export path): ids (B, F, L) int64,
    zero-padded, bags longer than `max_length` truncated, and lengths (B, F) int64."""
    jagged = sparse.to_dict()
    missing = [n for n in names if n not in jagged]
    if missing:
        raise DataError(f"sparse batch lacks features {missing}; it has {sparse.keys()}")
    lengths = torch.stack([jagged[n].lengths().to(torch.int64) for n in names], dim=1)
    if max_length is None:
        max_length = int(lengths.max()) if lengths.numel() else 1
    width = max(max_length, 1)
    ids = torch.stack(
        [jagged[n].to_padded_dense(desired_length=width, padding_value=0) for n in names], dim=1
    )
    return ids.to(torch.int64), lengths.clamp(max=width)
