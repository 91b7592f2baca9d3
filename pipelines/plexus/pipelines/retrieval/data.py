"""Retrieval interactions as CSR lists per user, built from the ingest's shards.

The log itself goes through the platform's ingest (`data.interactions`, see
`plexus.pipelines.ingest.interactions`): Parquet shards sorted by user and the user's order, a
feature spec whose `user_id` / `item_id` vocabularies give the internal ids (users 1..U, items
1..N, 0 = OOV / padding, the platform convention), rejects with file and line. This module only
turns those shards into the arrays that training and the full-ranking evaluation index, and
the towers' side features (`SideFeatures`): each user's and item's side features, taken from
its first training row, plus the catalog items that were never in a training positive
(`catalog.parquet` beside the shards, written by `ingest_interactions`), which get internal ids
N + 1.. after the vocabulary and no place in the split.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from plexus.models.retrieval import HistoryPick, SideFeatures, TwoTowerConfig
from plexus.pipelines.ingest import DataConfig, IngestResult, ingest
from plexus.pipelines.ingest.interactions import ITEM, USER, catalog_items
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
    of `validation()`. `side`: the towers' side features, when the log has any (its items
    1..N are the vocabulary's, then the catalog items `catalog_ids` (external ids) follow).
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
    side: SideFeatures | None = dataclasses.field(default=None, compare=False, repr=False)
    catalog_ids: np.ndarray | None = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def num_users(self) -> int:
        return len(self.user_ids) - 1

    @property
    def all_item_ids(self) -> np.ndarray:
        """(N + C + 1,) external ids of the vocabulary's items, then of the catalog items."""
        if self.catalog_ids is None or self.catalog_ids.size == 0:
            return self.item_ids
        return np.concatenate([self.item_ids, self.catalog_ids]).astype(np.int64)

    @property
    def num_items(self) -> int:
        return len(self.item_ids) - 1

    def train_of(self, user: int) -> np.ndarray:
        return self.train_items[self.train_indptr[user] : self.train_indptr[user + 1]]

    def test_of(self, user: int) -> np.ndarray:
        return self.test_items[self.test_indptr[user] : self.test_indptr[user + 1]]

    def histories(self, length: int, pick: HistoryPick = HistoryPick.LAST) -> np.ndarray:
        """(U + 1, L) int64: `length` training items of each user in the list's order (its last
        ones, or with `pick=sample` a random sample of seed 0 for users with more), 0-padded at
        the end."""
        counts = np.diff(self.train_indptr)
        take = np.minimum(counts, length)
        starts = np.repeat(self.train_indptr[:-1], counts)
        rank = np.arange(self.train_items.size) - starts  # position in the user's list
        if HistoryPick(pick) is HistoryPick.SAMPLE:
            users = np.repeat(np.arange(self.num_users + 1), counts)
            keys = np.random.default_rng(0).random(self.train_items.size)
            order = np.lexsort((keys, users))  # users stay in place, shuffled within
            keep = np.zeros(self.train_items.size, bool)
            keep[order[rank < np.repeat(take, counts)]] = True
        else:
            keep = rank >= np.repeat(counts - take, counts)
        rows = np.repeat(np.arange(self.num_users + 1), take)
        cols = np.arange(rows.size) - np.repeat(np.cumsum(take) - take, take)
        out = np.zeros((self.num_users + 1, length), np.int64)
        out[rows, cols] = self.train_items[keep]
        return out

    def model_histories(self, config: TwoTowerConfig) -> np.ndarray:
        """`histories` as the model of `config` reads them (its length and pick), so that
        training, evaluation and export cannot disagree on them."""
        return self.histories(config.history_len, config.history_pick)

    def item_popularity(self) -> np.ndarray:
        """(N + 1,) float32 training interactions per item."""
        return np.bincount(self.train_items, minlength=self.num_items + 1).astype(np.float32)

    @property
    def has_holdout(self) -> bool:
        """Whether the ingest held out validation items (what `validation` needs)."""
        return not (
            self.valid_indptr is None or self.valid_items is None or not self.valid_items.size
        )

    def validation(self) -> Interactions:
        """The tuning task: training lists without the held-out items, which become the "test"
        lists; the real test items are left out entirely. Same ids as `self`."""
        if not self.has_holdout:
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
    lists, pairs = {}, {}
    for split in ("train", "valid", "test"):
        pairs[split] = _pairs(sorted((folder / split).glob("part-*.parquet")))
        lists[split] = _csr(*pairs[split], len(user_ids) - 1)
    if lists["train"][1].size == 0:
        raise DataError(f"{folder}: no training interactions")
    side, catalog = side_features(
        folder, spec, pairs["train"], len(user_ids) - 1, len(item_ids) - 1
    )
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
        side=side,
        catalog_ids=catalog,
    )


