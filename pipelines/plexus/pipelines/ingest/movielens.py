"""MovieLens ratings as a CTR table: label = rating >= 4, user and item side features.

Three layouts: the 100K folder (`u.data` + `u.user` + `u.item` [+ `u.genre`]), the 1M files
(`ratings.dat` + `users.dat` / `movies.dat` beside it when present) and the `ml-latest` CSVs
(`ratings.csv` + `movies.csv`). `path` is the folder or the ratings file. Features: user_id,
item_id, then gender, age, occupation, zip3 (user side, when known), year (item side) and
genres (multi-valued). The rating timestamp is the time used by time splits.

Read whole: the largest MovieLens ratings file (ml-latest, 33M ratings) fits in memory, and an
interaction log needs every row at once anyway (see `ingest.interactions`). A MovieLens CTR
table could go through the streamed path (blocks of the ratings file joined with the side
tables) but does not yet.
"""

from __future__ import annotations

import io
from pathlib import Path

import polars as pl
from plexus.pipelines.ingest.config import ParquetSchema
from plexus.pipelines.ingest.delimited import LINE, Column, read_bytes, read_delimited
from plexus.pipelines.ingest.readers import TIME, RawTable
from plexus.platform.errors import DataError

GENRES_100K = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
               "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
               "Romance", "Sci-Fi", "Thriller", "War", "Western")  # fmt: skip
_LAYOUTS = {  # ratings file -> (user file, item file)
    "u.data": ("u.user", "u.item"),
    "ratings.dat": ("users.dat", "movies.dat"),
    "ratings.csv": (None, "movies.csv"),
}


def _ratings_file(path: Path) -> Path:
    if path.is_file():
        if path.name not in _LAYOUTS:
            raise DataError(
                f"{path}: not a MovieLens ratings file (expected one of {', '.join(_LAYOUTS)})"
            )
        return path
    if path.is_dir():
        for name in _LAYOUTS:
            if (path / name).is_file():
                return path / name
        raise DataError(f"no MovieLens ratings file ({', '.join(_LAYOUTS)}) in folder {path}")
    raise DataError(f"input not found: {path}")


def movielens_files(path: Path) -> list[Path]:
    """The ratings file, then whichever side files exist beside it."""
    ratings = _ratings_file(path)
    sides = [n for n in _LAYOUTS[ratings.name] if n] + (
        ["u.genre"] if ratings.name == "u.data" else []
    )
    return [ratings] + [ratings.parent / n for n in sides if (ratings.parent / n).is_file()]


