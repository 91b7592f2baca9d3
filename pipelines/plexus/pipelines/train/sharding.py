"""Embedding tables sharded over Ray Train workers with TorchRec's `DistributedModelParallel`.

With `train.workers > 1` the training loop calls `shard_model`: every `EmbeddingBagCollection`
of the model (full, hashing, multiplexed and unified tables are EBCs) is sharded over the
workers, the dense part is data parallel (DDP), on gloo for CPU and nccl for GPU (the process
group Ray Train sets up). Choices and their reasons:

* **Plans.** TorchRec's planner picks, per table, among `train.sharding.types` (table-wise and
  column-wise on CPU; row-wise and table-row-wise exist in TorchRec 1.8 for CUDA only), unless
  `train.sharding.plan` fixes a table (`"embeddings.ebc.t_user": table_wise`). Each collection
  is planned on its own: a backbone's first-order tables reuse the field tables' names, and the
  planner's constraints are keyed by table name.
* **Kernels and optimiser.** TorchRec shards tables only with FBGEMM's fused kernels, which
  update a table inside the backward pass with their own optimiser. FBGEMM has exact (row-wise)
  Adagrad and SGD on CPU, Adam only on GPU, so sharded tables train with
  `train.sharding.optimizer` (row-wise Adagrad by default, the DLRM/TorchRec choice for
  embeddings) at `train.sharding.lr`; the dense part keeps the job's Adam.
* **Replicated tables.** FBGEMM's kernels need widths divisible by 4: the width-1 first-order
  tables of LR, FM and DeepFM stay replicated (1/dim of the field tables' size). Learned methods
  (OptEmbed, DNIS, DSL, magnitude pruning) edit their tables between steps (masks, thresholds,
  their own optimisers), which the fused kernels do not expose: their models are replicated
  whole with DDP (`replication_reason` says why, and the job prints it).
* **Checkpoints.** No worker ever holds another's shards: each writes its own pieces
  (`shard-<rank>.pt`: weights, best weights and fused optimiser state, with their offsets in
  the full tensor), rank 0 also the dense state (`state.pt`); Ray Train merges the workers'
  files into one checkpoint folder. A restarted worker reads back its own pieces (mmap), and the
  driver assembles the full state with `assemble_state` for the test evaluation and the export.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from plexus.models.embeddings import protocol
from plexus.platform.errors import ConfigError, PlexusError
from torch import nn

SHARD_FILE = "shard-{rank}.pt"
CPU_TYPES = ("table_wise", "column_wise", "table_column_wise")
GPU_ONLY_TYPES = ("row_wise", "table_row_wise")
# `train.sharding.optimizer` -> FBGEMM's `EmbOptimType` member
_OPTIMIZERS = {
    "rowwise_adagrad": "EXACT_ROWWISE_ADAGRAD",
    "adagrad": "EXACT_ADAGRAD",
    "sgd": "EXACT_SGD",
    "adam": "ADAM",
}

Pieces = dict[str, list[tuple[tuple[int, ...], torch.Tensor]]]  # key -> [(offsets, tensor)]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ShardingConfig:
    """`train.sharding`: how the tables are sharded when `train.workers > 1`.

    `types`: the sharding types the planner may choose from (on CPU those of `CPU_TYPES`);
    `plan`: a type fixed per table, keyed `<collection path>.<table>` (e.g.
    `embeddings.ebc.t_user`); `column_width`: the width of column-wise shards; `optimizer` and
    `lr`: the sharded tables' fused optimiser (`adam` needs a GPU), `lr` 0 meaning the job's
    `train.lr`.
    """

    types: tuple[str, ...] = CPU_TYPES
    plan: dict[str, str] = dataclasses.field(default_factory=dict, hash=False)
    column_width: int = 0  # width of column-wise shards (a multiple of 4); 0: TorchRec's
    optimizer: str = "rowwise_adagrad"
    # Row-wise Adagrad at 0.01 and 0.02 came within 0.011 test AUC of 1-worker Adam (20k
    # synthetic rows, DeepFM); at 0.05 and 0.1 it fell 0.06 and 0.14 short.
    lr: float = 0.01

    def __post_init__(self) -> None:
        known = CPU_TYPES + GPU_ONLY_TYPES
        for key, kinds in (("types", self.types), ("plan", tuple(self.plan.values()))):
            bad = [k for k in kinds if k not in known]
            if bad:
                raise ConfigError(
                    f"train.sharding.{key}: unknown sharding type {bad[0]!r}; "
                    f"use {', '.join(known)}"
                )
        if not self.types:
            raise ConfigError("train.sharding.types must name at least one sharding type")
        if self.optimizer not in _OPTIMIZERS:
            raise ConfigError(
                f"train.sharding.optimizer={self.optimizer!r}: use one of {', '.join(_OPTIMIZERS)}"
            )
        if self.column_width < 0 or self.column_width % 4:
            raise ConfigError(
                f"train.sharding.column_width={self.column_width}: use 0 (TorchRec's choice) or "
                "a positive multiple of 4 (FBGEMM's kernels need widths divisible by 4)"
            )
        if self.lr < 0:
            raise ConfigError(f"train.sharding.lr must be >= 0, got {self.lr}")

    def types_for(self, table: str) -> list[str]:
        """The sharding types the planner may give `table` (`<collection path>.<table>`)."""
        return [self.plan[table]] if table in self.plan else list(self.types)


def replication_reason(model: nn.Module) -> str | None:
    """Why `model` cannot be sharded (its tables are replicated instead), or None."""
    for tables in protocol.embedding_tables(model):
        if not getattr(tables, "shards_through_torchrec", False):
            return (
                f"{type(tables).__name__} edits its tables between optimiser steps (masks, "
                "thresholds or optimisers of its own), which TorchRec's fused sharded kernels "
                "do not expose"
            )
    return None


def shard_model(model: nn.Module, config: ShardingConfig, *, lr: float, weight_decay: float) -> Any:
    """`model` with its embedding collections sharded over the process group: a
    `DistributedModelParallel` holding this worker's shards, initialised from `model`'s weights.

    Collective: every worker calls it, with the same model and config.
    """
    import torch.distributed as dist
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.planner import (
        EmbeddingShardingPlanner,
        ParameterConstraints,
        Topology,
    )
    from torchrec.distributed.types import ShardingPlan

    device = torch.device("cuda", torch.cuda.current_device()) if _on_gpu() else torch.device("cpu")
    if config.optimizer == "adam" and device.type == "cpu":
        raise ConfigError(
            "train.sharding.optimizer=adam: FBGEMM's fused kernels have Adam on GPU only; on CPU "
            "use rowwise_adagrad, adagrad or sgd"
        )
    sharder = EmbeddingBagCollectionSharder(
        fused_params=_fused_params(config, lr=config.lr or lr, weight_decay=weight_decay)
    )
    world = dist.get_world_size()
    plans = {}
    for path, ebc in _collections(model):
        if not _fused_widths(ebc):
            continue  # not in the plan: a plain module, replicated by DDP
        constraints = {
            table.name: ParameterConstraints(
                sharding_types=config.types_for(f"{path}.{table.name}"),
                compute_kernels=["fused"],
                min_partition=config.column_width or None,
            )
            for table in ebc.embedding_bag_configs()
        }
        planner = EmbeddingShardingPlanner(
            topology=Topology(world_size=world, compute_device=device.type),
            constraints=constraints,
        )
        with _quiet_torchrec():
            plans[path] = planner.collective_plan(ebc, [sharder], dist.group.WORLD).plan[""]
    weights = dict(model.state_dict())
    with _quiet_torchrec():
        sharded = DistributedModelParallel(
            model, device=device, plan=ShardingPlan(plans), sharders=[sharder]
        )
    sharded.load_state_dict(dict(weights))  # sharded kernels start from their own init on CPU
    return sharded


def describe_plan(sharded: Any) -> str:
    """One line per embedding collection: how many tables went where, or that it is
    replicated (every table of the collection is replicated if one cannot be fused)."""
    from collections import Counter

    lines = []
    for path, module_plan in sharded.plan.plan.items():
        kinds = Counter(f"{o.sharding_type} on ranks {o.ranks}" for o in module_plan.values())
        parts = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
        lines.append(f"  {path}: {len(module_plan)} tables: {parts}")
    for path, ebc in _collections(sharded.module):  # the ones left unsharded
        widths = sorted({t.embedding_dim for t in ebc.embedding_bag_configs()})
        lines.append(
            f"  {path}: {len(ebc.embedding_bag_configs())} tables replicated (width "
            f"{widths}: FBGEMM's fused kernels need widths divisible by 4)"
        )
    return "\n".join(lines)


def held_table_bytes(module: nn.Module) -> int:
    """Bytes of embedding-table weights this worker holds: its own shards of the sharded
    tables and the whole of the replicated ones."""
    total = 0
    for key, value in module.state_dict().items():
        if ".embedding_bags." in key:
            tensors = [s.tensor for s in value.local_shards()] if _is_sharded(value) else [value]
            total += sum(t.numel() * t.element_size() for t in tensors)
    return total


def dense_parameters(sharded: Any) -> list[nn.Parameter]:
    """The parameters the job's own optimiser steps: all but the fused (sharded) tables'."""
    fused = {id(p) for p in sharded.fused_optimizer.params.values()}
    return [p for p in sharded.parameters() if id(p) not in fused]


def dense_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """`module.state_dict()` without the sharded tensors (the replicated part, cloned)."""
    return {k: v.detach().clone() for k, v in module.state_dict().items() if not _is_sharded(v)}


def local_pieces(sharded: Any, *, optimizer: bool = True) -> Pieces:
    """This worker's shards (cloned): `model/<key>` weights and, with `optimizer`,
    `optimizer/<key>/<state>` fused optimiser state, each as (offsets, tensor) pieces."""
    return {key: _pieces_of(value) for key, value in _sharded_tensors(sharded, optimizer)}


def restore_pieces(sharded: Any, pieces: Pieces, *, optimizer: bool = True) -> None:
    """Copy saved `local_pieces` back into this worker's shards (same plan); `optimizer`: the
    optimiser's sharded state too (pieces saved with it)."""
    for key, value in _sharded_tensors(sharded, optimizer=optimizer):
        _copy_into(value, pieces, key)


