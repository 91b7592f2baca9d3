"""The `data:` section of a job config: which files, which format, how to split and encode."""

from __future__ import annotations

import dataclasses
import enum

from plexus.platform.config import coerce_choice
from plexus.platform.errors import ConfigError


class DataFormat(str, enum.Enum):  # noqa: UP042  (the API the lead fixed)
    """Input layouts the ingest job reads."""

    CRITEO = "criteo"
    AVAZU = "avazu"
    MOVIELENS = "movielens"
    PARQUET = "parquet"
    LIGHTGCN = "lightgcn"  # interaction logs only: train.txt + test.txt lines `user item item ...`


class InteractionSplit(enum.StrEnum):
    """Retrieval splits: `given` (the LightGCN files' own train/test), `leave_last` (each user's
    latest positive to test), `temporal` (the latest `test_fraction` of all positives to test)."""

    GIVEN = "given"
    LEAVE_LAST = "leave_last"
    TEMPORAL = "temporal"


class HoldOut(enum.StrEnum):
    """Which training item of a user the validation hold-out takes: `latest` (time-ordered logs),
    `random`, or `auto` (latest when the log has time, else random)."""

    AUTO = "auto"
    LATEST = "latest"
    RANDOM = "random"


@dataclasses.dataclass(frozen=True, kw_only=True)
class SplitConfig:
    """How rows are split when no given splits exist: seeded random, or by time (last = test).

    `folds: K` (K >= 2) turns the rows that are not test into K seeded folds, of which `fold`
    is the validation split and the others train (cross-validation: `plexus tune` with
    `folds: K` trains every configuration on each). The test rows stay as they are (the given
    test file, or the random `test` fraction); a given validation file joins the folds, and
    `valid` is unused. K = 0 or 1: the usual split."""

    valid: float = 0.1
    test: float = 0.1
    seed: int = 0
    by: str = "random"
    folds: int = 0
    fold: int = 0

    def __post_init__(self) -> None:
        for key in ("valid", "test"):
            value = getattr(self, key)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"data.split.{key}: must be in [0, 1), got {value!r}")
        if self.valid + self.test >= 1.0:
            raise ConfigError(
                f"data.split: valid + test must leave rows for training, got "
                f"{self.valid} + {self.test} >= 1"
            )
        if self.by not in ("random", "time"):
            raise ConfigError(f"data.split.by: must be 'random' or 'time', got {self.by!r}")
        if self.folds < 0 or (self.folds >= 2 and not 0 <= self.fold < self.folds):
            raise ConfigError(
                f"data.split.fold: must be in 0..folds-1 with folds >= 2, got fold={self.fold} "
                f"of folds={self.folds}"
            )
        if self.folds < 2 and self.fold != 0:
            raise ConfigError(
                f"data.split.fold={self.fold}: needs data.split.folds >= 2 (cross-validation)"
            )
        if self.folds >= 2 and self.by == "time":
            raise ConfigError(
                "data.split.folds: cross-validation folds are seeded random; a split by time "
                "has one validation period (set folds: 0 or by: random)"
            )

    @property
    def cross_validation(self) -> bool:
        return self.folds >= 2


@dataclasses.dataclass(frozen=True, kw_only=True)
class ParquetSchema:
    """Declared roles of the columns of a Parquet input; unlisted columns are ignored."""

    label: str
    categorical: tuple[str, ...] = ()
    multi_categorical: tuple[str, ...] = ()
    numeric: tuple[str, ...] = ()
    time: str | None = None

    def __post_init__(self) -> None:
        names = [*self.categorical, *self.multi_categorical, *self.numeric]
        if not names:
            raise ConfigError(
                "data.schema: declare at least one categorical, multi_categorical or numeric column"
            )
        seen: set[str] = set()
        for name in names:
            if name in seen or name == self.label:
                raise ConfigError(
                    f"data.schema: column {name!r} is declared twice (or is the label)"
                )
            seen.add(name)

    @property
    def features(self) -> tuple[str, ...]:
        """Feature columns in spec order: numeric, categorical, then multi-valued."""
        return (*self.numeric, *self.categorical, *self.multi_categorical)


