"""Synthetic datasets in the real files' layouts, with planted signal, for tests and benchmarks.

`synth_criteo` writes a Criteo display-ads TSV (label, I1..I13, C1..C26, empty = missing, no
header); `synth_movielens` writes a MovieLens-100K folder (`u.data`, `u.user`, `u.item`,
`u.genre`). Ids are Zipf-distributed per column, and the label depends on latent per-value
weights of a few features, a pairwise interaction and a numeric effect, so a working model
reaches a clearly better-than-random AUC while a broken one stays near 0.5.

Everything is vectorized numpy + polars and written in chunks, so 5M+ rows fit in memory.
The same arguments give byte-identical files.

Example:
    >>> synth_criteo(Path("/tmp/criteo.txt"), rows=10_000, seed=1, malformed=5)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
from plexus.platform.hashing import splitmix64

CRITEO_NUMERIC = tuple(f"I{i}" for i in range(1, 14))
CRITEO_CATEGORICAL = tuple(f"C{i}" for i in range(1, 27))
_CHUNK = 500_000
# Per C-column vocabulary size: a mix of small and large columns, like the real data.
_CAT_SIZES = (1_000, 500, 50_000, 20_000, 200, 20, 10_000, 500, 3, 30_000,
              5_000, 40_000, 3_000, 25, 10_000, 30_000, 10, 4_000, 2_000, 4,
              40_000, 15, 15, 20_000, 100, 10_000)  # fmt: skip
_SIGNAL_COLS = (0, 1, 4, 5)  # C1, C2, C5, C6 carry latent weights; C1 x C2 interact
_MISSING_RATE = 0.1
GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
          "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
          "Romance", "Sci-Fi", "Thriller", "War", "Western")  # fmt: skip


def _zipf(rng: np.random.Generator, n: int, size: int, s: float = 1.1) -> np.ndarray:
    """`n` draws of ranks `[0, size)` with P(rank k) ~ (k + 1)^-s: a few head values dominate.

    Inverse-CDF sampling of the continuous power law on [1, size + 1), floored (vectorized, no
    search); s = 1 is avoided by callers.
    """
    a = 1.0 - s
    x = (1.0 + rng.random(n) * ((size + 1.0) ** a - 1.0)) ** (1.0 / a)
    return np.minimum(x.astype(np.int64) - 1, size - 1)


def _hex_vocab(column: int, size: int) -> pl.Series:
    """Stable 8-hex-digit tokens for ranks `0..size-1` of one column (like Criteo's hashes)."""
    codes = splitmix64(np.arange(size, dtype=np.uint64) + np.uint64(column << 32))
    return pl.Series([f"{c:08x}" for c in (codes & np.uint64(0xFFFFFFFF)).tolist()])


def _criteo_chunk(
    rng: np.random.Generator,
    n: int,
    vocabs: list[pl.Series],
    weights: list[np.ndarray],
    inter: tuple[np.ndarray, np.ndarray],
    shifts: tuple[int, ...] = (0,) * len(_CAT_SIZES),
) -> pl.DataFrame:
    # A popularity rank is value (rank + shift) % size: a shift moves the head to other values.
    ranks = [
        (_zipf(rng, n, size) + shift) % size for size, shift in zip(_CAT_SIZES, shifts, strict=True)
    ]
    # Numeric columns: heavy-tailed counts; I1 carries a monotone effect.
    ints = np.floor(rng.lognormal(mean=1.0, sigma=1.5, size=(13, n))).astype(np.int64)
    logit = np.full(n, -1.6)
    for col, w in zip(_SIGNAL_COLS, weights, strict=True):
        logit += w[ranks[col]]
    logit += np.sum(inter[0][ranks[0]] * inter[1][ranks[1]], axis=1)
    logit += 0.6 * (np.log1p(ints[0]) - 1.3)
    label = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int8)
    missing = rng.random((39, n)) < _MISSING_RATE
    columns: dict[str, pl.Series] = {"label": pl.Series("label", label)}
    for i, name in enumerate(CRITEO_NUMERIC):
        columns[name] = pl.Series(name, ints[i]).scatter(np.flatnonzero(missing[i]), None)
    for i, name in enumerate(CRITEO_CATEGORICAL):
        idx = pl.Series(ranks[i].astype(np.uint32)).scatter(np.flatnonzero(missing[13 + i]), None)
        columns[name] = vocabs[i].gather(idx).alias(name)
    return pl.DataFrame(list(columns.values()))


def _malformed_line(rng: np.random.Generator, line: str) -> str:
    fields = line.split("\t")
    kind = int(rng.integers(0, 3))
    if kind == 0:
        return "\t".join(fields[:-3])  # wrong field count
    if kind == 1:
        fields[1] = "abc"  # non-integer I1
        return "\t".join(fields)
    fields[0] = "2"  # label not 0/1
    return "\t".join(fields)


