"""kNN-Embed user state in the service: known users' stored mixtures, new users' neighbours.

A user's interest mixture (El-Kishky et al., 2022) is its own cluster histogram smoothed with
the mean cluster distribution of its nearest users. The batch job (export) computes it exactly
for every known user and stores only each user's top-M clusters and weights
(`CompactMixtures`: uint8 ids + one-byte log-scale weights, 2 * M bytes a user), so a known user
costs a gather at request time, never a search over all users.

A new user (a history, no id) or a known user who sends a fresh history is smoothed through
`ReferenceIndex`: an exact inner-product faiss index (IndexFlatIP) over a bounded random sample
of at most `reference_users` known users, with their training distributions in the same compact
form. Chosen over a PQ index over all users because its memory does not grow with the users
(the target is <= 64 bytes a user beyond the embedding table; a sample of R users costs
R * (4 * D + 2 * M + 8) bytes in all, 0 bytes a user at scale) and because a flat search over
the sample is exact: with the sample at all users (R >= U) it gives the dense computation's
neighbours (tested). A smaller sample moves the neighbour part of the mixture, not the recall:
on Gowalla (29,858 users) samples of 7,464 and 5,000 kept new users' Recall@20 within 0.0004
of the dense mixtures' and Recall@200 within 0.003 (README, "A bundle that scales with users").

Example:
    >>> mix = np.array([[0.5, 0.3, 0.2, 0.0]], np.float32)
    >>> store = CompactMixtures.from_dense(mix, top=2, dtype=WeightDtype.FLOAT32)
    >>> store.dense(np.array([0]), 4).round(3).tolist()
    [[0.625, 0.375, 0.0, 0.0]]
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

import numpy as np
from plexus.platform.config import coerce_choice
from plexus.platform.errors import ConfigError, RegistryError, require

__all__ = [
    "WeightDtype",
    "NeighborSearch",
    "UserStateConfig",
    "CompactMixtures",
    "ReferenceIndex",
    "UserState",
    "USER_STATE_ARRAYS",
    "sample_reference",
]

USER_STATE_ARRAYS = (
    "user_mixture_clusters",  # (U+1, M) uint8/uint16 top-M clusters of each known user's mixture
    "user_mixture_weights",  # (U+1, M) their weights (`WeightDtype`; row 0 = padding, all 0)
    "reference_users",  # (R,) int64 internal ids of the new-user index's sample of known users
    "reference_vectors",  # (R, D) float32 their unit user vectors (the index's rows)
    "reference_clusters",  # (R, M) top-M clusters of their training distributions
    "reference_weights",  # (R, M) the weights
)


class WeightDtype(enum.StrEnum):
    """Storage of mixture weights: `log8` one byte on a log scale (w = 2 ** (-code / 16), 255 =
    0: +-2.2 % relative error down to 1.6e-5, so minor interests keep their share), `float16`
    (2 bytes) or `float32` (exact, for checks)."""

    LOG8 = "log8"
    FLOAT16 = "float16"
    FLOAT32 = "float32"


class NeighborSearch(enum.StrEnum):
    """How the export finds known users' neighbours (`export.user_state.neighbor_search`)."""

    AUTO = "auto"
    EXACT = "exact"
    HNSW = "hnsw"


_LOG8_STEPS = 16.0  # codes per halving of the weight
_LOG8 = np.append(2.0 ** (-np.arange(255) / _LOG8_STEPS), 0.0).astype(np.float32)


def _encode(weights: np.ndarray, dtype: WeightDtype) -> np.ndarray:
    if dtype is not WeightDtype.LOG8:
        return weights.astype(np.dtype(dtype.value))
    with np.errstate(divide="ignore"):
        code = np.round(-_LOG8_STEPS * np.log2(np.maximum(weights, 0.0)))
    return np.where(weights > 0, np.clip(code, 0, 254), 255).astype(np.uint8)


def _decode(stored: np.ndarray) -> np.ndarray:
    return _LOG8[stored] if stored.dtype == np.uint8 else stored.astype(np.float32)