def _text(path: Path) -> str:
    data = read_bytes(path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")  # u.item and movies.dat are ISO-8859-1


def _side_table(path: Path, names: list[str], separator: str) -> pl.DataFrame:
    text = _text(path).replace("::", "\t") if separator == "::" else _text(path)
    sep = "\t" if separator == "::" else separator
    try:
        return pl.read_csv(
            io.StringIO(text), separator=sep, has_header=False, quote_char=None, new_columns=names,
            schema_overrides={n: pl.String for n in names}, truncate_ragged_lines=True,
        )  # fmt: skip
    except pl.exceptions.PolarsError as exc:
        raise DataError(f"{path}: cannot parse MovieLens side file: {exc}") from exc


def _users(ratings: Path) -> pl.DataFrame | None:
    name = _LAYOUTS[ratings.name][0]
    if name is None or not (ratings.parent / name).is_file():
        return None
    if name == "u.user":
        users = _side_table(
            ratings.parent / name, ["user_id", "age", "gender", "occupation", "zip"], "|"
        )
    else:
        users = _side_table(
            ratings.parent / name, ["user_id", "gender", "age", "occupation", "zip"], "::"
        )
    return users.select(
        "user_id", "gender", "age", "occupation", pl.col("zip").str.slice(0, 3).alias("zip3")
    ).unique("user_id", keep="first", maintain_order=True)


def _items(ratings: Path) -> pl.DataFrame | None:
    name = _LAYOUTS[ratings.name][1]
    file = ratings.parent / name
    if not file.is_file():
        return None
    year = pl.col("title").str.extract(r"\((\d{4})\)\s*$")
    if name == "u.item":
        names = list(GENRES_100K)
        if (ratings.parent / "u.genre").is_file():
            table = _side_table(ratings.parent / "u.genre", ["genre", "index"], "|").drop_nulls()
            names = table.sort(pl.col("index").cast(pl.Int64))["genre"].to_list()
        flags = [f"__g{i}" for i in range(len(names))]
        items = _side_table(file, ["item_id", "title", "release", "video", "url", *flags], "|")
        listed = pl.concat_list(
            [pl.when(pl.col(f) == "1").then(pl.lit(g)) for f, g in zip(flags, names, strict=True)]
        )
        return items.select(
            "item_id",
            pl.col("release").str.slice(-4).alias("year"),
            listed.list.drop_nulls().alias("genres"),
        )
    if name == "movies.dat":
        items = _side_table(file, ["item_id", "title", "genres"], "::")
    else:
        try:
            items = pl.read_csv(io.StringIO(_text(file)), schema_overrides={"movieId": pl.String})
            items = items.select(pl.col("movieId").alias("item_id"), "title", "genres")
        except (pl.exceptions.PolarsError, KeyError) as exc:
            raise DataError(
                f"{file}: cannot parse movies.csv (movieId,title,genres): {exc}"
            ) from exc
    genres = (
        pl.col("genres")
        .str.split("|")
        .list.eval(pl.element().filter(pl.element() != "(no genres listed)"))
    )
    return items.select("item_id", year.alias("year"), genres.alias("genres"))


def read_movielens(path: Path, *, rating: bool = False) -> RawTable:
    """Read a MovieLens folder or ratings file into a CTR RawTable (label = rating >= 4), or
    with `rating` into an interaction log whose label is the rating itself."""
    ratings = _ratings_file(path)
    rating_ok = (pl.col("rating").is_between(0.5, 5.0), "bad_rating")
    if ratings.name == "ratings.csv":
        names, sep, header, replace = ("userId", "movieId", "rating", "timestamp"), ",", True, None
    else:
        names, sep, header = ("user", "item", "rating", "timestamp"), "\t", False
        replace = (b"::", b"\t") if ratings.suffix == ".dat" else None
    columns = [
        Column(names[0], "int", required=True),
        Column(names[1], "int", required=True),
        Column(names[2], "float", required=True, check=rating_ok, bad="bad_rating"),
        Column(names[3], "int", required=True),
    ]
    parsed = read_delimited(ratings, columns, separator=sep, header=header, replace=replace)
    frame = parsed.frame.select(
        (pl.col(names[2]) if rating else pl.col(names[2]) >= 4.0).cast(pl.Float32).alias("label"),
        pl.col(names[0]).cast(pl.String).alias("user_id"),
        pl.col(names[1]).cast(pl.String).alias("item_id"),
        LINE,
        pl.col(names[3]).alias(TIME),
    )
    categorical = ["user_id", "item_id"]
    multi: list[str] = []
    users, items = _users(ratings), _items(ratings)
    if users is not None:
        frame = frame.join(users, on="user_id", how="left", maintain_order="left")
        categorical += ["gender", "age", "occupation", "zip3"]
    if items is not None:
        items = items.unique("item_id", keep="first", maintain_order=True)
        frame = frame.join(items, on="item_id", how="left", maintain_order="left")
        categorical.append("year")
        multi.append("genres")
    roles = ParquetSchema(
        label="label", categorical=tuple(categorical), multi_categorical=tuple(multi)
    )
    frame = frame.select("label", *roles.features, LINE, TIME)
    return RawTable(
        frame=frame,
        roles=roles,
        rejects=parsed.rejects,
        lines=parsed.lines,
        files=tuple(movielens_files(path)),
    )
