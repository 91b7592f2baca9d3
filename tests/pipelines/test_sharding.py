"""TorchRec sharding of the embedding tables on 2 real gloo processes: the sharded model computes
what the unsharded one does, its shards round-trip through a checkpoint, and the driver
assembles the full tables from every worker's pieces."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

pytestmark = pytest.mark.slow

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _build(method: str):
    from plexus.models.backbones import Backbone, ModelConfig, build_ctr_model
    from plexus.models.embeddings import EmbeddingConfig
    from tiny_ctr_data import tiny_spec

    options = {"full": {}, "multiplexed": {"budget": 0.5, "probes": 2}, "unified": {"budget": 0.5}}
    torch.manual_seed(0)
    embedding = EmbeddingConfig(method=method, dim=8, **options[method])
    return build_ctr_model(
        ModelConfig(backbone=Backbone.DEEPFM, hidden=(16,)), embedding, tiny_spec()
    )


def _worker(rank: int, world: int, port: int, method: str, kind: str, out: str) -> None:
    import torch.distributed as dist
    from plexus.pipelines.train import sharding
    from tiny_ctr_data import random_kjt

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    reference = _build(method)
    config = sharding.ShardingConfig(types=(kind,), column_width=4)  # dim 8: 2 column shards
    sharded = sharding.shard_model(_build(method), config, lr=0.05, weight_decay=0.0)
    dense = torch.randn(6, 2, generator=torch.Generator().manual_seed(rank))
    kjt = random_kjt(6, seed=10 + rank)
    with torch.no_grad():
        same = torch.allclose(sharded.module(dense, kjt), reference(dense, kjt), atol=1e-6)
    # one training step, then the worker's shards go to a checkpoint file
    loss = sharded(dense, kjt).sum()
    loss.backward()
    folder = Path(out)
    sharding.write_shards(folder, rank, {"best": sharding.local_pieces(sharded)})
    pieces = sharding.local_pieces(sharded)
    with torch.no_grad():  # spoil the shards, then restore them from the file
        for value in sharded.state_dict().values():
            if hasattr(value, "local_shards"):
                for shard in value.local_shards():
                    shard.tensor.fill_(7.0)
    sharding.restore_pieces(sharded, sharding.read_shards(folder, rank)["best"])
    restored = sharding.local_pieces(sharded)
    equal = all(
        torch.equal(a[1], b[1])
        for key in pieces
        for a, b in zip(pieces[key], restored[key], strict=True)
    )
    dist.barrier()
    if rank == 0:
        full = sharding.assemble_state(folder, world, "best", sharding.dense_state(sharded.module))
        counts: dict[str, int] = {}
        for r in range(world):
            for key, items in sharding.read_shards(folder, r)["best"].items():
                counts[key] = counts.get(key, 0) + len(items)
        result = {"same": same, "equal": equal, "full": full, "pieces": max(counts.values())}
        torch.save(result, folder / "result.pt")
    dist.destroy_process_group()


@pytest.mark.parametrize(
    ("method", "kind"),
    [("full", "table_wise"), ("multiplexed", "column_wise"), ("unified", "table_wise")],
)
def test_sharded_tables_compute_like_unsharded_ones_and_round_trip(
    tmp_path: Path, method: str, kind: str
) -> None:
    mp.spawn(_worker, args=(2, _free_port(), method, kind, str(tmp_path)), nprocs=2)
    result = torch.load(tmp_path / "result.pt", weights_only=False)
    assert result["same"], "the sharded model's logits differ from the unsharded model's"
    assert result["equal"], "restored shards differ from the saved ones"
    assert result["pieces"] == (2 if kind == "column_wise" else 1)  # a table in 2 column shards
    model = _build(method)
    full = result["full"]
    assert set(full) == set(model.state_dict())
    model.load_state_dict(full)  # every table is whole again, at its full shape
    trained = [k for k in full if ".ebc." in k and not k.startswith("first_order")]
    assert trained and all(
        not torch.equal(full[k], _build(method).state_dict()[k]) for k in trained
    )
