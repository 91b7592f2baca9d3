"""Interaction logs through the ingest: the LightGCN reader, the retrieval splits, the
validation hold-out and the order in which retrieval shards are written.

A log becomes one row per (user, item) positive: `label` (1.0), `user_id`, `item_id` and the
side features (MovieLens: gender, age, occupation, zip3 / year, genres; Parquet: declared in
`data.interactions`). The split (`data.interactions.split`) is written once as shards:

* `given`: a LightGCN folder's train.txt / test.txt as they are (the NGCF/LightGCN split);
* `leave_last`: each user's latest positive (ties: the larger item id, then the later line)
  is test, for users with two or more;
* `temporal`: the positives later than the (1 - `test_fraction`) quantile of all times.

`valid` holds one training item of up to `validation_users` users with two or more (the latest
for timestamped logs, else a random one), drawn as the retrieval readers before the ingest did,
so the same seed holds out the same items; those rows stay in `train` too. Users and items are
the spec's vocabularies, fit on `train` (so `data.min_count` applies); rows whose user or item
is OOV there are dropped from every split (an item never trained on cannot be ranked). Shards
are sorted by user id, then by the user's own order (time for timestamped logs, file order for
LightGCN), so `plexus.pipelines.retrieval.data` reads its CSR lists straight from them.

A log is read whole, unlike CTR inputs (`ingest.stream`): `leave_last` needs all of one
user's rows to find the latest, `temporal` the quantile of all times, the hold-out ranks each
user's training rows, and the shards are sorted by user over the whole log, so every row is
held at once whatever the reader does. A log costs about 8 bytes per column per positive
(Gowalla's 1.03M positives: 0.7 GB peak RSS for the whole ingest); a log too large for that
would need a spilled sort by user, not a streamed reader.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
from plexus.pipelines.ingest.config import (
    DataConfig,
    DataFormat,
    HoldOut,
    InteractionSplit,
    ParquetSchema,
)
from plexus.pipelines.ingest.delimited import LINE, empty_rejects, read_bytes
from plexus.pipelines.ingest.readers import TIME, RawTable
from plexus.platform.errors import ConfigError, DataError
from plexus.platform.feature_spec import FeatureSpec

USER = "user_id"
ITEM = "item_id"
ORDER = "__order"  # a row's rank in its user's list (kept through encoding to sort the shards)
SPLIT = "__split"
_POS = "__pos"  # position of an item within its LightGCN line
_GIVEN = "__given"  # the LightGCN file a row came from (0 train, 2 test)
MOVIELENS_USER_SIDE = ("gender", "age", "occupation", "zip3")
MOVIELENS_ITEM_SIDE = ("year", "genres")
LIGHTGCN_FILES = ("train.txt", "test.txt")


def lightgcn_files(path: Path) -> list[Path]:
    """train.txt and test.txt of a LightGCN-format folder (or of the folder of a file in it)."""
    root = path.parent if path.is_file() else path
    files = [root / name for name in LIGHTGCN_FILES]
    for file in files:
        if not file.is_file():
            raise DataError(
                f"{file} not found; a LightGCN-format folder holds train.txt and test.txt"
            )
    return files


def read_lightgcn(path: Path) -> RawTable:
    """Lines `user item item ...` of train.txt and test.txt -> one row per (user, item).

    A line with a token that is not a non-negative integer is rejected with its file and line.
    """
    frames, rejects, lines = [], [], 0
    for code, file in zip((0, 2), lightgcn_files(path), strict=True):
        text = read_bytes(file).decode("utf-8", errors="replace")
        raw = (
            pl.DataFrame({"raw": text.split("\n")}, schema={"raw": pl.String})
            .with_row_index(LINE, offset=1)
            .with_columns(pl.col(LINE).cast(pl.Int64), pl.col("raw").str.strip_suffix("\r"))
            .filter(pl.col("raw").str.strip_chars() != "")
            .with_columns(pl.col("raw").str.extract_all(r"\S+").alias("__tok"))
        )
        lines += raw.height
        numeric = pl.col("__tok").list.eval(pl.element().str.contains(r"^\d+$"))
        ok = numeric.list.all()
        bad = raw.filter(~ok)
        if bad.height:
            first_bad = ~pl.col("__tok").list.first().str.contains(r"^\d+$")
            rejects.append(
                bad.select(
                    pl.lit(str(file)).alias("file"),
                    pl.col(LINE).alias("line"),
                    pl.lit("bad_id").alias("reason"),
                    pl.when(first_bad).then(pl.lit("user")).otherwise(pl.lit("item")).alias("column"),
                    pl.col("raw"),
                )
            )  # fmt: skip
        good = raw.filter(ok).select(
            LINE,
            pl.col("__tok").list.first().alias(USER),
            pl.col("__tok").list.slice(1).alias(ITEM),
        )
        rows = (
            good.with_columns(pl.int_ranges(pl.col(ITEM).list.len(), dtype=pl.Int64).alias(_POS))
            .explode([ITEM, _POS])
            .filter(pl.col(ITEM).is_not_null())
        )
        frames.append(
            rows.select(
                pl.lit(1.0, pl.Float32).alias("label"),
                USER,
                ITEM,
                LINE,
                _POS,
                pl.lit(code, pl.Int8).alias(_GIVEN),
            )
        )
    return RawTable(
        frame=pl.concat(frames),
        roles=ParquetSchema(label="label", categorical=(USER, ITEM)),
        rejects=pl.concat(rejects) if rejects else empty_rejects(),
        lines=lines,
        files=tuple(lightgcn_files(path)),
    )


def split_interactions(
    table: RawTable, config: DataConfig
) -> tuple[pl.DataFrame, ParquetSchema, dict[str, tuple[str, ...]]]:
    """Positives with `__split` (0 train, 1 valid, 2 test) and `__order` columns, the column
    roles (user and item columns named `user_id` and `item_id`) and the spec's entity groups."""
    log = config.interactions
    assert log is not None
    frame, roles = _renamed(table, config)
    if log.min_rating is not None and _GIVEN not in frame.columns:
        frame = frame.filter(pl.col("label") >= log.min_rating)
    if frame.height == 0:
        raise DataError(
            f"{config.path}: no interactions left (data.interactions.min_rating="
            f"{log.min_rating}); for 0/1 labels set min_rating: 1, or null to keep every row"
        )
    frame = frame.with_columns(pl.lit(1.0, pl.Float32).alias("label"))
    item_number = pl.col(ITEM).cast(pl.Int64, strict=False)
    if _GIVEN in frame.columns:
        keys = [pl.col(_GIVEN), pl.col(LINE), pl.col(_POS)]
    elif table.has_time:
        keys = [pl.col(TIME), item_number, pl.col(ITEM), pl.col(LINE)]
    else:
        keys = [pl.col(LINE)]
    frame = frame.sort(keys, nulls_last=True).with_row_index(ORDER)
    frame = frame.with_columns(pl.col(ORDER).cast(pl.Int64))
    frame = frame.with_columns(_test_split(frame, table, config).cast(pl.Int8).alias(SPLIT))
    pick = log.validation_pick
    latest = pick is HoldOut.LATEST or (pick is HoldOut.AUTO and table.has_time)
    valid = _hold_out(frame, log.validation_users, latest=latest, seed=log.seed)
    frame = pl.concat([frame, valid]).drop(TIME, _POS, _GIVEN, strict=False)
    return frame, roles, _groups(roles, config)


