"""Side features of the retrieval towers: per-user and per-item feature ids beside the ids.

A tower looks its entity's side features up from these tables (gathers, in the ONNX graph too),
so a request still carries only a user id and a history. The tables are stored in the smallest
integer type that holds their ids (`compact_ids`): MovieLens' four user features take 8 bytes a
user (int16), the item features a few bytes per item per value.
"""

from __future__ import annotations

import dataclasses

import torch
from plexus.platform.errors import DataError
from plexus.platform.feature_spec import Feature


def compact_ids(ids: torch.Tensor) -> torch.Tensor:
    """Non-negative ids in the smallest of uint8 / int16 / int32 / int64 that holds them."""
    top = int(ids.max()) if ids.numel() else 0
    for dtype, limit in ((torch.uint8, 2**8), (torch.int16, 2**15), (torch.int32, 2**31)):
        if top < limit:
            return ids.to(dtype)
    return ids.to(torch.int64)


@dataclasses.dataclass(frozen=True)
class SideFeatures:
    """The side features of every user and item (ids of the spec's vocabularies, 0 = OOV).

    user_features / item_features: the spec's features, without the id features;
    user_ids (U + 1, Fu): each user's value of each feature (row 0: unknown user, unused);
    item_ids (N + 1, Fi, L) with item_lengths (N + 1, Fi): each item's bag per feature
    (single-valued features have length 1; row 0, the padding item, has length 0 everywhere);
    item_known (N + 1,) bool: items whose id embedding was trained (False: catalog items never
    in a training interaction, whose vector comes from their features alone).
    """

    user_features: tuple[Feature, ...]
    item_features: tuple[Feature, ...]
    user_ids: torch.Tensor
    item_ids: torch.Tensor
    item_lengths: torch.Tensor
    item_known: torch.Tensor

    @property
    def num_users(self) -> int:
        return int(self.user_ids.shape[0]) - 1

    @property
    def num_items(self) -> int:
        return int(self.item_ids.shape[0]) - 1

    def with_unknown_items(self, items: torch.Tensor) -> SideFeatures:
        """A copy where `items` count as never trained (their vectors from features alone)."""
        known = self.item_known.clone()
        known[items] = False
        return dataclasses.replace(self, item_known=known)

    def __post_init__(self) -> None:
        u, i = self.user_ids, self.item_ids
        if u.dim() != 2 or u.shape[1] != len(self.user_features):
            raise DataError(
                f"user_ids: expected (U + 1, {len(self.user_features)}), got {tuple(u.shape)}"
            )
        if i.dim() != 3 or i.shape[1] != len(self.item_features):
            raise DataError(
                f"item_ids: expected (N + 1, {len(self.item_features)}, L), got {tuple(i.shape)}"
            )
        if self.item_lengths.shape != i.shape[:2] or self.item_known.shape != i.shape[:1]:
            raise DataError("item_lengths (N + 1, Fi) and item_known (N + 1,) must match item_ids")


def mean_bag_weights(
    ids: torch.Tensor, lengths: torch.Tensor, *, pooling: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean over entities of each feature's pooled bag, as a weighted sum of rows.

    ids (E, F, L), lengths (E, F): the bags of E entities (`SideFeatures` layout). Pooling a bag
    is linear in its rows, so the mean over the entities of feature f's pooled vector is
    sum_v w[f, v] * row_f(v), with w[f, v] the number of bags holding v (each counted 1/len under
    mean pooling) over E. -> (values (R, F), weights (R, F)): feature f's distinct values in
    column f, padded with value 0 and weight 0 to the largest count R.
    """
    count, features, width = ids.shape
    present = torch.arange(width).view(1, 1, -1) < lengths.unsqueeze(-1)  # (E, F, L)
    share = present.to(torch.float64)
    if pooling == "mean":
        share = share / lengths.clamp(min=1).unsqueeze(-1).to(torch.float64)
    columns = []
    for f in range(features):
        values, inverse = torch.unique(ids[:, f][present[:, f]], return_inverse=True)
        weights = torch.zeros(values.numel(), dtype=torch.float64)
        weights.index_add_(0, inverse, share[:, f][present[:, f]])
        columns.append((values, weights / max(count, 1)))
    rows = max([v.numel() for v, _ in columns] + [1])
    values = torch.zeros(rows, features, dtype=torch.int64)
    weights = torch.zeros(rows, features, dtype=torch.float32)
    for f, (v, w) in enumerate(columns):
        values[: v.numel(), f], weights[: v.numel(), f] = v, w.to(torch.float32)
    return values, weights
