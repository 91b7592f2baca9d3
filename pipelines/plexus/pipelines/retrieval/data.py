"""Retrieval interactions as CSR lists per user, built from the ingest's shards.

The log itself goes through the platform's ingest (`data.interactions`, see
`plexus.pipelines.ingest.interactions`): Parquet shards sorted by user and the user's order, a
feature spec whose `user_id` / `item_id` vocabularies give the internal ids (users 1..U, items
1..N, 0 = OOV / padding, the platform convention), rejects with file and line. This module only
turns those shards into the arrays that training and the full-ranking evaluation index.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from plexus.pipelines.ingest import DataConfig, IngestResult, ingest
from plexus.pipelines.ingest.interactions import ITEM, USER
from plexus.platform.errors import DataError
from plexus.platform.feature_spec import FeatureSpec


@dataclasses.dataclass(frozen=True)
class Interactions:
    """Train/test (and validation hold-out) interactions with internal ids.

    user_ids (U + 1,) / item_ids (N + 1,) int64 external ids ([0] = -1); train_indptr (U + 2,),
    train_items (nnz,) CSR over internal users (row 0 empty), each list in the user's order
    (time, or file order); test_indptr / test_items and valid_indptr / valid_items likewise
    (valid: the ingest's hold-out, whose items are also in the training lists). `spec` and
    `source` are the feature spec and folder of the shards; `validation_task` marks the lists
    of `validation()`.
    """

    name: str
    user_ids: np.ndarray
    item_ids: np.ndarray
    train_indptr: np.ndarray
    train_items: np.ndarray
    test_indptr: np.ndarray
    test_items: np.ndarray
    valid_indptr: np.ndarray | None = None
    valid_items: np.ndarray | None = None
    spec: FeatureSpec | None = dataclasses.field(default=None, compare=False, repr=False)
    source: str | None = None
    validation_task: bool = False

    @property
    def num_users(self) -> int:
        return len(self.user_ids) - 1

    @property
    def num_items(self) -> int:
        return len(self.item_ids) - 1

    def train_of(self, user: int) -> np.ndarray:
        return self.train_items[self.train_indptr[user] : self.train_indptr[user + 1]]

    def test_of(self, user: int) -> np.ndarray:
        return self.test_items[self.test_indptr[user] : self.test_indptr[user + 1]]

    def histories(self, length: int) -> np.ndarray:
        """(U + 1, L) int64: the last `length` training items of each user, 0-padded at the end."""
        out = np.zeros((self.num_users + 1, length), np.int64)
        counts = np.diff(self.train_indptr)
        take = np.minimum(counts, length)
        rows = np.repeat(np.arange(self.num_users + 1), take)
        cols = np.arange(rows.size) - np.repeat(np.cumsum(take) - take, take)
        src = np.repeat(self.train_indptr[1:] - take, take) + cols
        out[rows, cols] = self.train_items[src]
        return out

    def item_popularity(self) -> np.ndarray:
        """(N + 1,) float32 training interactions per item."""
        return np.bincount(self.train_items, minlength=self.num_items + 1).astype(np.float32)

    def validation(self) -> Interactions:
        """The tuning task: training lists without the held-out items, which become the "test"
        lists; the real test items are left out entirely. Same ids as `self`."""
        if self.valid_indptr is None or self.valid_items is None or self.valid_items.size == 0:
            raise DataError(
                f"{self.name}: no validation hold-out in the ingested data; set "
                "data.interactions.validation_users > 0 and ingest again"
            )
        stride = self.num_items + 2
        counts = np.diff(self.train_indptr)
        train_users = np.repeat(np.arange(self.num_users + 1), counts)
        keys = train_users * stride + self.train_items
        held_users = np.repeat(np.arange(self.num_users + 1), np.diff(self.valid_indptr))
        held = held_users * stride + self.valid_items
        order = np.argsort(keys, kind="stable")
        found = np.searchsorted(keys[order], held, side="right") - 1  # the last occurrence
        if found.size and (found.min() < 0 or not np.array_equal(keys[order][found], held)):
            raise DataError(f"{self.name}: a validation item is not in its user's training list")
        keep = np.ones(keys.size, bool)
        keep[order[found]] = False
        train_indptr, train_items = _csr(train_users[keep], self.train_items[keep], self.num_users)
        return dataclasses.replace(
            self,
            name=f"{self.name}-validation",
            train_indptr=train_indptr,
            train_items=train_items,
            test_indptr=self.valid_indptr,
            test_items=self.valid_items,
            valid_indptr=None,
            valid_items=None,
            validation_task=True,
        )


def _csr(users: np.ndarray, items: np.ndarray, num_users: int) -> tuple[np.ndarray, np.ndarray]:
    """Stable-group (user, item) pairs by user -> indptr (U + 2,), items (nnz,)."""
    order = np.argsort(users, kind="stable")
    counts = np.bincount(users, minlength=num_users + 1)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return indptr, items[order].astype(np.int64)


def _external_ids(spec: FeatureSpec, name: str) -> np.ndarray:
    vocabulary = spec[name].vocabulary
    try:
        ids = np.array(vocabulary, dtype=np.int64)
    except (OverflowError, ValueError):
        raise DataError(
            f"feature spec {spec.name!r}: {name} values must be integers for the retrieval "
            f"bundle (its external ids are int64), got e.g. {vocabulary[:3]}"
        ) from None
    return np.concatenate([[-1], ids]).astype(np.int64)


def _pairs(shards: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    if not shards:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    table = pa.concat_tables([pq.read_table(s, columns=[USER, ITEM]) for s in shards])
    return tuple(  # type: ignore[return-value]
        table.column(c).to_numpy().astype(np.int64, copy=False) for c in (USER, ITEM)
    )


def load_interactions(folder: str | Path) -> Interactions:
    """The CSR lists of an ingested interaction log (a folder the ingest wrote with
    `data.interactions` set): what training workers and the evaluation read."""
    folder = Path(folder)
    spec = FeatureSpec.load(folder)
    if "user" not in spec.groups or "item" not in spec.groups:
        raise DataError(
            f"{folder}: not an interaction log (its spec has no user/item groups); "
            "ingest it with data.interactions set (a retrieval job config does)"
        )
    user_ids, item_ids = _external_ids(spec, USER), _external_ids(spec, ITEM)
    lists = {}
    for split in ("train", "valid", "test"):
        users, items = _pairs(sorted((folder / split).glob("part-*.parquet")))
        lists[split] = _csr(users, items, len(user_ids) - 1)
    if lists["train"][1].size == 0:
        raise DataError(f"{folder}: no training interactions")
    return Interactions(
        name=spec.name,
        user_ids=user_ids,
        item_ids=item_ids,
        train_indptr=lists["train"][0],
        train_items=lists["train"][1],
        test_indptr=lists["test"][0],
        test_items=lists["test"][1],
        valid_indptr=lists["valid"][0],
        valid_items=lists["valid"][1],
        spec=spec,
        source=str(folder),
    )


def ingest_interactions(
    config: DataConfig, output: Path, *, progress: bool = True
) -> tuple[IngestResult, Interactions]:
    """Ingest the log of `config` into `output` (reused when unchanged) and load its lists."""
    if config.interactions is None:
        raise DataError(
            "data.interactions: a retrieval job reads an interaction log; set "
            "data.interactions (e.g. {min_rating: 4, split: leave_last}) or format: lightgcn"
        )
    result = ingest(config, output=output, progress=progress)
    return result, load_interactions(result.output)
