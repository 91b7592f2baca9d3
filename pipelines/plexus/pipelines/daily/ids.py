"""Stable table rows across daily snapshots: frequency admission, time eviction, row reuse.

Each day's ingest numbers a column's values by that day's frequency, so a value has another id
every day. A warm-started model needs the opposite: a value keeps its row from day to day.
`IdState` is that mapping for one vocabulary feature, carried from day to day:

* a value seen before keeps its row;
* a new value is counted (over days) and gets a row once it has been seen `admit_after` times;
  until then it reads the OOV row 0 (Monolith's frequency filter, Liu et al. 2022, Sec. 2.2);
  counts of values not seen for `evict_after_days` are forgotten, so the state stays bounded;
* a value not seen for `evict_after_days` days loses its row, which the next admitted value
  reuses after re-initialisation (Monolith's expirable embeddings; TorchRec's managed-collision
  modules with LRU eviction do the same inside a fixed-size table);
* the table has spare rows (`headroom`); when admissions outrun evictions it grows, and the rows
  that exist keep their positions.

TorchRec's `ManagedCollisionCollection` (MCH) does this remapping inside the model on raw ids
with fbgemm kernels; here the remapping happens once per day on the encoded shards (a lookup
table per feature), which works with every embedding method on CPU and leaves the model graph,
the export and the training loop unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from plexus.platform.errors import ConfigError, DataError

__all__ = ["DailyConfig", "IdState", "DayChange"]

FREE = ""  # the value of a row no value owns (never admitted, or evicted)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DailyConfig:
    """The `daily:` section: how ids enter and leave the tables from one day to the next."""

    admit_after: int = 2  # occurrences (summed over days) before a new value gets its own row
    evict_after_days: int = 7  # a value unseen for this many days frees its row
    headroom: float = 0.25  # spare rows, as a share of the admitted values, when a table grows

    def __post_init__(self) -> None:
        if self.admit_after < 1:
            raise ConfigError(f"daily.admit_after: must be >= 1, got {self.admit_after}")
        if self.evict_after_days < 1:
            raise ConfigError(f"daily.evict_after_days: must be >= 1, got {self.evict_after_days}")
        if self.headroom < 0:
            raise ConfigError(f"daily.headroom: must be >= 0, got {self.headroom}")


@dataclasses.dataclass(frozen=True)
class DayChange:
    """What one day's update did to a feature's rows."""

    seen: int  # distinct values in the day's training split
    admitted: int  # new values that got a row
    evicted: int  # values that lost theirs
    pending: int  # values counted but not admitted yet
    rows: int  # table rows after the update (OOV row included)
    reused_rows: tuple[int, ...]  # rows that changed owner: re-initialise them


class IdState:
    """One vocabulary feature's value -> row mapping over days (row 0 is the OOV row)."""

    def __init__(
        self,
        values: list[str],
        last_seen: np.ndarray,
        counts: np.ndarray,
        pending: dict[str, tuple[int, int]],
    ) -> None:
        self.values = values  # row r owns values[r]; values[0] is the OOV row's FREE
        self.last_seen = last_seen.astype(np.int64)
        self.counts = counts.astype(np.int64)
        self.pending = pending  # value -> (count so far, last day seen), not admitted yet
        self._row = {v: r for r, v in enumerate(values) if r and v != FREE}

    @classmethod
    def empty(cls) -> IdState:
        return cls([FREE], np.full(1, -1), np.zeros(1), {})

    @property
    def rows(self) -> int:
        """Table rows, the OOV row included: the feature's cardinality."""
        return len(self.values)

    def row(self, value: str) -> int:
        return self._row.get(value, 0)

    def update(
        self, day: int, values: Sequence[str], counts: np.ndarray, config: DailyConfig
    ) -> DayChange:
        """Fold in one day's training counts (`values[i]` seen `counts[i]` times)."""
        counts = np.asarray(counts, dtype=np.int64)
        if len(values) != counts.size:
            raise DataError(f"{len(values)} values but {counts.size} counts")
        # 1. Values that have rows: refresh; new values: count towards admission.
        fresh: list[tuple[str, int]] = []
        for value, count in zip(values, counts.tolist(), strict=True):
            if count <= 0 or value == FREE:  # FREE: the day's own OOV id 0 (missing values)
                continue
            row = self._row.get(value)
            if row is not None:
                self.last_seen[row] = day
                self.counts[row] += count
            else:
                total = self.pending.get(value, (0, day))[0] + count
                if total >= config.admit_after:
                    self.pending.pop(value, None)
                    fresh.append((value, total))
                else:
                    self.pending[value] = (total, day)
        # 2. Evict values unseen for too long; forget counts of values as old.
        horizon = day - config.evict_after_days
        self.pending = {v: cd for v, cd in self.pending.items() if cd[1] > horizon}
        owned = np.array([v != FREE for v in self.values])
        owned[0] = False
        stale = owned & (self.last_seen <= horizon)
        for row in np.flatnonzero(stale).tolist():
            del self._row[self.values[row]]
            self.values[row] = FREE
        # 3. Admit: reuse free rows first (lowest first), then grow with headroom. A row that
        # had an owner before (its count is kept after eviction) is reported for re-init.
        free = [r for r in range(1, self.rows) if self.values[r] == FREE]
        if len(fresh) > len(free):
            owned_after = self.rows - 1 - len(free) + len(fresh)
            extra = math.ceil(owned_after * (1.0 + config.headroom)) + 1 - self.rows
            free += range(self.rows, self.rows + extra)
            self.values += [FREE] * extra
            self.last_seen = np.concatenate([self.last_seen, np.full(extra, -1, np.int64)])
            self.counts = np.concatenate([self.counts, np.zeros(extra, np.int64)])
        fresh.sort(key=lambda item: (-item[1], item[0]))  # frequent first: deterministic rows
        reused = []
        for (value, total), row in zip(fresh, free, strict=False):
            if self.counts[row] > 0:
                reused.append(row)
            self.values[row] = value
            self._row[value] = row
            self.last_seen[row] = day
            self.counts[row] = total
        return DayChange(
            seen=int((counts > 0).sum()),
            admitted=len(fresh),
            evicted=int(stale.sum()),
            pending=len(self.pending),
            rows=self.rows,
            reused_rows=tuple(reused),
        )

    def lookup(self, values: Sequence[str]) -> np.ndarray:
        """Rows of `values` (0 for values without a row): a day's id -> row table when `values`
        is the day's vocabulary with its OOV id 0 first."""
        return np.fromiter((self._row.get(v, 0) for v in values), dtype=np.int64, count=len(values))

    # ---- persistence --------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {
            "values": self.values,
            "last_seen": self.last_seen.tolist(),
            "counts": self.counts.tolist(),
            "pending": {v: list(cd) for v, cd in sorted(self.pending.items())},
        }

    @classmethod
    def from_json(cls, data: dict, *, where: str = "id state") -> IdState:
        try:
            return cls(
                list(data["values"]),
                np.asarray(data["last_seen"]),
                np.asarray(data["counts"]),
                {str(k): (int(v[0]), int(v[1])) for k, v in data["pending"].items()},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{where}: not an id state ({exc}); delete it to start over") from exc


def save_states(path: Path, states: dict[str, IdState], meta: dict) -> None:
    """All features' states as one JSON file, written whole or not at all."""
    tmp = path.with_name(path.name + ".tmp")
    payload = {"meta": meta, "features": {k: s.to_json() for k, s in states.items()}}
    tmp.write_text(json.dumps(payload))
    tmp.replace(path)


def load_states(path: Path) -> tuple[dict[str, IdState], dict]:
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the id state ({exc})") from exc
    states = {
        name: IdState.from_json(data, where=f"{path}: {name}")
        for name, data in payload["features"].items()
    }
    return states, payload.get("meta", {})