def synth_criteo(
    path: Path,
    *,
    rows: int,
    seed: int = 0,
    malformed: int = 0,
    day: int = 0,
    drift: float = 0.0,
) -> Path:
    """Write `rows` Criteo-layout TSV lines to `path` (plus `malformed` lines replacing good ones).

    The label is Bernoulli(sigmoid(w_C1 + w_C2 + w_C5 + w_C6 + <u_C1, v_C2> + 0.6 log1p(I1) + b)),
    about 25% positives. Malformed lines (wrong field count, non-integer I1, label 2) sit at
    seeded positions and count towards `rows`.

    `day` and `drift` make a daily stream with drifting popularity: day d's popularity ranks are
    moved by `d * drift` of each column's values (new values rise to the head, old ones fade),
    while the values' effects on the label stay the same; rows are drawn afresh each day.
    Day 0 is the plain file.
    """
    if rows <= 0 or malformed < 0 or malformed > rows:
        raise ValueError(f"need rows > 0 and 0 <= malformed <= rows, got {rows=}, {malformed=}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prng = np.random.default_rng([seed, 0])
    vocabs = [_hex_vocab(i, size) for i, size in enumerate(_CAT_SIZES)]
    weights = [prng.normal(0.0, 0.8, _CAT_SIZES[c]) for c in _SIGNAL_COLS]
    inter = (prng.normal(0, 0.6, (_CAT_SIZES[0], 4)), prng.normal(0, 0.6, (_CAT_SIZES[1], 4)))
    bad = np.sort(prng.choice(rows, size=malformed, replace=False)) if malformed else np.empty(0)
    shifts = tuple(int(day * drift * size) for size in _CAT_SIZES)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as out:
        for chunk, start in enumerate(range(0, rows, _CHUNK)):
            n = min(_CHUNK, rows - start)
            rng = np.random.default_rng([seed, 1, chunk] + ([day] if day else []))
            text = _criteo_chunk(rng, n, vocabs, weights, inter, shifts).write_csv(
                separator="\t", include_header=False, quote_style="never"
            )
            local = bad[(bad >= start) & (bad < start + n)] - start
            if local.size:
                lines = text.split("\n")
                for i in local.tolist():
                    lines[i] = _malformed_line(rng, lines[i])
                text = "\n".join(lines)
            out.write(text.encode())
    tmp.replace(path)
    return path


def synth_movielens(
    folder: Path, *, users: int = 500, items: int = 800, ratings: int = 40_000, seed: int = 0
) -> Path:
    """Write a MovieLens-100K-layout folder: `u.data`, `u.user`, `u.item`, `u.genre`.

    Ratings (1..5) come from a user x item latent dot product, a per-item quality, a
    gender x genre interaction and an age effect, so `rating >= 4` is predictable from the ids
    and side features. Timestamps grow with the row index (plus noise), for time splits.
    Duplicate (user, item) pairs may occur, as in implicit logs.
    """
    if min(users, items, ratings) <= 0:
        raise ValueError(
            f"users, items and ratings must be positive, got {users}, {items}, {ratings}"
        )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 7])
    n_genres = len(GENRES)
    # Users: age, gender, occupation, zip.
    age = rng.integers(7, 74, users)
    gender = rng.integers(0, 2, users)
    occupations = np.array(["student", "engineer", "artist", "doctor", "writer", "other"])
    occ = rng.integers(0, len(occupations), users)
    zips = rng.integers(10_000, 99_999, users)
    # Items: 1-3 genres each, a quality offset.
    flags = np.zeros((items, n_genres), dtype=np.int64)
    for k in range(3):
        pick = rng.integers(1, n_genres, items)
        keep = (rng.random(items) < 0.5) if k else np.ones(items, bool)
        flags[np.arange(items)[keep], pick[keep]] = 1
    quality = rng.normal(0, 0.7, items)
    gender_genre = rng.normal(0, 0.8, (2, n_genres))
    u_lat, i_lat = rng.normal(0, 0.6, (users, 6)), rng.normal(0, 0.6, (items, 6))
    # Ratings: Zipf popularity for both users and items.
    uid = _zipf(rng, ratings, users, s=0.8)
    iid = _zipf(rng, ratings, items, s=0.9)
    genre_term = (flags[iid] * gender_genre[gender[uid]]).sum(1) / np.maximum(flags[iid].sum(1), 1)
    score = (
        (u_lat[uid] * i_lat[iid]).sum(1)
        + quality[iid]
        + genre_term
        + 0.02 * (age[uid] - 35)
        + rng.normal(0, 0.5, ratings)
    )
    rating = np.digitize(score, [-1.2, -0.5, 0.1, 0.6]) + 1
    ts = 874_724_710 + np.arange(ratings) * 60 + rng.integers(0, 60, ratings)
    pl.DataFrame({"u": uid + 1, "i": iid + 1, "r": rating, "t": ts}).write_csv(
        folder / "u.data", separator="\t", include_header=False
    )
    pl.DataFrame({
        "id": np.arange(1, users + 1), "age": age, "gender": np.array(["M", "F"])[gender],
        "occupation": occupations[occ], "zip": zips,
    }).write_csv(folder / "u.user", separator="|", include_header=False)  # fmt: skip
    item_cols = {
        "id": np.arange(1, items + 1),
        "title": [f"Movie {i} (19{90 + i % 10})" for i in range(1, items + 1)],
        "release": [f"01-Jan-19{90 + i % 10}" for i in range(1, items + 1)],
        "video": [""] * items,
        "url": [f"http://example.org/{i}" for i in range(1, items + 1)],
        **{f"g{g}": flags[:, g] for g in range(n_genres)},
    }
    pl.DataFrame(item_cols).write_csv(
        folder / "u.item", separator="|", include_header=False, quote_style="never"
    )
    (folder / "u.genre").write_text("".join(f"{g}|{i}\n" for i, g in enumerate(GENRES)) + "\n")
    return folder