@dataclasses.dataclass(frozen=True, kw_only=True)
class UserStateConfig:
    """How the bundle stores user mixtures (`export.user_state` in the retrieval config).

    `top_clusters` M: clusters kept per user (all when >= C; the export keeps at most
    `export.allocation.max_components`, all the allocation reads); `weight_dtype`: log8, float16 or
    float32; `reference_users` R: size of the sample of known users that new users are smoothed
    with (all users when U <= R); `seed` draws the sample. The defaults cost 2 * 24 = 48 bytes a
    user (uint8 ids below 257 clusters) and keep the diversity of the dense mixtures on
    MovieLens (README: M = 8 or 16 in float16 lost a third or an eighth of the distinct
    clusters at K = 200); on Gowalla a sample of 5,000 users gave new users the dense
    mixtures' Recall@20 to 0.0004, so 20,000 (6.2 MB at dim 64) is a safe bound.

    `neighbor_search`: how the export finds each known user's nearest users (the batch step):
    `exact` compares every user with every user (U^2 D work), `hnsw` searches a faiss HNSW
    graph (about U log U), `auto` is exact up to `exact_users` users and HNSW beyond."""

    top_clusters: int = 24
    weight_dtype: WeightDtype = WeightDtype.LOG8
    reference_users: int = 20_000
    seed: int = 0
    neighbor_search: NeighborSearch = NeighborSearch.AUTO
    exact_users: int = 100_000  # the exact search costs ~2x HNSW there (README)

    def __post_init__(self) -> None:
        coerce_choice(self, "weight_dtype", WeightDtype, "export.user_state.weight_dtype")
        if self.top_clusters < 1:
            raise ConfigError(
                f"export.user_state.top_clusters: must be >= 1, got {self.top_clusters}"
            )
        if self.reference_users < 1:
            raise ConfigError(
                f"export.user_state.reference_users: must be >= 1, got {self.reference_users}"
            )
        coerce_choice(self, "neighbor_search", NeighborSearch, "export.user_state.neighbor_search")
        if self.exact_users < 0:
            raise ConfigError(
                f"export.user_state.exact_users: must be >= 0, got {self.exact_users}"
            )

    def capped(self, max_components: int) -> UserStateConfig:
        """This config keeping at most `max_components` clusters a user: the allocation
        (`AllocationConfig.max_components`) reads no cluster past them, so a store keeps none
        (2 bytes a known user for each)."""
        return dataclasses.replace(self, top_clusters=min(self.top_clusters, max_components))

    def exact_for(self, num_users: int) -> bool:
        """Whether the batch step compares all `num_users` users exactly."""
        if self.neighbor_search is NeighborSearch.AUTO:
            return num_users <= self.exact_users
        return self.neighbor_search is NeighborSearch.EXACT


def _id_dtype(num_clusters: int) -> type[np.integer[Any]]:
    if num_clusters <= 256:
        return np.uint8
    return np.uint16 if num_clusters <= 2**16 else np.int32


@dataclasses.dataclass(frozen=True)
class CompactMixtures:
    """Top-M clusters of each row's mixture: clusters (R, M) uint8 (uint16 above 256 clusters),
    weights (R, M) in the `WeightDtype`'s storage (uint8 codes for log8), each row renormalised
    to sum 1 before storage (all zero for an empty row)."""

    clusters: np.ndarray
    weights: np.ndarray

    @classmethod
    def from_dense(
        cls, dense: np.ndarray, *, top: int, dtype: WeightDtype = WeightDtype.LOG8
    ) -> CompactMixtures:
        """(R, C) mixtures -> their top-`top` entries (ties by lower cluster id)."""
        dense = np.asarray(dense, dtype=np.float32)
        m = min(top, dense.shape[1])
        order = np.argsort(-dense, axis=1, kind="stable")[:, :m]
        weights = np.take_along_axis(dense, order, axis=1)
        total = weights.sum(axis=1, keepdims=True)
        weights = np.where(total > 0, weights / np.where(total > 0, total, 1.0), 0.0)
        return cls(
            clusters=order.astype(_id_dtype(dense.shape[1])), weights=_encode(weights, dtype)
        )

    @classmethod
    def empty(cls, rows: int, top: int, num_clusters: int, dtype: WeightDtype) -> CompactMixtures:
        m = min(top, num_clusters)
        return cls(
            clusters=np.zeros((rows, m), _id_dtype(num_clusters)),
            weights=_encode(np.zeros((rows, m), np.float32), dtype),
        )

    def dense(self, rows: np.ndarray, num_clusters: int) -> np.ndarray:
        """(B,) row ids -> (B, C) float32 mixtures, rows summing to 1 (or 0 when empty)."""
        ids = self.clusters[rows].astype(np.int64)
        flat = np.arange(rows.size)[:, None] * num_clusters + ids
        out = np.bincount(
            flat.ravel(),
            weights=_decode(self.weights[rows]).ravel(),
            minlength=rows.size * num_clusters,
        ).reshape(rows.size, num_clusters)
        total = out.sum(axis=1, keepdims=True)
        return (out / np.where(total > 0, total, 1.0)).astype(np.float32)


