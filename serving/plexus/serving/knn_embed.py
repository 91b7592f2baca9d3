"""kNN-Embed query time in numpy: split K over a user's interests, then merge the per-interest lists.

A user is a mixture over C interest clusters (El-Kishky et al., 2022). Retrieval allocates the K
candidates across the mixture components in proportion to their weights (largest-remainder
rounding, with a floor for the top components), searches each component inside its cluster and
merges the lists. Everything here is vectorized over a batch of users so that evaluation (all
users at once) and the service (one request) run the same code.

Example:
    >>> alloc = allocate(np.array([[0.6, 0.3, 0.1]]), 10, floor_components=0)
    >>> alloc.tolist()
    [[6, 3, 1]]
"""

from __future__ import annotations

import dataclasses

import numpy as np
from plexus.platform.errors import ConfigError

__all__ = [
    "AllocationConfig",
    "ComponentPlan",
    "allocate",
    "cap_allocation",
    "plan_components",
    "merge_components",
]


@dataclasses.dataclass(frozen=True, kw_only=True)
class AllocationConfig:
    """How K is split over the mixture: at most `max_components` components with weight >=
    `min_weight` are used; each of the top `floor_components` gets at least
    `max(1, round(floor_fraction * K))` candidates; the rest is split by largest remainder of
    the weights raised to `power` (1 = proportional, < 1 flatter: more of the minor interests)."""

    max_components: int = 16
    min_weight: float = 0.0
    floor_components: int = 1
    floor_fraction: float = 0.1
    power: float = 1.0

    def __post_init__(self) -> None:
        if self.max_components < 1:
            raise ConfigError(f"max_components: must be >= 1, got {self.max_components}")
        if not 0.0 <= self.min_weight < 1.0:
            raise ConfigError(f"min_weight: must be in [0, 1), got {self.min_weight}")
        if self.floor_components < 0:
            raise ConfigError(f"floor_components: must be >= 0, got {self.floor_components}")
        if not 0.0 <= self.floor_fraction <= 1.0:
            raise ConfigError(f"floor_fraction: must be in [0, 1], got {self.floor_fraction}")
        if self.power < 0.0:
            raise ConfigError(f"power: must be >= 0, got {self.power}")


def _row_rank(values: np.ndarray) -> np.ndarray:
    """Rank of each entry in its row by descending value (0 = largest; ties by column)."""
    order = np.argsort(-values, axis=1, kind="stable")
    rank = np.empty_like(order)
    rows = np.arange(values.shape[0])[:, None]
    rank[rows, order] = np.arange(values.shape[1])[None, :]
    return rank


