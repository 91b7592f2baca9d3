"""The datasets a Ray training job hands its workers: validation batches come even while every
CPU is taken (as the training stream's paused read task took the last one on 5M rows, and DNIS's
search, which draws validation batches mid-epoch, waited forever), in file order every time; and
the training stream comes in file order too, however its read tasks overlap."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from plexus.pipelines.data.synth import synth_criteo
from plexus.pipelines.ingest import DataConfig, DataFormat, SplitConfig, ingest
from plexus.pipelines.train.job import ray_data_config, ray_datasets

WAIT_SECONDS = 60.0


def _drain(dataset, into: list[pa.Table]) -> None:  # noqa: ANN001
    for batch in dataset.iterator().iter_batches(batch_size=256, batch_format="pyarrow"):
        into.append(batch)


def test_validation_batches_come_while_every_cpu_is_taken(ray_local, tmp_path: Path) -> None:
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    raw = synth_criteo(tmp_path / "criteo.tsv", rows=4_000, seed=3)
    data = ingest(
        DataConfig(format=DataFormat.CRITEO, path=str(raw), split=SplitConfig(valid=0.2, test=0.1)),
        output=tmp_path / "data",
        progress=False,
    )
    datasets = ray_datasets(data)
    # Every CPU of the cluster, not only those free now: a task another test left winding
    # down would free its CPU after the group took the rest (seen under `make test`).
    held = placement_group([{"CPU": ray.cluster_resources()["CPU"]}])
    ray.get(held.ready(), timeout=WAIT_SECONDS)
    assert ray.available_resources().get("CPU", 0.0) == 0.0
    batches: list[pa.Table] = []
    try:
        reader = threading.Thread(target=_drain, args=(datasets["valid"], batches), daemon=True)
        reader.start()
        reader.join(WAIT_SECONDS)
        assert not reader.is_alive(), (
            f"no validation batch in {WAIT_SECONDS:.0f} s while every CPU was taken: "
            "the validation rows need a read task"
        )
    finally:
        remove_placement_group(held)
    shards = pa.concat_tables([pq.read_table(p) for p in data.shards("valid")])
    assert pa.concat_tables(batches).equals(shards)  # every row, in file order
    assert datasets["train"].count() == data.rows["train"] > 0


def test_training_stream_comes_in_file_order_when_a_later_shard_is_read_first(
    ray_local, tmp_path: Path
) -> None:
    """A large first shard and small later ones: two read tasks run at once and the small
    shards' finish first, so blocks taken as they finish come out of file order."""
    import ray.data

    sizes, files = [400_000, 50, 50, 50], []
    for index, rows in enumerate(sizes):
        start = sum(sizes[:index])
        path = tmp_path / f"part-{index:05d}.parquet"
        pq.write_table(pa.table({"row": pa.array(range(start, start + rows), pa.int64())}), path)
        files.append(str(path))
    datasets = {"train": ray.data.read_parquet(files)}
    (worker,) = ray_data_config().configure(
        datasets, world_size=1, worker_handles=None, worker_node_ids=None
    )
    for _ in range(2):  # every epoch
        rows = [
            batch["row"]
            for batch in worker["train"].iter_batches(batch_size=65_536, batch_format="numpy")
        ]
        assert np.array_equal(np.concatenate(rows), np.arange(sum(sizes)))


def test_local_ray_workers_keep_ray_trains_noise_down(ray_local) -> None:
    """`runtime.quiet_ray_worker` ran in the local Ray's workers: the placement-group cleaner
    and the autoscaling client (no autoscaler on a local Ray) log errors only."""
    import logging

    import ray

    names = (
        "ray.train.v2._internal.execution.controller.placement_group_cleaner",
        "ray.train.v2._internal.execution.scaling_policy.autoscaling_coordinator_client",
    )
    levels = ray.remote(num_cpus=0)(lambda: [logging.getLogger(n).level for n in names])
    assert ray.get(levels.remote()) == [logging.ERROR, logging.ERROR]