def planted_lists(
    *,
    num_users: int = 300,
    num_groups: int = 8,
    items_per_group: int = 25,
    per_user: int = 24,
    test_per_user: int = 6,
    dominant: float | None = None,
    popularity: float = 0.0,
    seed: int = 0,
) -> tuple[list[tuple[int, list[int]]], list[tuple[int, list[int]]], dict[int, np.ndarray]]:
    """Planted multi-interest interactions: -> (train lists, test lists, {user: its groups}).

    Item `g * items_per_group + j` is in interest group g. Each user has 2-3 interests with
    unequal weights (`dominant`: the first interest's share, the rest split evenly) and draws
    its items from them, so a good retriever must also cover a user's minor interests; test
    items come from the same interests as the training ones. `popularity` > 0 draws a group's
    items with P(j-th item) ~ (j + 1)^-popularity, as in real logs (0: uniform).
    """
    if min(num_users, num_groups, items_per_group, per_user) <= 0 or test_per_user < 0:
        raise ValueError("num_users, num_groups, items_per_group and per_user must be positive")
    if num_groups < 3:
        raise ValueError(
            f"num_groups must be >= 3 (users have up to 3 interests), got {num_groups}"
        )
    rng = np.random.default_rng(seed)
    within = (np.arange(items_per_group) + 1.0) ** -popularity
    within /= within.sum()
    planted: dict[int, np.ndarray] = {}
    train: list[tuple[int, list[int]]] = []
    test: list[tuple[int, list[int]]] = []
    for user in range(num_users):
        groups = rng.choice(num_groups, size=int(rng.integers(2, 4)), replace=False)
        if dominant is None:
            weights = np.sort(rng.dirichlet(np.full(groups.size, 2.0)))[::-1]
            weights = np.maximum(weights, 0.15)
            weights /= weights.sum()
        else:
            rest = (1.0 - dominant) / (groups.size - 1)
            weights = np.array([dominant] + [rest] * (groups.size - 1))
        planted[user] = groups
        counts = np.maximum(1, np.round(weights * (per_user + test_per_user)).astype(int))
        items = np.concatenate(
            [
                g * items_per_group
                + rng.choice(items_per_group, size=min(c, items_per_group), replace=False, p=within)
                for g, c in zip(groups, counts, strict=True)
            ]
        )
        rng.shuffle(items)
        split = max(1, items.size - test_per_user)
        train.append((user, items[:split].tolist()))
        test.append((user, items[split:].tolist()))
    return train, test, planted


def write_lightgcn(
    folder: str | Path,
    train: list[tuple[int, list[int]]],
    test: list[tuple[int, list[int]]],
) -> Path:
    """Write (user, items) lists as a LightGCN-format folder (`train.txt`, `test.txt`)."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    for name, lists in (("train.txt", train), ("test.txt", test)):
        lines = [" ".join(map(str, [user, *items])) for user, items in lists if len(items)]
        tmp = root / f".{name}.tmp"
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(root / name)
    return root


def synth_interactions(
    folder: Path,
    *,
    interactions: int = 90_000,
    num_groups: int = 20,
    popularity: float = 1.0,
    seed: int = 0,
) -> Path:
    """Write a LightGCN-format interaction log of about `interactions` rows (30 per user, 6 of
    them in `test.txt`) with planted multi-interest structure: `planted_lists` over
    `num_groups` groups of 100 items, Zipf-popular within a group."""
    users = max(1, interactions // 30)
    train, test, _ = planted_lists(
        num_users=users,
        num_groups=num_groups,
        items_per_group=100,
        per_user=24,
        popularity=popularity,
        seed=seed,
    )
    return write_lightgcn(folder, train, test)