def write_shards(folder: Path, rank: int, pieces: dict[str, Pieces]) -> None:
    """This worker's part of a checkpoint (`pieces`: e.g. {"current": ..., "best": ...})."""
    torch.save(pieces, folder / SHARD_FILE.format(rank=rank))


def read_shards(folder: Path, rank: int) -> dict[str, Pieces]:
    path = folder / SHARD_FILE.format(rank=rank)
    try:
        return torch.load(path, weights_only=False, mmap=True)
    except FileNotFoundError as exc:
        raise PlexusError(f"checkpoint {folder} lacks {path.name}; it is incomplete") from exc


def assemble_state(folder: Path, ranks: int, part: str, dense: dict[str, Any]) -> dict[str, Any]:
    """The full model state dict of checkpoint `folder`: `dense` (the replicated part rank 0
    saved) plus the `part` ("current" or "best") weights of every worker's shards."""
    full: dict[str, Any] = dict(dense)
    pieces: dict[str, list[tuple[tuple[int, ...], torch.Tensor]]] = {}
    for rank in range(ranks):
        for key, items in read_shards(folder, rank)[part].items():
            if key.startswith("model/"):
                pieces.setdefault(key.removeprefix("model/"), []).extend(items)
    for key, items in pieces.items():
        dims = range(items[0][1].dim())
        shape = [max(offsets[d] + t.shape[d] for offsets, t in items) for d in dims]
        tensor = torch.zeros(shape, dtype=items[0][1].dtype)
        for offsets, piece in items:
            tensor[_slices(offsets, piece.shape)] = piece
        full[key] = tensor
    return full