class ReferenceIndex:
    """Exact inner-product search over a sample of known users' vectors; the neighbour part of
    a mixture is the mean of the found users' compact training distributions."""

    def __init__(self, users: np.ndarray, vectors: np.ndarray, dists: CompactMixtures) -> None:
        faiss = require("faiss", "serve")
        self.users = np.asarray(users, dtype=np.int64)
        self.dists = dists
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.index = faiss.IndexFlatIP(vectors.shape[1])
        self.index.add(vectors)  # faiss keeps its own copy; the caller's array can go

    def __len__(self) -> int:
        return int(self.users.size)

    def neighbour_mixture(
        self, query: np.ndarray, users: np.ndarray, k: int, num_clusters: int
    ) -> np.ndarray:
        """Mean distribution of the `k` nearest sample users of each query (B, D), never the
        querying user itself (`users` (B,) internal ids, 0 = new user). -> (B, C) float32."""
        batch = query.shape[0]
        k = min(k, max(len(self) - 1, 1))
        fetch = min(k + 1, len(self))
        _, labels = self.index.search(np.ascontiguousarray(query, dtype=np.float32), fetch)
        valid = (labels >= 0) & (self.users[np.maximum(labels, 0)] != users[:, None])
        keep = valid & (np.cumsum(valid, axis=1) <= k)
        rows = np.broadcast_to(np.arange(batch)[:, None], labels.shape)[keep]
        picked = labels[keep]
        ids = self.dists.clusters[picked].astype(np.int64)
        weights = _decode(self.dists.weights[picked])
        weights = weights / np.maximum(weights.sum(axis=1, keepdims=True), 1e-12)
        flat = (rows[:, None] * num_clusters + ids).ravel()
        sums = np.bincount(flat, weights=weights.ravel(), minlength=batch * num_clusters)
        counts = np.maximum(keep.sum(axis=1, keepdims=True), 1)
        return (sums.reshape(batch, num_clusters) / counts).astype(np.float32)