def allocate(
    weights: np.ndarray,
    k: int,
    *,
    max_components: int = 16,
    min_weight: float = 0.0,
    floor_components: int = 1,
    floor_fraction: float = 0.1,
    power: float = 1.0,
) -> np.ndarray:
    """Split `k` candidates over mixture components: (B, C) weights -> (B, C) int64 counts.

    Every row sums to exactly `k`. Components outside the top `max_components` or below
    `min_weight` get 0 (the top component is always kept). The top `floor_components` active
    components first get a floor each; the remainder is split in proportion to the weights
    with largest-remainder (Hamilton) rounding; `power` != 1 reshapes the weights first.
    """
    w = np.clip(np.asarray(weights, dtype=np.float64), 0.0, None)
    if w.ndim != 2:
        raise ValueError(f"weights must be (B, C), got shape {w.shape}")
    batch, _ = w.shape
    if k <= 0 or batch == 0:
        return np.zeros(w.shape, dtype=np.int64)
    rank = _row_rank(w)
    active = ((rank < max_components) & (w >= min_weight) & (w > 0)) | (rank == 0)
    w = np.where(active, w**power if power != 1.0 else w, 0.0)
    total = w.sum(axis=1, keepdims=True)
    w = np.where(total > 0, w / np.where(total > 0, total, 1.0), (rank == 0).astype(np.float64))
    # Floors for the top components, capped so that they never exceed k.
    floor_mask = active & (rank < floor_components)
    n_floor = floor_mask.sum(axis=1)
    floor = max(1, round(floor_fraction * k)) if floor_components > 0 else 0
    per = np.minimum(floor, k // np.maximum(n_floor, 1))
    counts = floor_mask * per[:, None]
    remaining = k - counts.sum(axis=1)
    quota = w * remaining[:, None]
    base = np.floor(quota + 1e-9)
    frac = np.where(active, quota - base, -1.0)
    short = remaining - base.sum(axis=1)
    extra = _row_rank(frac) < short[:, None]
    return (counts + base + extra).astype(np.int64)


def cap_allocation(alloc: np.ndarray, capacity: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Keep each component's count within what its cluster can still return, (B, C) each.

    A user whose interests lie in small clusters would otherwise get fewer than K items near
    the catalog's size (a cluster of 30 items cannot give 100). The surplus goes to the user's
    other clusters with room, by descending weight, then by descending room (clusters outside
    the mixture). Rows keep their sum unless the clusters together hold fewer items.
    """
    capacity = np.maximum(capacity, 0)
    capped = np.minimum(alloc, capacity)
    surplus = (alloc - capped).sum(axis=1)
    for row in np.nonzero(surplus)[0]:
        room = capacity[row] - capped[row]
        for cluster in np.lexsort((-room, -weights[row])):
            if surplus[row] == 0:
                break
            give = min(int(room[cluster]), int(surplus[row]))
            capped[row, cluster] += give
            surplus[row] -= give
    return capped


@dataclasses.dataclass(frozen=True)
class ComponentPlan:
    """The per-component searches of a batch: A = number of (user, component) pairs with k > 0.

    `rows` (A,) user row in the batch, `clusters` (A,) cluster to search, `counts` (A,) how many
    candidates the component contributes, `fetch` how many results to ask the index for.
    """

    rows: np.ndarray
    clusters: np.ndarray
    counts: np.ndarray
    fetch: int


def plan_components(
    alloc: np.ndarray,
    *,
    excluded_per_cluster: np.ndarray | None = None,
    slack: int = 0,
) -> ComponentPlan:
    """Turn a (B, C) allocation into one flat list of per-cluster searches.

    `excluded_per_cluster` (B, C) counts excluded items per cluster, so that a component fetches
    enough to still return its share after filtering; `slack` extra results per component feed
    the backfill when a cluster runs short.
    """
    rows, clusters = np.nonzero(alloc > 0)
    counts = alloc[rows, clusters]
    need = counts.copy()
    if excluded_per_cluster is not None and rows.size:
        need = need + excluded_per_cluster[rows, clusters]
    fetch = int(need.max()) + slack if rows.size else 0
    return ComponentPlan(rows=rows, clusters=clusters, counts=counts, fetch=fetch)


def merge_components(
    plan: ComponentPlan,
    ids: np.ndarray,
    scores: np.ndarray,
    *,
    batch: int,
    k: int,
    excluded: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-component results (A, F) into per-user lists (B, k), deduplicated.

    Each component keeps its first `counts` valid results (ids >= 0, not excluded); if that
    leaves a user short of `k` (small clusters, exclusions), the best leftover results of all its
    components fill the gap. `excluded` = (rows, ids) pairs to drop. Output is sorted by score
    within the kept set, then the backfill; missing slots are id -1 with score -inf.
    """
    out_ids = np.full((batch, k), -1, dtype=np.int64)
    out_scores = np.full((batch, k), -np.inf, dtype=np.float32)
    if plan.rows.size == 0 or ids.size == 0:
        return out_ids, out_scores
    a, f = ids.shape
    row = np.repeat(plan.rows, f)
    flat_ids = ids.reshape(-1).astype(np.int64)
    flat_scores = scores.reshape(-1).astype(np.float32)
    stride = np.int64(max(int(flat_ids.max()), 0) + 1)
    if excluded is not None:
        stride = np.int64(max(int(stride), int(excluded[1].max(initial=-1)) + 1))
    key = row * stride + flat_ids
    valid = flat_ids >= 0
    if excluded is not None and excluded[0].size:
        valid &= ~np.isin(key, excluded[0].astype(np.int64) * stride + excluded[1])
    valid2 = valid.reshape(a, f)
    position = np.cumsum(valid2, axis=1) - 1
    kept = (valid2 & (position < plan.counts[:, None])).reshape(-1)
    # Priority 0 = within a component's share, 1 = backfill; sort by row, priority, -score.
    sel = np.nonzero(valid)[0]
    order = np.lexsort((-flat_scores[sel], ~kept[sel], row[sel]))
    sel = sel[order]
    # Deduplicate (row, id), keeping the first (best) occurrence.
    _, first = np.unique(key[sel], return_index=True)
    sel = sel[np.sort(first)]
    sel_rows = row[sel]
    starts = np.searchsorted(sel_rows, np.arange(batch))
    pos = np.arange(sel.size) - starts[sel_rows]
    take = pos < k
    out_ids[sel_rows[take], pos[take]] = flat_ids[sel[take]]
    out_scores[sel_rows[take], pos[take]] = flat_scores[sel[take]]
    return out_ids, out_scores
