"""The retrieval bundle: one folder with the ONNX query model, the item index, the id maps and
the compact user state (`plexus.serving.user_state`).

Loading needs only numpy, onnxruntime and faiss (no torch, ray or mlflow). The format is fixed
by `FORMAT_VERSION` and described in the manifest `bundle.json`; see `write_bundle` for the
files. Ids: *external* ids are the int64 ids of the data; *internal* ids are 1..N (items) and
1..U (users), 0 = padding / unknown, the convention of `plexus.platform.feature_spec`.

Per known user the bundle holds its id (8 bytes), its training items Elias-Fano coded with a
4-byte offset (about 2 + log2(N / n) bits an item; `plexus.serving.history`), its top-M
mixture (2 * M bytes; `plexus.serving.user_state`) and whatever the embedding method's user
table takes inside `query.onnx`; no dense user table, no user x cluster array. Loaded, the id
array becomes `IdLookup`: 6 bytes a user for ids dense within blocks of 256, 12 for ids spread
over the int64 range.

Example:
    >>> bundle = Bundle.load("out/bundle")                              # doctest: +SKIP
    >>> hits = bundle.recommend(user_id=42, k=100, diversify=True)     # doctest: +SKIP
    >>> hits.item_ids[:3], hits.scores[:3], hits.clusters[:3], hits.version  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from plexus.platform.errors import DataError, RegistryError, require
from plexus.serving import index as item_index
from plexus.serving.history import HISTORY_ARRAYS, HistoryStore
from plexus.serving.knn_embed import (
    AllocationConfig,
    ComponentPlan,
    allocate,
    cap_allocation,
    merge_components,
    plan_components,
)
from plexus.serving.monotone import MonotoneArray
from plexus.serving.user_state import USER_STATE_ARRAYS, UserState

__all__ = ["Bundle", "Candidates", "write_bundle", "search_mixture", "FORMAT", "FORMAT_VERSION"]

FORMAT = "plexus.retrieval-bundle"
FORMAT_VERSION = 4  # 2: a sha256 per file; 3: compact user state; 4: Elias-Fano histories
MANIFEST = "bundle.json"
REGISTRY_FILE = "registry.json"
ONNX_FILE = "query.onnx"
INDEX_FILE = "items.faiss"
ARRAYS = (
    "item_ids",  # (N+1,) int64 external item id of each internal id; [0] = -1
    "item_clusters",  # (N+1,) int64 interest cluster of each item; [0] = -1
    "item_popularity",  # (N+1,) float32 training interactions per item (cold-start fallback)
    "user_ids",  # (U+1,) int64 external user id of each internal id; [0] = -1
    *HISTORY_ARRAYS,  # known users' training items (`HistoryStore`)
    *USER_STATE_ARRAYS,  # known users' top-M mixtures and the new-user reference index
)
ONNX_INPUTS = {"user": "(B,) int64", "history": "(B, L) int64", "history_mask": "(B, L) float32"}
ONNX_OUTPUTS = {
    "query": "(B, D) float32",
    "history_mixture": "(B, C) float32",
    "component_queries": "(B, C, D) float32",
}


@dataclasses.dataclass(frozen=True)
class Candidates:
    """Retrieved items for one query, best first: ids (K,) int64 external, scores (K,) float32,
    clusters (K,) int64 interest cluster of each item, and the bundle version that answered."""

    item_ids: np.ndarray
    scores: np.ndarray
    clusters: np.ndarray
    version: str


def write_bundle(
    directory: str | Path,
    *,
    onnx_model: str | Path,
    index: Any,
    arrays: dict[str, np.ndarray],
    manifest: dict[str, Any],
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Write a bundle folder: `bundle.json`, `query.onnx`, `items.faiss`, one `.npy` per
    `ARRAYS` entry and `extra_files` (name -> text, e.g. feature_spec.json, config.json).

    `manifest` must hold at least: name, bundle_id, dim, history_len, num_clusters,
    retrieval.nprobe, retrieval.allocation (an `AllocationConfig` as a dict), user_state
    (`UserState.manifest()`) and history (`HistoryStore.manifest()`).
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    missing = [name for name in ARRAYS if name not in arrays]
    if missing:
        raise RegistryError(
            f"write_bundle: missing arrays {missing}; all of {list(ARRAYS)} are needed"
        )
    for key in (
        "name",
        "bundle_id",
        "dim",
        "history_len",
        "num_clusters",
        "retrieval",
        "user_state",
        "history",
    ):
        if key not in manifest:
            raise RegistryError(f"write_bundle: manifest key {key!r} is missing")
    (out / ONNX_FILE).write_bytes(Path(onnx_model).read_bytes())
    item_index.save_index(index, out / INDEX_FILE)
    for name in ARRAYS:
        np.save(out / f"{name}.npy", np.ascontiguousarray(arrays[name]))
    for name, text in (extra_files or {}).items():
        (out / name).write_text(text)
    written = [ONNX_FILE, INDEX_FILE, *(f"{name}.npy" for name in ARRAYS), *(extra_files or {})]
    full = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "files": {name: _sha256(out / name) for name in sorted(written)},
        "num_items": int(len(arrays["item_ids"]) - 1),
        "num_users": int(len(arrays["user_ids"]) - 1),
        "onnx": {"file": ONNX_FILE, "inputs": ONNX_INPUTS, "outputs": ONNX_OUTPUTS},
        "index_file": INDEX_FILE,
        **manifest,
    }
    (out / MANIFEST).write_text(json.dumps(full, indent=1, sort_keys=True))
    return out


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify_files(folder: Path, files: dict[str, str] | None) -> None:
    """Every file the manifest lists is present, inside the folder, with its recorded sha256:
    a truncated or altered download is refused before any of it is parsed."""
    if not isinstance(files, dict) or not files:
        raise RegistryError(f"{folder / MANIFEST}: no file checksums; re-export the bundle")
    root = folder.resolve()
    for name, expected in sorted(files.items()):
        file = (folder / name).resolve()
        if not file.is_relative_to(root):
            raise RegistryError(f"{folder / MANIFEST}: file {name!r} is outside the bundle")
        if not file.is_file():
            raise RegistryError(f"{folder}: {name} is missing")
        if _sha256(file) != expected:
            raise RegistryError(
                f"{folder / name}: sha256 differs from the manifest's (corrupt or truncated "
                "download?); the bundle is refused"
            )


def search_mixture(
    index: Any,
    item_clusters: np.ndarray,
    mixture: np.ndarray,
    components: np.ndarray,
    k: int,
    excluded: tuple[np.ndarray, np.ndarray],
    allocation: AllocationConfig,
    cluster_sizes: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """kNN-Embed retrieval for a batch: allocate K over each mixture (B, C), search every
    (user, component) inside its cluster with its query (B, C, D) in ONE index call, merge.

    `excluded` = (rows, internal ids); `cluster_sizes` (C,) items per cluster, counted from
    `item_clusters` when not given (a pass over the catalog: the service counts them once).
    Returns internal ids (B, k) (-1 = none), scores (B, k). The service and the offline
    evaluation both call this.
    """
    batch, num_clusters = mixture.shape
    alloc = allocate(mixture, k, **dataclasses.asdict(allocation))
    per_cluster = np.zeros((batch, num_clusters), np.int64)
    if excluded[0].size:
        flat = excluded[0] * num_clusters + item_clusters[excluded[1]]
        per_cluster = np.bincount(flat, minlength=batch * num_clusters).reshape(batch, -1)
    sizes = (
        cluster_sizes
        if cluster_sizes is not None
        else np.bincount(item_clusters[item_clusters >= 0], minlength=num_clusters)
    )
    alloc = cap_allocation(alloc, sizes[None, :num_clusters] - per_cluster, mixture)
    plan = plan_components(alloc, excluded_per_cluster=per_cluster, slack=max(1, k // 10))
    vectors = components[plan.rows, plan.clusters]
    scores, ids = item_index.search_clusters(index, vectors, plan.clusters, plan.fetch)
    return merge_components(plan, ids, scores, batch=batch, k=k, excluded=excluded)


class IdLookup:
    """External -> internal ids over `external` (n+1,) int64 ([0] = padding): the sorted ids as
    a `MonotoneArray` (2 bytes a row when the ids are dense within blocks of 256, as
    autoincrement and vocabulary ids are; 8 for ids spread over the int64 range) and an int32
    argsort (below 2**31 rows): 6 bytes a row for dense ids, against 12 for sorted int64 ids."""

    def __init__(self, external: np.ndarray) -> None:
        order = np.argsort(external[1:], kind="stable")
        self._sorted = MonotoneArray(external[1:][order])
        self._order = order.astype(np.int32) if order.size < 2**31 else order

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        """(n,) external ids -> (n,) int64 internal ids, 0 where unknown."""
        ids = np.asarray(ids, dtype=np.int64)
        size = len(self._sorted)
        if size == 0:
            return np.zeros(ids.shape, np.int64)
        at = np.minimum(self._sorted.lower_bound(ids), size - 1)
        return np.where(self._sorted[at] == ids, self._order[at].astype(np.int64) + 1, 0)

    def external(self) -> np.ndarray:
        """The (n+1,) external ids by internal id ([0] = -1), rebuilt (O(n)) on each call."""
        out = np.full(len(self._sorted) + 1, -1, np.int64)
        out[self._order.astype(np.int64) + 1] = self._sorted.to_numpy()
        return out

    @property
    def nbytes(self) -> int:
        return int(self._sorted.nbytes + self._order.nbytes)


class Bundle:
    """A loaded bundle: answers "K candidates for this user and/or history" with one ONNX call
    and one index search per batch. Thread-safe for concurrent `recommend*` calls."""

    def __init__(self, path: Path, manifest: dict[str, Any], version: str, threads: int) -> None:
        ort = require("onnxruntime", "serve")
        self.path = path
        self.manifest = manifest
        self.version = version
        self.name: str = manifest["name"]
        self.dim: int = int(manifest["dim"])
        self.history_len: int = int(manifest["history_len"])
        self.num_clusters: int = int(manifest["num_clusters"])
        retrieval = manifest["retrieval"]
        self.nprobe: int = int(retrieval["nprobe"])
        self.allocation = AllocationConfig(**retrieval["allocation"])
        arr = {name: np.load(path / f"{name}.npy", allow_pickle=False) for name in ARRAYS}
        self.item_ids: np.ndarray = arr["item_ids"]
        self.item_clusters: np.ndarray = arr["item_clusters"]
        self.item_popularity: np.ndarray = arr["item_popularity"].astype(np.float32)
        self.history = HistoryStore.from_arrays(arr, manifest.get("history"))
        if self.history.window_len != self.history_len:
            raise RegistryError(
                f"bundle manifest: history.window {self.history.window_len} != history_len "
                f"{self.history_len}; re-export the bundle"
            )
        self.num_items = len(self.item_ids) - 1
        self.num_users = len(arr["user_ids"]) - 1
        self.item_lookup = IdLookup(self.item_ids)
        self._cluster_sizes = np.bincount(
            self.item_clusters[self.item_clusters >= 0], minlength=self.num_clusters
        )
        self.user_lookup = IdLookup(arr["user_ids"])  # the loaded array itself is dropped
        self.user_state = UserState.from_arrays(arr, manifest.get("user_state"), self.num_clusters)
        del arr  # the reference vectors now live in the faiss index only
        self._popular = np.argsort(-self.item_popularity[1:], kind="stable")[:1000] + 1
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            str(path / ONNX_FILE), options, providers=["CPUExecutionProvider"]
        )
        self._index = item_index.load_index(path / INDEX_FILE)
        # Scores are cosine + this prior, kept in the index as one more item coordinate.
        self.popularity_prior = float(retrieval.get("popularity_prior", 0.0))
        width = self.dim + (1 if self.popularity_prior else 0)
        if self._index.d != width:
            raise RegistryError(
                f"{path / INDEX_FILE}: vectors of dimension {self._index.d}, but the manifest's "
                f"dim {self.dim} and popularity_prior {self.popularity_prior:g} need {width}; "
                "re-export the bundle"
            )

    @classmethod
    def load(cls, path: str | Path, *, version: str | None = None, threads: int = 1) -> Bundle:
        """Open a bundle folder. `version` overrides the recorded one (e.g. the registry version
        the folder was downloaded as); otherwise `registry.json`'s version, else the bundle id."""
        folder = Path(path)
        file = folder / MANIFEST
        if not file.is_file():
            raise RegistryError(f"{folder} is not a retrieval bundle: {MANIFEST} is missing")
        manifest = json.loads(file.read_text())
        if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
            older = manifest.get("format") == FORMAT and manifest.get("format_version", 0) < 4
            why = (
                " (v2 and older carry a dense user table inside query.onnx and smooth mixtures "
                "there, v3 stores histories as int32; v4 stores compact mixtures and "
                "Elias-Fano coded histories)"
                if older
                else ""
            )
            raise RegistryError(
                f"{file}: format {manifest.get('format')!r} v{manifest.get('format_version')} is not "
                f"supported (expected {FORMAT!r} v{FORMAT_VERSION}){why}; re-export the bundle "
                "with this version: `plexus export <retrieval config>` (or `plexus run` it)"
            )
        _verify_files(folder, manifest.get("files"))
        if version is None and (folder / REGISTRY_FILE).is_file():
            version = (
                str(json.loads((folder / REGISTRY_FILE).read_text()).get("version", "")) or None
            )
        return cls(folder, manifest, version or str(manifest["bundle_id"]), threads)

    # ---- id helpers ------------------------------------------------------------------------
    @property
    def user_ids(self) -> np.ndarray:
        """(U+1,) external user id of each internal id ([0] = -1), rebuilt on each access (the
        service keeps only the sorted ids for lookups): for tests and tools, not requests."""
        return self.user_lookup.external()

    def has_user(self, user_id: int) -> bool:
        """Whether the user was seen in training (has an embedding and a stored history)."""
        return bool(self.user_lookup(np.array([user_id]))[0])

    # ---- query path ------------------------------------------------------------------------
    def recommend(
        self,
        *,
        user_id: int | None = None,
        history: Sequence[int] | None = None,
        k: int = 100,
        diversify: bool = True,
        exclude: Sequence[int] = (),
        exclude_seen: bool = True,
    ) -> Candidates:
        """K candidates for a user id and/or a history of external item ids (most recent last).

        `diversify=True` uses the kNN-Embed mixture; False, single-vector ANN. `exclude` drops
        items; `exclude_seen` also drops the user's training items and the given history.
        A request with neither a known user nor a known history item gets popular items.
        """
        return self.recommend_batch(
            [user_id],
            [history or ()],
            k=k,
            diversify=diversify,
            excludes=[exclude],
            exclude_seen=exclude_seen,
        )[0]

    def recommend_batch(
        self,
        user_ids: Sequence[int | None],
        histories: Sequence[Sequence[int]] | None = None,
        *,
        k: int = 100,
        diversify: bool = True,
        excludes: Sequence[Sequence[int]] | None = None,
        exclude_seen: bool = True,
    ) -> list[Candidates]:
        """`recommend` for B queries at once: one ONNX call and one index search in all."""
        batch = len(user_ids)
        if k < 1:
            raise DataError(f"k must be >= 1, got {k}")
        histories = histories if histories is not None else [()] * batch
        excludes = excludes if excludes is not None else [()] * batch
        if len(histories) != batch or len(excludes) != batch:
            raise DataError("user_ids, histories and excludes must have the same length")
        raw = np.array([-1 if u is None else u for u in user_ids], dtype=np.int64)
        users = np.where(raw >= 0, self.user_lookup(raw), 0)
        seqs: list[np.ndarray] = []
        stored = np.zeros(batch, bool)  # known users without a given history: stored mixture
        ex_rows: list[np.ndarray] = []
        ex_items: list[np.ndarray] = []
        for row, (user, hist, excl) in enumerate(zip(users, histories, excludes, strict=True)):
            given = self.item_lookup(np.asarray(hist, np.int64))
            given = given[given > 0]
            seen, window = self.history.both(int(user)) if user > 0 else (given[:0], given[:0])
            seqs.append(given if given.size else window)
            stored[row] = user > 0 and given.size == 0
            drop = [self.item_lookup(np.asarray(excl, np.int64))]
            if exclude_seen:
                drop += [seen, given]
            items = np.unique(np.concatenate(drop))
            items = items[items > 0]
            ex_rows.append(np.full(items.size, row, np.int64))
            ex_items.append(items)
        history, mask = self._pad(seqs)
        excluded = (np.concatenate(ex_rows), np.concatenate(ex_items))
        cold = (users == 0) & (mask.sum(axis=1) == 0)
        query, own, components = self._session.run(
            None, {"user": users, "history": history, "history_mask": mask}
        )
        if diversify:
            mixture = self.user_state.mixture(users, query, own, stored)
            ids, scores = self._search_mixture(mixture, components, k, excluded)
        else:
            ids, scores = self._search_single(query, k, excluded)
        if cold.any():
            pop_ids, pop_scores = self._popular_fill(cold, k, excluded)
            ids[cold], scores[cold] = pop_ids, pop_scores
        return [self._candidates(i, s) for i, s in zip(ids, scores, strict=True)]

    def _pad(self, seqs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Last `history_len` items of each sequence -> (B, L) int64 ids, (B, L) float32 mask."""
        length = self.history_len
        history = np.zeros((len(seqs), length), np.int64)
        for row, seq in enumerate(seqs):
            tail = seq[-length:]
            history[row, : tail.size] = tail
        return history, (history > 0).astype(np.float32)

    def _search_mixture(
        self,
        mixture: np.ndarray,
        components: np.ndarray,
        k: int,
        excluded: tuple[np.ndarray, np.ndarray],
    ) -> tuple[np.ndarray, np.ndarray]:
        return search_mixture(
            self._index,
            self.item_clusters,
            mixture,
            components,
            k,
            excluded,
            self.allocation,
            self._cluster_sizes,
        )

    def _search_single(
        self, query: np.ndarray, k: int, excluded: tuple[np.ndarray, np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Single-vector ANN over `nprobe` lists, over-fetching by the largest exclusion count."""
        batch = query.shape[0]
        most = int(np.bincount(excluded[0], minlength=batch).max()) if excluded[0].size else 0
        fetch = min(k + most, self.num_items)
        scores, ids = item_index.search(self._index, query, fetch, nprobe=self.nprobe)
        plan = ComponentPlan(
            rows=np.arange(batch),
            clusters=np.zeros(batch, np.int64),
            counts=np.full(batch, k),
            fetch=fetch,
        )
        return merge_components(plan, ids, scores, batch=batch, k=k, excluded=excluded)

    def _popular_fill(
        self, cold: np.ndarray, k: int, excluded: tuple[np.ndarray, np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Most popular items for the cold rows (no known user, no known history)."""
        rows = np.nonzero(cold)[0]
        ids = np.tile(self._popular, (rows.size, 1))
        scores = np.tile(self.item_popularity[self._popular], (rows.size, 1))
        plan = ComponentPlan(
            rows=np.arange(rows.size),
            clusters=np.zeros(rows.size, np.int64),
            counts=np.full(rows.size, k),
            fetch=ids.shape[1],
        )
        keep = np.isin(excluded[0], rows)
        remap = np.searchsorted(rows, excluded[0][keep])
        return merge_components(
            plan, ids, scores, batch=rows.size, k=k, excluded=(remap, excluded[1][keep])
        )

    def _candidates(self, ids: np.ndarray, scores: np.ndarray) -> Candidates:
        valid = ids > 0
        internal = ids[valid]
        return Candidates(
            item_ids=self.item_ids[internal],
            scores=scores[valid].astype(np.float32),
            clusters=self.item_clusters[internal],
            version=self.version,
        )