def _sharded_tensors(sharded: Any, optimizer: bool) -> Iterator[tuple[str, Any]]:
    """This worker's sharded tensors, keyed as in `local_pieces`: `model/<key>` weights, then
    (with `optimizer`) `optimizer/<key>/<state>` fused optimiser state."""
    for key, value in sharded.state_dict().items():
        if _is_sharded(value):
            yield f"model/{key}", value
    if optimizer:
        for key, states in sharded.fused_optimizer.state_dict()["state"].items():
            for name, value in states.items():
                if _is_sharded(value):
                    yield f"optimizer/{key}/{name}", value


def _pieces_of(value: Any) -> list[tuple[tuple[int, ...], torch.Tensor]]:
    return [
        (tuple(s.metadata.shard_offsets), s.tensor.detach().clone()) for s in value.local_shards()
    ]


def _copy_into(value: Any, pieces: Pieces, key: str) -> None:
    saved = dict(pieces.get(key, []))
    for shard in value.local_shards():
        offsets = tuple(shard.metadata.shard_offsets)
        if offsets not in saved or saved[offsets].shape != shard.tensor.shape:
            raise PlexusError(
                f"checkpoint shard {key} at {offsets} does not match this worker's plan; "
                "the sharding plan changed since the checkpoint: rerun with --force"
            )
        with torch.no_grad():
            shard.tensor.copy_(saved[offsets])