@dataclasses.dataclass(frozen=True, kw_only=True)
class InteractionsConfig:
    """`data.interactions`: ingest the input as a retrieval interaction log (one row per
    (user, item) positive) instead of CTR rows.

    Positives are the rows whose rating (MovieLens) or label column (Parquet) is >= `min_rating`
    (None keeps every row; implicit LightGCN logs have no ratings). The split is written once
    as shards: `test` by `split`; `valid` holds one training item of up to `validation_users`
    users with two or more (drawn with `seed`), the hold-out used for tuning; those rows stay in
    `train` too (a tuning model trains on train minus valid). Parquet logs name their user and
    item columns (`user`, `item`) and their side features (`user_features`, `item_features`,
    declared in `data.schema` too); MovieLens side features are found by the reader.

    Example (YAML):
        data:
          format: movielens
          path: ../shared/data/movielens_100k
          interactions: {min_rating: 4, split: leave_last, validation_users: 5000}
    """

    min_rating: float | None = 4.0
    split: InteractionSplit = InteractionSplit.LEAVE_LAST
    test_fraction: float = 0.2
    validation_users: int = 5000
    validation_pick: HoldOut = HoldOut.AUTO
    seed: int = 0
    user: str = "user_id"
    item: str = "item_id"
    user_features: tuple[str, ...] = ()
    item_features: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        coerce_choice(self, "split", InteractionSplit, "data.interactions.split")
        coerce_choice(self, "validation_pick", HoldOut, "data.interactions.validation_pick")
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(
                f"data.interactions.test_fraction: must be in (0, 1), got {self.test_fraction}"
            )
        if self.validation_users < 0:
            raise ConfigError(
                f"data.interactions.validation_users: must be >= 0 (0 = no hold-out), "
                f"got {self.validation_users}"
            )
        if not self.user or not self.item or self.user == self.item:
            raise ConfigError("data.interactions.user / item: two different column names")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Input files, format, split and encoding options of the ingest job.

    `path` (Criteo, Avazu) is a file, a folder of files (a day or a shard per file) or a glob;
    `.gz` and `.zst` files are read as they are.

    Example (YAML):
        data:
          format: criteo
          path: /data/criteo/train.txt
          valid_path: /data/criteo/dev.txt
          hash_buckets: {C3: 100000}
          min_count: 5
    """

    format: DataFormat
    path: str
    valid_path: str | None = None
    test_path: str | None = None
    output: str | None = None
    split: SplitConfig = SplitConfig()
    min_count: int = 1
    hash_buckets: dict[str, int] = dataclasses.field(default_factory=dict)
    numeric: str = "bucketize"
    max_reject_ratio: float = 0.01
    rows_per_shard: int = 1_000_000
    schema: ParquetSchema | None = None
    compression: str = "zstd"
    name: str | None = None
    interactions: InteractionsConfig | None = None  # a retrieval log (None: CTR rows)
    # Criteo/Avazu blocks parsed and encoded by N Ray tasks in flight; 0: threads of this process.
    workers: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.format, DataFormat):
            try:
                object.__setattr__(self, "format", DataFormat(self.format))
            except ValueError:
                choices = ", ".join(repr(f.value) for f in DataFormat)
                raise ConfigError(
                    f"data.format: must be one of {choices}, got {self.format!r}"
                ) from None
        if not self.path:
            raise ConfigError("data.path: give the input file (or MovieLens/Parquet folder)")
        if self.test_path is not None and self.valid_path is None:
            raise ConfigError("data.test_path: given without data.valid_path; give both or neither")
        if self.min_count < 1:
            raise ConfigError(f"data.min_count: must be >= 1, got {self.min_count}")
        for feature, buckets in self.hash_buckets.items():
            if not isinstance(buckets, int) or buckets < 1:
                raise ConfigError(
                    f"data.hash_buckets.{feature}: must be a positive integer, got {buckets!r}"
                )
        if self.numeric not in ("bucketize", "normalize"):
            raise ConfigError(
                f"data.numeric: must be 'bucketize' or 'normalize', got {self.numeric!r}"
            )
        if not 0.0 <= self.max_reject_ratio <= 1.0:
            raise ConfigError(
                f"data.max_reject_ratio: must be in [0, 1], got {self.max_reject_ratio}"
            )
        if type(self.workers) is not int or self.workers < 0:
            raise ConfigError(
                f"data.workers: must be an integer >= 0 (0 = threads, N = Ray tasks), "
                f"got {self.workers!r}"
            )
        if self.rows_per_shard < 1:
            raise ConfigError(f"data.rows_per_shard: must be >= 1, got {self.rows_per_shard}")
        if self.compression not in ("zstd", "snappy", "lz4", "gzip", "none"):
            raise ConfigError(
                f"data.compression: must be zstd, snappy, lz4, gzip or none, got {self.compression!r}"
            )
        if self.format is DataFormat.PARQUET and self.schema is None:
            raise ConfigError(
                "data.schema: required for format=parquet (declare label and feature columns)"
            )
        if self.format is not DataFormat.PARQUET and self.schema is not None:
            raise ConfigError(
                f"data.schema: only used with format=parquet, not {self.format.value}"
            )
        self._check_interactions()

    def _check_interactions(self) -> None:
        if self.format is DataFormat.LIGHTGCN and self.interactions is None:
            object.__setattr__(
                self, "interactions", InteractionsConfig(split=InteractionSplit.GIVEN)
            )
        log = self.interactions
        if log is None:
            return
        if self.split.cross_validation:
            raise ConfigError(
                "data.split.folds: interaction logs split by data.interactions.split; "
                "cross-validation folds are for CTR rows"
            )
        if self.valid_path is not None:
            raise ConfigError(
                "data.valid_path / data.test_path: not used for interaction logs; the split "
                "is data.interactions.split (a LightGCN folder gives its own test.txt)"
            )
        given = self.format is DataFormat.LIGHTGCN
        if given != (log.split is InteractionSplit.GIVEN):
            raise ConfigError(
                f"data.interactions.split={log.split.value}: "
                + ("a LightGCN folder has its own test split; use split: given" if given
                   else f"'given' needs format=lightgcn; {self.format.value} logs split by "
                   "leave_last or temporal")
            )  # fmt: skip
        if self.format in (DataFormat.CRITEO, DataFormat.AVAZU):
            raise ConfigError(
                f"data.interactions: {self.format.value} is a CTR format; interaction logs are "
                "movielens, lightgcn or parquet"
            )
        if self.format is DataFormat.PARQUET and self.schema is not None:
            declared = {*self.schema.categorical, *self.schema.multi_categorical}
            for key in ("user", "item"):
                if getattr(log, key) not in self.schema.categorical:
                    raise ConfigError(
                        f"data.interactions.{key}={getattr(log, key)!r}: declare it in "
                        "data.schema.categorical"
                    )
            for name in (*log.user_features, *log.item_features):
                if name not in declared:
                    raise ConfigError(
                        f"data.interactions side feature {name!r}: declare it in data.schema "
                        "(categorical or multi_categorical)"
                    )
