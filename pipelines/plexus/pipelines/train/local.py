"""Training in the job's own process (`use_ray: false`): the same loop, without Ray Train.

Why: a Ray Train fit starts a Train controller, a worker group and Ray Data's split
coordinator before its first batch (about 40 s of a 75 s one-epoch job on 3,000 rows on a
2-core machine), so on a small table or while debugging a model the start-up is most of the run.
The in-process fit runs `train_loop` itself, fed by the ingested splits read once into Arrow
tables; each epoch's checkpoint goes to `<out>/checkpoints/checkpoint_<epoch>` (moved into place
whole, the last two kept), and a killed run resumes after its last checkpointed epoch, as a Ray
Train run does. One worker only: sharded tables and data parallelism need Ray Train.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from plexus.pipelines.train.loop import LoopSession, train_loop

CHECKPOINTS_DIR = "checkpoints"
KEEP_CHECKPOINTS = 2


class ArrowDataset:
    """An in-memory split with the `iter_batches` of a Ray Data dataset shard (what the loop
    calls). A shuffle seed shuffles the whole split (a superset of Ray's local shuffle buffer)."""

    def __init__(self, shards: list[Path]) -> None:
        self.table = pa.concat_tables([pq.read_table(p) for p in shards])

    def iter_batches(
        self,
        *,
        batch_size: int,
        batch_format: str = "pyarrow",
        local_shuffle_buffer_size: int | None = None,
        local_shuffle_seed: int | None = None,
        prefetch_batches: int = 0,
    ) -> Iterator[pa.Table]:
        del batch_format, prefetch_batches  # always Arrow, already in memory
        table = self.table
        if local_shuffle_buffer_size:
            order = np.random.default_rng(local_shuffle_seed).permutation(table.num_rows)
            table = table.take(pa.array(order))
        for start in range(0, table.num_rows, batch_size):
            yield table.slice(start, batch_size)


class LocalSession(LoopSession):
    """The loop's session in this process: Arrow splits in memory, checkpoints in a folder."""

    def __init__(self, shards: dict[str, list[Path]], storage: Path) -> None:
        self.rank, self.world = 0, 1
        self._datasets = {split: ArrowDataset(paths) for split, paths in shards.items()}
        self.storage = storage
        self.last: Path | None = None

    def dataset(self, split: str) -> ArrowDataset:
        return self._datasets[split]

    def get_checkpoint(self) -> None:
        return None  # a crashed run's checkpoint comes in as the loop's `resume_from`

    def report(self, metrics: dict[str, float], folder: str | None) -> None:
        if folder is None:
            return
        target = self.storage / f"checkpoint_{int(metrics['epoch']):06d}"
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(folder, partial)
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
        self.last = target
        for old in sorted(self.storage.glob("checkpoint_??????"))[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old, ignore_errors=True)


class FolderCheckpoint:
    """A checkpoint folder with the `as_directory()` of `ray.train.Checkpoint`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextlib.contextmanager
    def as_directory(self) -> Iterator[str]:
        yield str(self.path)


class LocalResult:
    """What an in-process fit leaves, read as Ray Train's `Result` is: the last checkpoint."""

    def __init__(self, last: Path | None) -> None:
        self.checkpoint = FolderCheckpoint(last) if last is not None else None
        self.error = None if last is not None else "no epoch was checkpointed"


def fit_in_process(
    loop_config: dict[str, Any], shards: dict[str, list[Path]], out: Path
) -> LocalResult:
    """Run the training loop here on the `train` and `valid` `shards`, checkpointing under
    `out/checkpoints` (`loop_config["resume_from"]`: the checkpoint a killed run left there)."""
    storage = out / CHECKPOINTS_DIR
    storage.mkdir(parents=True, exist_ok=True)
    session = LocalSession(shards, storage)
    train_loop(loop_config, session)
    resumed = loop_config.get("resume_from")
    return LocalResult(session.last or (Path(resumed) if resumed else None))