def _slices(offsets: tuple[int, ...], shape: torch.Size) -> tuple[slice, ...]:
    return tuple(slice(o, o + s) for o, s in zip(offsets, shape, strict=True))


def _is_sharded(value: Any) -> bool:
    return hasattr(value, "local_shards")


@contextlib.contextmanager
def _quiet_torchrec() -> Iterator[None]:
    """TorchRec and FBGEMM log a line per table and kernel while sharding (planner notes,
    FBGEMM's "[TBE=...]" lines through the root logger) and warn about DDP arguments they pass
    themselves: none of it is actionable for a Plexus user, so it is held back meanwhile."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    for name in ("torchrec", "fbgemm_gpu"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
    try:
        yield
    finally:
        root.setLevel(level)


def _on_gpu() -> bool:
    import torch.distributed as dist

    return torch.cuda.is_available() and dist.get_backend() == "nccl"


def _fused_params(config: ShardingConfig, *, lr: float, weight_decay: float) -> dict[str, Any]:
    from fbgemm_gpu.split_embedding_configs import EmbOptimType

    kind = getattr(EmbOptimType, _OPTIMIZERS[config.optimizer])
    return {"optimizer": kind, "learning_rate": lr, "eps": 1e-8, "weight_decay": weight_decay}


def _fused_widths(ebc: Any) -> bool:
    """Whether FBGEMM's fused kernels can hold every table of `ebc` (widths divisible by 4)."""
    return all(t.embedding_dim % 4 == 0 for t in ebc.embedding_bag_configs())


def unknown_plan_keys(model: nn.Module, config: ShardingConfig) -> Iterator[str]:
    """Keys of `train.sharding.plan` naming no table of `model`."""
    tables = {
        f"{path}.{t.name}" for path, m in _collections(model) for t in m.embedding_bag_configs()
    }
    return (k for k in config.plan if k not in tables)


def _collections(module: nn.Module) -> Iterator[tuple[str, Any]]:
    """(path, collection) of every unsharded `EmbeddingBagCollection` in `module`."""
    from torchrec import EmbeddingBagCollection

    for path, child in module.named_modules():
        if type(child) is EmbeddingBagCollection:
            yield path, child
