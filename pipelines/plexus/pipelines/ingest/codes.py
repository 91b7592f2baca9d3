"""The streamed ingest's codes: one UInt32 code per distinct value of each single-valued
vocabulary column for the whole run, so that counting the training values is a bincount and
encoding a block is a gather through a lookup table: each value is hashed once per run.

Each column's codes are a polars `Categories` of the run's own (dense codes in order of first
sight; polars' concurrent mapping, so the threads of the job code their blocks into it at once).
Codes exist only in the process that holds the `RunCodes`: Ray tasks code their block into
categories of their own (`local_codes`) and the driver translates them (`RunCodes.translate`).
The codes' order depends on which block came first, so nothing written depends on them: the
vocabulary is ranked by (training count, value) and the ids come from that rank.
"""

from __future__ import annotations

import dataclasses
import uuid

import numpy as np
import polars as pl
from plexus.pipelines.ingest.config import DataConfig
from plexus.pipelines.ingest.encode import rank_vocabulary


@dataclasses.dataclass(frozen=True)
class SparseCounts:
    """How often each code occurs among some rows: the codes (distinct) and their counts."""

    codes: np.ndarray  # int64
    n: np.ndarray  # int64

    @classmethod
    def of(cls, codes: np.ndarray) -> SparseCounts:
        """Counts of `codes` (non-negative ints): a bincount where the codes are dense enough,
        else a sort (a block of 70,000 rows may hold codes up to the column's whole size)."""
        if not len(codes):
            return cls(np.zeros(0, np.int64), np.zeros(0, np.int64))
        if int(codes.max()) < 8 * len(codes) + 4096:
            n = np.bincount(codes)
            at = np.flatnonzero(n)
            return cls(at, n[at])
        found, n = np.unique(codes, return_counts=True)
        return cls(found.astype(np.int64), n.astype(np.int64))

    def translated(self, run: np.ndarray) -> SparseCounts:
        """These counts of local codes under the run's codes (`run[local]`, distinct too)."""
        return SparseCounts(run[self.codes], self.n)

    def add_to(self, total: np.ndarray) -> np.ndarray:
        """`total` (counts by code) plus these, grown to hold every code: summing blocks in any
        order gives the same totals."""
        if not len(self.codes):
            return total
        need = int(self.codes.max()) + 1
        if need > len(total):
            grown = np.zeros(max(need, 2 * len(total)), np.int64)
            grown[: len(total)] = total
            total = grown
        total[self.codes] += self.n  # the codes are distinct
        return total


def local_codes(strings: pl.Series) -> tuple[pl.Series, pl.Series]:
    """`strings` as UInt32 codes into their own distinct values (null stays null), and those
    values by code: one hash pass (a Categorical with categories of its own)."""
    categorical = pl.Categorical(pl.Categories.random())
    coded = strings.cast(categorical)
    physical = coded.to_physical()
    # Read while `coded` lives: the mapping goes with the last column using it.
    top = physical.max()
    size = 0 if top is None else int(top) + 1  # type: ignore[arg-type]
    return physical, _values(categorical, size).rename(strings.name)


def _values(categorical: pl.Categorical, size: int) -> pl.Series:
    """The values of codes 0..size-1 of `categorical`, read natively (`Categories.to_series`
    is a Python loop over them)."""
    codes = pl.Series("v", np.arange(size, dtype=np.uint32))
    return codes.cat.to(categorical).cast(pl.String)


class RunCodes:
    """The run's codes of the single-valued vocabulary columns."""

    def __init__(self, columns: tuple[str, ...]) -> None:
        namespace = f"plexus-ingest-{uuid.uuid4().hex}"
        self.dtypes = {c: pl.Categorical(pl.Categories(c, namespace=namespace)) for c in columns}
        # A mapping lives while some Series uses it: these keep each column's for the run.
        self._alive = [pl.Series(c, [], dtype=d) for c, d in self.dtypes.items()]

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(self.dtypes)

    def code(self, strings: pl.Series) -> pl.Series:
        """The run's codes (UInt32, null for null) of a column's values, named by the column."""
        return strings.cast(self.dtypes[str(strings.name)]).to_physical()

    def translate(
        self, col: str, codes: pl.Series, values: pl.Series
    ) -> tuple[pl.Series, np.ndarray]:
        """A block's `local_codes` (`codes` into `values`) as the run's codes, and the run's
        code of each local one (for `SparseCounts.translated`)."""
        run = self.code(values.rename(col))
        return run.gather(codes).rename(col), run.cast(pl.Int64).to_numpy()

    def vocabulary(
        self, col: str, total: np.ndarray, config: DataConfig
    ) -> tuple[tuple[str, ...], np.ndarray]:
        """The column's vocabulary in id order from its training counts by code (as
        `encode.rank_vocabulary` ranks it) and the lookup table from code to id (int64; 0 for a
        value outside the vocabulary)."""
        size = self._size(col)
        n = np.zeros(size, np.int64)
        n[: min(len(total), size)] = total[:size]
        codes = pl.Series("code", np.arange(size, dtype=np.uint32))
        counts = pl.DataFrame({"v": _values(self.dtypes[col], size), "n": n, "code": codes})
        ranked = rank_vocabulary(counts.lazy(), config, keep=("code",)).collect()
        lookup = np.zeros(size, np.int64)
        lookup[ranked["code"].to_numpy()] = np.arange(1, ranked.height + 1)
        return tuple(ranked["v"].to_list()), lookup

    def _size(self, col: str) -> int:
        """How many values the column's categories hold (codes are dense from 0, and
        `Categories` has no length): the first code that is no value, by bisection."""
        categories = self.dtypes[col].categories

        def known(code: int) -> bool:
            return code in categories  # type: ignore[operator]

        low, high = 0, 1
        while known(high - 1):
            low, high = high, 2 * high
        while low < high:
            mid = (low + high) // 2
            low, high = (mid + 1, high) if known(mid) else (low, mid)
        return low
