"""A user-history feature for MovieLens-1M CTR (README, "A user-history feature" under
"MovieLens-1M: the tables need their own regularisation"): write the CTR table with two more
multi-valued columns, the movies the row's user liked and disliked in the training split (SVD++'s
implicit feedback, split by label), and print the `plexus train` command that trains the bundled
recipe on it.

Leakage is ruled out by construction: the histories come from the training rows of the bundled
config's own seeded split (the ingest's `seeded_split` of each row number, so the split is the
one `plexus train movielens_1m` makes), and a training row's own movie is left out of its
user's lists, so a training row sees what a test row sees: the user's other training ratings.
Each user keeps a fixed random sample of at most `--max-len` + 1 movies per label (numpy seed
0); a row drops its own movie from that sample, or else the sample's last one.

usage: PLEXUS_DATA=../shared/data .venv/bin/python docs/bench/ml1m_history_features.py OUT_DIR \\
           [--max-len 30]
"""

import argparse
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from plexus.pipelines.config import config_path, load_job_config
from plexus.pipelines.ingest.stream import seeded_split

LISTS = {"liked": 1, "disliked": 0}


def history_column(
    user: np.ndarray, item: np.ndarray, own: np.ndarray, max_len: int, rng: np.random.Generator
) -> pa.ListArray:
    """Per row, up to `max_len` movies of its user's sample among the rows `own`, less its own
    movie when the row is one of them."""
    rows = np.flatnonzero(own)
    rows = rows[rng.permutation(rows.size)]
    rows = rows[np.argsort(user[rows], kind="stable")]  # by user, shuffled within each user
    users = user[rows]
    rank = np.arange(rows.size) - np.searchsorted(users, users)
    keep = rank <= max_len
    sample = np.full((user.max() + 1, max_len + 1), -1, dtype=np.int64)
    sample[users[keep], rank[keep]] = item[rows[keep]]
    lists = sample[user]
    is_self = (lists == item[:, None]) & own[:, None]
    dropped = np.where(is_self.any(axis=1), is_self.argmax(axis=1), max_len)
    present = lists >= 0
    present[np.arange(user.size), dropped] = False
    offsets = np.concatenate([[0], np.cumsum(present.sum(axis=1))]).astype(np.int32)
    values = pc.cast(pa.array(lists[present]), pa.string())
    return pa.ListArray.from_arrays(pa.array(offsets), values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--max-len", type=int, default=30)
    args = parser.parse_args()
    config = load_job_config(config_path("movielens_1m"))
    table = pq.read_table(config.data.path)
    split = seeded_split(np.arange(1, table.num_rows + 1, dtype=np.uint64), config.data)
    user = pc.cast(table["user_id"], pa.int64()).to_numpy()
    item = pc.cast(table["movie_id"], pa.int64()).to_numpy()
    label = table["label"].to_numpy()
    rng = np.random.default_rng(0)
    for name, value in LISTS.items():
        own = (split == 0) & (label == value)
        table = table.append_column(name, history_column(user, item, own, args.max_len, rng))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out.resolve() / "ml1m_history.parquet"
    pq.write_table(table, path, compression="zstd")
    print(f"wrote {path}: {table.num_rows:,} rows, splits {np.bincount(split).tolist()}")
    columns = ",".join([*config.data.schema.multi_categorical, *LISTS])
    venv = os.path.relpath(Path(__file__).parents[2] / ".venv/bin/plexus")
    print(
        f"{venv} train movielens_1m data.path={path} "
        f"data.schema.multi_categorical=[{columns}] embedding.pooling=mean "
        "train.epochs=40 train.patience=3"
    )


if __name__ == "__main__":
    main()