def _renamed(table: RawTable, config: DataConfig) -> tuple[pl.DataFrame, ParquetSchema]:
    """A Parquet log's declared user and item columns renamed to `user_id` and `item_id`."""
    log = config.interactions
    assert log is not None
    if config.format is not DataFormat.PARQUET:
        return table.frame, table.roles
    names = {log.user: USER, log.item: ITEM}
    clash = [n for n in (USER, ITEM) if n in table.frame.columns and n not in names]
    if clash:
        raise ConfigError(
            f"data.interactions: column {clash[0]!r} is reserved for the user/item ids; "
            "name it in data.interactions.user / item, or drop it from data.schema"
        )
    frame = table.frame.rename(names)
    rename = lambda cols: tuple(names.get(c, c) for c in cols)  # noqa: E731
    roles = ParquetSchema(
        label=table.roles.label,
        numeric=table.roles.numeric,
        categorical=rename(table.roles.categorical),
        multi_categorical=table.roles.multi_categorical,
    )
    return frame, roles


def _test_split(frame: pl.DataFrame, table: RawTable, config: DataConfig) -> pl.Expr:
    log = config.interactions
    assert log is not None
    if log.split is InteractionSplit.GIVEN:
        return pl.col(_GIVEN)
    if not table.has_time:
        raise ConfigError(
            f"data.interactions.split={log.split.value}: needs a time column; "
            f"declare data.schema.time for a Parquet log"
        )
    if log.split is InteractionSplit.LEAVE_LAST:
        last = pl.col(ORDER) == pl.col(ORDER).max().over(USER)
        many = pl.len().over(USER) >= 2  # a user's only positive stays in training
        return pl.when(last & many).then(2).otherwise(0)
    times = frame[TIME].to_numpy().astype(np.float64)
    cut = float(np.quantile(times, 1.0 - log.test_fraction))
    return pl.when(pl.col(TIME) > cut).then(2).otherwise(0)