CATALOG_FILE = "catalog.parquet"


def _bags(column: pa.ChunkedArray | pa.Array, width: int) -> tuple[np.ndarray, np.ndarray]:
    """An Arrow int column or list<int> column -> (R, width) ids (0-padded), (R,) lengths."""
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        col = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        lengths = np.minimum(np.asarray(col.value_lengths().fill_null(0), np.int64), width)
        flat = np.asarray(col.flatten(), np.int64)
        offsets = np.asarray(col.offsets, np.int64)[:-1]
        rows = np.repeat(np.arange(lengths.size), lengths)
        cols = np.arange(rows.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        out = np.zeros((lengths.size, width), np.int64)
        out[rows, cols] = flat[np.repeat(offsets, lengths) + cols]
        return out, lengths
    values = np.asarray(column.fill_null(0), np.int64)
    out = np.zeros((values.size, width), np.int64)
    out[:, 0] = values
    return out, np.ones(values.size, np.int64)


def side_features(
    folder: Path,
    spec: FeatureSpec,
    train: tuple[np.ndarray, np.ndarray],
    num_users: int,
    num_items: int,
) -> tuple[SideFeatures | None, np.ndarray | None]:
    """The side features of every user and item from the training shards (first row of each),
    the catalog items' from `catalog.parquet`; (None, None) when the log has none. `train`: the
    shards' user and item columns, already read (`_pairs`), in shard order."""
    user_side = [spec[n] for n in spec.groups["user"][1:]]
    item_side = [spec[n] for n in spec.groups["item"][1:]]
    if not user_side and not item_side:
        return None, None
    columns = [f.name for f in user_side + item_side]
    shards = sorted((folder / "train").glob("part-*.parquet"))
    table = pa.concat_tables([pq.read_table(s, columns=columns) for s in shards])
    catalog_file = folder / CATALOG_FILE
    catalog = (
        pq.read_table(catalog_file)
        if catalog_file.is_file() and item_side
        else pa.table({"external_id": pa.array([], pa.int64())})
    )
    total = num_items + catalog.num_rows
    width = max([f.max_length for f in item_side if f.is_multi_valued] + [1])
    user_ids = np.zeros((num_users + 1, len(user_side)), np.int64)
    users, items = train
    _, first_user = np.unique(users, return_index=True)
    for j, f in enumerate(user_side):
        user_ids[users[first_user], j] = np.asarray(
            table.column(f.name).take(first_user).fill_null(0), np.int64
        )
    item_ids = np.zeros((total + 1, len(item_side), width), np.int64)
    item_lengths = np.zeros((total + 1, len(item_side)), np.int64)
    _, first_item = np.unique(items, return_index=True)
    rows = items[first_item]
    cold = np.arange(num_items + 1, total + 1)
    for j, f in enumerate(item_side):
        bags, lengths = _bags(table.column(f.name).take(first_item), width)
        item_ids[rows, j], item_lengths[rows, j] = bags, lengths
        if catalog.num_rows:
            bags, lengths = _bags(catalog.column(f.name), width)
            item_ids[cold, j], item_lengths[cold, j] = bags, lengths
    known = np.zeros(total + 1, bool)
    known[1 : num_items + 1] = True
    side = SideFeatures(
        user_features=tuple(user_side),
        item_features=tuple(item_side),
        user_ids=torch.from_numpy(user_ids),
        item_ids=torch.from_numpy(item_ids),
        item_lengths=torch.from_numpy(item_lengths),
        item_known=torch.from_numpy(known),
    )
    return side, catalog.column("external_id").to_numpy().astype(np.int64)


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
    _write_catalog(config, Path(result.output), refresh=not result.skipped)
    return result, load_interactions(result.output)


def _write_catalog(config: DataConfig, folder: Path, *, refresh: bool) -> None:
    """`catalog.parquet`: the log's items outside the vocabulary with their side features
    (`ingest.interactions.catalog_items`), written when the log has item side features."""
    target = folder / CATALOG_FILE
    if target.is_file() and not refresh:
        return
    spec = FeatureSpec.load(folder)
    if len(spec.groups.get("item", ())) < 2:
        target.unlink(missing_ok=True)
        return
    frame = catalog_items(config, spec)
    tmp = target.with_suffix(".parquet.tmp")
    frame.write_parquet(tmp)
    tmp.replace(target)
