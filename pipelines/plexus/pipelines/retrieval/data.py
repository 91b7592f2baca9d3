"""Interaction logs for retrieval: MovieLens and LightGCN-format readers, splits, CSR arrays.

Everything is turned into one `Interactions` value with internal ids (users 1..U, items 1..N,
0 = unknown / padding, the platform convention) and per-user CSR lists of training and test
items, training lists in time order (oldest first) when timestamps exist.
"""

from __future__ import annotations

import dataclasses
import enum
from pathlib import Path

import numpy as np
from plexus.platform.config import coerce_choice
from plexus.platform.errors import ConfigError, DataError


class InteractionFormat(enum.StrEnum):
    """`movielens`: u.data / ratings.dat / ratings.csv; `lightgcn`: train.txt + test.txt."""

    MOVIELENS = "movielens"
    LIGHTGCN = "lightgcn"


class SplitKind(enum.StrEnum):
    """MovieLens splits: each user's last positive to test, or a global time cut-off."""

    LEAVE_LAST = "leave_last"
    TEMPORAL = "temporal"


@dataclasses.dataclass(frozen=True, kw_only=True)
class RetrievalDataConfig:
    """Where the log is and how it becomes train/test. `min_rating` None keeps every rating."""

    format: InteractionFormat = InteractionFormat.MOVIELENS
    path: str = ""
    min_rating: float | None = 4.0
    split: SplitKind = SplitKind.LEAVE_LAST
    test_fraction: float = 0.2  # temporal split: the latest share of interactions

    def __post_init__(self) -> None:
        coerce_choice(self, "format", InteractionFormat, "data.format")
        coerce_choice(self, "split", SplitKind, "data.split")
        if not self.path:
            raise ConfigError(
                "data.path: set it to the data file or folder (e.g. data/ml-100k/u.data)"
            )
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"data.test_fraction: must be in (0, 1), got {self.test_fraction}")


@dataclasses.dataclass(frozen=True)
class Interactions:
    """Train/test interactions with internal ids.

    user_ids (U + 1,) / item_ids (N + 1,) int64 external ids ([0] = -1); train_indptr (U + 2,),
    train_items (nnz,) CSR over internal users (row 0 empty); test_indptr / test_items likewise.
    """

    name: str
    user_ids: np.ndarray
    item_ids: np.ndarray
    train_indptr: np.ndarray
    train_items: np.ndarray
    test_indptr: np.ndarray
    test_items: np.ndarray

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


def _csr(users: np.ndarray, items: np.ndarray, num_users: int) -> tuple[np.ndarray, np.ndarray]:
    """Stable-group (user, item) pairs by user -> indptr (U + 2,), items (nnz,)."""
    order = np.argsort(users, kind="stable")
    counts = np.bincount(users, minlength=num_users + 1)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return indptr, items[order].astype(np.int64)


def from_pairs(
    name: str,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
) -> Interactions:
    """Build `Interactions` from external (user, item) arrays in time order.

    Vocabularies come from training only: test pairs with an unseen user or item are dropped.
    """
    tu, ti = (np.asarray(a, np.int64) for a in train)
    if tu.size == 0:
        raise DataError(f"{name}: no training interactions")
    users = np.unique(tu)
    items = np.unique(ti)
    tu_int = np.searchsorted(users, tu) + 1
    ti_int = np.searchsorted(items, ti) + 1
    eu, ei = (np.asarray(a, np.int64) for a in test)
    pu = np.clip(np.searchsorted(users, eu), 0, users.size - 1)
    pi = np.clip(np.searchsorted(items, ei), 0, items.size - 1)
    keep = (users[pu] == eu) & (items[pi] == ei)
    train_indptr, train_items = _csr(tu_int, ti_int, users.size)
    test_indptr, test_items = _csr(pu[keep] + 1, pi[keep] + 1, users.size)
    return Interactions(
        name=name,
        user_ids=np.concatenate([[-1], users]),
        item_ids=np.concatenate([[-1], items]),
        train_indptr=train_indptr,
        train_items=train_items,
        test_indptr=test_indptr,
        test_items=test_items,
    )