def _hold_out(frame: pl.DataFrame, max_users: int, *, latest: bool, seed: int) -> pl.DataFrame:
    """Copies (split 1) of one training row of up to `max_users` users with >= 2 of them.

    Users are drawn in the order of their external ids (numeric when the ids are numbers),
    as the readers before the ingest did, so a seed holds out the same items as it did there.
    """
    train = frame.filter(pl.col(SPLIT) == 0)
    empty = train.clear().with_columns(pl.lit(1, pl.Int8).alias(SPLIT))
    if max_users == 0:
        return empty
    stats = (
        train.group_by(USER)
        .agg(pl.len().alias("n"))
        .sort([pl.col(USER).cast(pl.Int64, strict=False), pl.col(USER)], nulls_last=True)
    )
    counts = stats["n"].to_numpy().astype(np.int64)
    eligible = np.nonzero(counts >= 2)[0]
    if eligible.size == 0:
        raise DataError(
            "no user has two training items to hold one out; set "
            "data.interactions.validation_users: 0 to skip the validation split"
        )
    rng = np.random.default_rng(seed)
    if eligible.size > max_users:
        eligible = np.sort(rng.choice(eligible, max_users, replace=False))
    offset = counts[eligible] - 1 if latest else rng.integers(0, counts[eligible])
    held = pl.DataFrame(
        {USER: stats[USER].gather(eligible), "__k": offset.astype(np.int64)},
        schema={USER: pl.String, "__k": pl.Int64},
    )
    ranked = train.with_columns(
        (pl.col(ORDER).rank("ordinal").over(USER).cast(pl.Int64) - 1).alias("__k")
    )
    valid = ranked.join(held, on=[USER, "__k"], how="inner").drop("__k")
    return valid.with_columns(pl.lit(1, pl.Int8).alias(SPLIT)).select(empty.columns)


def _groups(roles: ParquetSchema, config: DataConfig) -> dict[str, tuple[str, ...]]:
    """The spec's entity groups: user and item ids first, then their side features."""
    log = config.interactions
    assert log is not None
    features = set(roles.features)
    if config.format is DataFormat.MOVIELENS:
        user_side, item_side = MOVIELENS_USER_SIDE, MOVIELENS_ITEM_SIDE
    else:
        user_side, item_side = log.user_features, log.item_features
    return {
        "user": (USER, *(f for f in user_side if f in features)),
        "item": (ITEM, *(f for f in item_side if f in features)),
    }


def finish_interactions(encoded: pl.DataFrame) -> tuple[pl.DataFrame, dict[str, int]]:
    """Encoded rows without OOV users or items, sorted by split, user id and the user's order;
    and the rows of each split."""
    kept = encoded.filter((pl.col(USER) > 0) & (pl.col(ITEM) > 0)).sort([SPLIT, USER, ORDER])
    counts = np.bincount(kept[SPLIT].to_numpy(), minlength=3)
    return kept, dict(zip(("train", "valid", "test"), map(int, counts), strict=True))


def catalog_items(config: DataConfig, spec: FeatureSpec) -> pl.DataFrame:
    """The log's items that are not in the spec's item vocabulary (never in a training positive:
    only ratings below `min_rating`, or only in valid/test rows), one row each with its item
    side features encoded by the spec: columns `external_id` (the log's item id) and the item
    group's side features. Empty when the item group has no side features.

    The retrieval towers give these catalog items vectors from their features alone; the split
    and the vocabulary stay as the ingest wrote them.
    """
    from plexus.pipelines.ingest.encode import encode
    from plexus.pipelines.ingest.readers import read_input

    side = list(spec.groups.get("item", (ITEM,))[1:])
    if not side or config.interactions is None:
        return pl.DataFrame({"external_id": []}, schema={"external_id": pl.Int64})
    table = read_input(config.format, Path(config.path), config.schema, interactions=True)
    frame, _ = _renamed(table, config)
    known = set(spec[ITEM].vocabulary)
    frame = (
        frame.filter(pl.col(ITEM).is_not_null() & ~pl.col(ITEM).is_in(list(known)))
        .unique(ITEM, keep="first", maintain_order=True)
        .with_columns(pl.col(ITEM).alias("__external"))
    )
    encoded = encode(frame, spec, keep=("__external",))
    return encoded.select(
        pl.col("__external").cast(pl.Int64, strict=False).alias("external_id"), *side
    ).filter(pl.col("external_id").is_not_null())
