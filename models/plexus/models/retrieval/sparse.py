"""Sparse gradients for any embedding method's lookups, and the retrieval optimisers.

Retrieval steps touch a few thousand rows of tables with tens of thousands: a dense table
gradient (zeroed, filled, then a dense Adam pass over every row) costs more than the rest of
the step. `EmbeddingTables.forward_padded` looks rows up with `F.embedding`; inside
`sparse_lookups()` every such call gets `sparse=True`, so the weights receive sparse COO
gradients, whatever the method (full, hashed, shared), and `SparseAdam` updates only the rows
a step used, as `nn.Embedding(sparse=True)` did before the towers moved onto the tables.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from plexus.models.embeddings.protocol import BatchSource, Stage, embedding_tables
from plexus.platform.errors import ConfigError
from torch import nn
from torch.overrides import TorchFunctionMode


class sparse_lookups(TorchFunctionMode):  # noqa: N801  (used as a context manager)
    """Inside this context `F.embedding` gives sparse weight gradients; `weights` records every
    weight looked up (by id), so the caller knows which parameters get sparse gradients."""

    def __init__(self) -> None:
        super().__init__()
        self.weights: dict[int, torch.Tensor] = {}

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = dict(kwargs or {})
        if func is F.embedding:
            kwargs["sparse"] = True
            weight = args[1] if len(args) > 1 else kwargs["weight"]
            self.weights[id(weight)] = weight
        return func(*args, **kwargs)


def retrieval_optimizers(
    model: nn.Module,
    probe: sparse_lookups,
    *,
    lr: float,
    dense_tables: bool = False,
    stage: Stage | None = None,
) -> list[torch.optim.Optimizer]:
    """The optimisers of a retrieval model, in a fixed order (checkpoints restore into it):
    one per `ParameterGroup` the embedding tables ask for (the training protocol; "none"
    groups are held fixed; each records its `batches`, as `protocol.build_optimizers` does),
    then `SparseAdam` over the weights `probe` saw looked up, then Adam over the rest, unless
    the stage holds the rest fixed (`Stage.freeze_rest`: DNIS's search). `dense_tables`: the
    lookups ran outside `probe` (dense gradients), so the tables go to that Adam too, fused
    (one kernel over all tensors: 3x faster on whole tables than the per-tensor loop)."""
    optimizers: list[torch.optim.Optimizer] = []
    taken: set[int] = set()
    looked_up = set() if dense_tables else set(probe.weights)
    for tables in embedding_tables(model):
        for group in tables.parameter_groups():
            taken.update(id(p) for p in group.params)
            if group.optimizer == "none":
                continue
            if any(id(p) in looked_up for p in group.params):
                raise ConfigError(
                    f"embedding.method={tables.config.method.value}: its parameter group "
                    f"{group.name!r} holds weights looked up with sparse gradients, which its "
                    f"{group.optimizer} optimiser cannot step; look them up with gather_rows"
                )
            kind = torch.optim.SGD if group.optimizer == "sgd" else torch.optim.Adam
            options: dict[str, Any] = {"lr": lr if group.lr is None else group.lr}
            if group.weight_decay is not None:
                options["weight_decay"] = group.weight_decay
            optimizers.append(kind(list(group.params), **options))
            optimizers[-1].param_groups[0]["batches"] = BatchSource(group.batches).value
    if stage is not None and stage.freeze_rest:
        return optimizers
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in taken]
    sparse = [p for p in params if id(p) in looked_up]
    dense = [p for p in params if id(p) not in looked_up]
    if sparse:
        optimizers.append(torch.optim.SparseAdam(sparse, lr=lr))
    if dense:
        optimizers.append(torch.optim.Adam(dense, lr=lr, fused=dense_tables or None))
    return optimizers