def read_lightgcn(folder: str | Path) -> Interactions:
    """`train.txt` / `test.txt` lines `user item item ...` (the NGCF/LightGCN split, as given)."""
    root = Path(folder)
    if root.is_file():
        root = root.parent

    def pairs(file: Path) -> tuple[np.ndarray, np.ndarray]:
        if not file.is_file():
            raise DataError(
                f"{file} not found; a LightGCN-format folder holds train.txt and test.txt"
            )
        users: list[np.ndarray] = []
        items: list[np.ndarray] = []
        for number, line in enumerate(file.read_text().splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            try:
                ids = np.array(parts, dtype=np.int64)
            except ValueError as exc:
                raise DataError(f"{file}:{number}: expected integers `user item ...`") from exc
            users.append(np.full(ids.size - 1, ids[0]))
            items.append(ids[1:])
        return np.concatenate(users), np.concatenate(items)

    return from_pairs(root.name, pairs(root / "train.txt"), pairs(root / "test.txt"))


def _read_ratings(file: Path) -> np.ndarray:
    """(R, 4) float64 rows user, item, rating, timestamp from any MovieLens layout."""
    if not file.is_file():
        raise DataError(f"{file} not found; expected MovieLens u.data, ratings.dat or ratings.csv")
    text = file.read_text(encoding="latin-1")
    if file.suffix == ".csv":
        lines = text.splitlines()
        rows = [line.split(",") for line in lines[1:] if line]
    elif "::" in text[:200]:
        rows = [line.split("::") for line in text.splitlines() if line]
    else:
        rows = [line.split() for line in text.splitlines() if line]
    try:
        data = np.array(rows, dtype=np.float64)
    except ValueError as exc:
        raise DataError(
            f"{file}: expected 4 numeric columns user, item, rating, timestamp"
        ) from exc
    if data.ndim != 2 or data.shape[1] < 4:
        raise DataError(f"{file}: expected 4 columns user, item, rating, timestamp")
    return data[:, :4]


def read_movielens(config: RetrievalDataConfig) -> Interactions:
    """Positives (rating >= min_rating, or all) split leave-last-out or temporally."""
    path = Path(config.path)
    if path.is_dir():
        for name in ("u.data", "ratings.dat", "ratings.csv"):
            if (path / name).is_file():
                path = path / name
                break
    data = _read_ratings(path)
    if config.min_rating is not None:
        data = data[data[:, 2] >= config.min_rating]
    order = np.lexsort((data[:, 1], data[:, 3], data[:, 0]))  # by user, then time
    data = data[order]
    users = data[:, 0].astype(np.int64)
    items = data[:, 1].astype(np.int64)
    if config.split is SplitKind.LEAVE_LAST:
        last = np.r_[users[1:] != users[:-1], True]
        first = np.r_[True, users[1:] != users[:-1]]
        test = last & ~first  # users with a single positive keep it for training
    else:
        cut = np.quantile(data[:, 3], 1.0 - config.test_fraction)
        test = data[:, 3] > cut
    by_time = np.argsort(data[~test, 3], kind="stable")
    train = (users[~test][by_time], items[~test][by_time])
    return from_pairs(path.parent.name or path.stem, train, (users[test], items[test]))


def validation_split(
    data: Interactions, *, latest: bool, seed: int = 0, max_users: int | None = None
) -> Interactions:
    """A validation task carved out of the training lists, for choosing settings without the test set.

    Each user with at least two training items (at most `max_users` of them, drawn with `seed`)
    gives one training item to the validation "test" lists: the latest one where the lists are
    in time order (`latest`, the leave-last protocol), else one at random. The real test items
    are left out entirely. Returns an `Interactions` with the same ids.
    """
    rng = np.random.default_rng(seed)
    counts = np.diff(data.train_indptr)
    users = np.nonzero(counts >= 2)[0]
    if max_users is not None and users.size > max_users:
        users = np.sort(rng.choice(users, max_users, replace=False))
    if users.size == 0:
        raise DataError(f"{data.name}: no user has two training items to hold one out")
    offset = counts[users] - 1 if latest else rng.integers(0, counts[users])
    held = data.train_indptr[users] + offset
    keep = np.ones(data.train_items.size, bool)
    keep[held] = False
    train_users = np.repeat(np.arange(data.num_users + 1), counts)
    train_indptr, _ = _csr(train_users[keep], data.train_items[keep], data.num_users)
    valid_counts = np.bincount(users, minlength=data.num_users + 1)
    return dataclasses.replace(
        data,
        name=f"{data.name}-validation",
        train_indptr=train_indptr,
        train_items=data.train_items[keep],  # grouping by user is kept: already CSR order
        test_indptr=np.concatenate([[0], np.cumsum(valid_counts)]).astype(np.int64),
        test_items=data.train_items[held],
    )


def read_interactions(config: RetrievalDataConfig) -> Interactions:
    """Dispatch on `config.format`."""
    if config.format is InteractionFormat.LIGHTGCN:
        return read_lightgcn(config.path)
    return read_movielens(config)