class UserState:
    """Everything user-side the service needs besides the ONNX model's own user table.

    `mixture(users, query, own, stored)`: stored mixtures for the rows in `stored` (known users
    answered from their training history), neighbour-smoothed `own` histograms for the rest.
    """

    def __init__(
        self,
        *,
        mixtures: CompactMixtures,
        reference: ReferenceIndex,
        num_clusters: int,
        neighbors: int,
        smoothing: float,
    ) -> None:
        self.mixtures = mixtures
        self.reference = reference
        self.num_clusters = int(num_clusters)
        self.neighbors = int(neighbors)
        self.smoothing = float(smoothing)

    def smooth(self, own: np.ndarray, query: np.ndarray, users: np.ndarray) -> np.ndarray:
        """(1 - s) * own + s * neighbours' mean (neighbours alone for an empty history), rows
        normalised: own (B, C) history histograms, query (B, D), users (B,) (0 = new)."""
        neigh = self.reference.neighbour_mixture(
            query, np.asarray(users, np.int64), self.neighbors, self.num_clusters
        )
        total = own.sum(axis=1, keepdims=True)
        lam = self.smoothing
        mix = np.where(total > 0, (1.0 - lam) * own + lam * neigh, neigh)
        return (mix / np.maximum(mix.sum(axis=1, keepdims=True), 1e-12)).astype(np.float32)

    def mixture(
        self, users: np.ndarray, query: np.ndarray, own: np.ndarray, stored: np.ndarray
    ) -> np.ndarray:
        """(B, C) mixtures: `stored` (B,) bool rows from the store, the others smoothed."""
        users = np.asarray(users, np.int64)
        out = np.empty((users.size, self.num_clusters), np.float32)
        if stored.any():
            out[stored] = self.mixtures.dense(users[stored], self.num_clusters)
        fresh = ~stored
        if fresh.any():
            out[fresh] = self.smooth(own[fresh], query[fresh], users[fresh])
        return out

    # ---- bundle I/O -----------------------------------------------------------------------------
    def arrays(self) -> dict[str, np.ndarray]:
        """The `USER_STATE_ARRAYS` of a bundle."""
        index = self.reference.index
        vectors = index.reconstruct_n(0, index.ntotal) if index.ntotal else np.zeros((0, index.d))
        return {
            "user_mixture_clusters": self.mixtures.clusters,
            "user_mixture_weights": self.mixtures.weights,
            "reference_users": self.reference.users,
            "reference_vectors": np.asarray(vectors, np.float32),
            "reference_clusters": self.reference.dists.clusters,
            "reference_weights": self.reference.dists.weights,
        }

    def manifest(self) -> dict[str, Any]:
        return {
            "neighbors": self.neighbors,
            "smoothing": self.smoothing,
            "top_clusters": int(self.mixtures.clusters.shape[1]),
            "weight_dtype": (
                WeightDtype.LOG8.value
                if self.mixtures.weights.dtype == np.uint8
                else str(self.mixtures.weights.dtype)
            ),
            "reference_users": len(self.reference),
            "reference_index": "faiss IndexFlatIP over a sample of known users",
        }

    @classmethod
    def from_arrays(
        cls, arrays: dict[str, np.ndarray], manifest: dict[str, Any] | None, num_clusters: int
    ) -> UserState:
        """From a bundle's arrays and its manifest's `user_state` section."""
        if not isinstance(manifest, dict):
            raise RegistryError("bundle manifest: user_state is missing; re-export the bundle")
        for key in ("neighbors", "smoothing"):
            if key not in manifest:
                raise RegistryError(
                    f"bundle manifest: user_state.{key} is missing; re-export the bundle"
                )
        return cls(
            mixtures=CompactMixtures(
                arrays["user_mixture_clusters"], arrays["user_mixture_weights"]
            ),
            reference=ReferenceIndex(
                arrays["reference_users"],
                arrays["reference_vectors"],
                CompactMixtures(arrays["reference_clusters"], arrays["reference_weights"]),
            ),
            num_clusters=num_clusters,
            neighbors=int(manifest["neighbors"]),
            smoothing=float(manifest["smoothing"]),
        )

    def nbytes(self) -> dict[str, int]:
        """Bytes held: per known user (`per_user`) and for the reference sample (`reference`)."""
        users = self.mixtures.clusters.shape[0]
        store = self.mixtures.clusters.nbytes + self.mixtures.weights.nbytes
        ref = self.reference
        reference = (
            ref.users.nbytes
            + ref.index.ntotal * ref.index.d * 4
            + ref.dists.clusters.nbytes
            + ref.dists.weights.nbytes
        )
        return {"per_user": store // max(users, 1), "store": store, "reference": reference}


def sample_reference(num_users: int, size: int, seed: int) -> np.ndarray:
    """Sorted internal ids (1..U) of the reference sample: all users when U <= size."""
    if num_users <= size:
        return np.arange(1, num_users + 1, dtype=np.int64)
    pick = np.random.default_rng(seed).choice(num_users, size, replace=False) + 1
    return np.sort(pick).astype(np.int64)
