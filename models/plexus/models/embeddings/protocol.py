"""The training protocol of learned embedding methods: hooks the training loop and the job call.

Plain methods (full, hashing, multiplexed, unified) train in one stage with the loop's own Adam.
Learned methods need more, and they say so through the same few hooks on `EmbeddingTables`,
so that no loop or job ever branches on a method's name:

* `extra_loss()`: a term added to the task loss every step (OptEmbed's threshold regulariser);
* `parameter_groups()`: parameters with an optimiser of their own (`ParameterGroup`: OptEmbed's
  thresholds by plain SGD), or held fixed (`optimizer="none"`), or stepped on validation batches
  (`batches=BatchSource.VALID`: DNIS's alpha); every other parameter goes to the loop's
  optimiser, unless the stage holds it fixed (`Stage.freeze_rest`);
* `after_step(context)`: called after every optimiser step, with the step's `StepContext`
  (the optimisers' state of a parameter, the planned steps; Dynamic Sparse Learning's masks);
* `stages()`: what the job runs, in order (`Stage`): `TRAIN` stages go through the training
  loop, `SEARCH` stages call `search(evaluate)` on the trained tables with a fitness function
  the pipeline provides (validation AUC of a candidate, evaluated in parallel);
* `begin_stage(stage, previous)`: carry the method's state (a found architecture) from the
  previous stage's tables into the fresh tables a `TRAIN` stage starts from;
* `figures()`: plots of the method's state (matplotlib figures) the job logs after a stage;
* `bind(model)`: the model the tables sit in, once built (`bind_model`; DSL's MLP masks).

The loop and the job collect these over every `EmbeddingTables` of a model (a DeepFM has two)
with the functions below.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from plexus.models.embeddings.base import EmbeddingTables

# A batch of candidates -> one fitness each (higher is better), e.g. validation AUC.
Evaluate = Callable[[list[Any]], list[float]]


class StageKind(str, enum.Enum):  # noqa: UP042  (str mixin: plain values in MLflow and JSON)
    TRAIN = "train"  # the training loop (early stopping on validation AUC), a best model out
    SEARCH = "search"  # `EmbeddingTables.search(evaluate)` on the previous stage's model


class StageInit(str, enum.Enum):  # noqa: UP042
    """The weights a `TRAIN` stage starts from."""

    CONTINUE = "continue"  # the previous stage's weights
    REWIND = "rewind"  # the first stage's initial weights (same seed: lottery-ticket rewinding)
    FRESH = "fresh"  # a new random draw


class BatchSource(str, enum.Enum):  # noqa: UP042
    """The batches whose loss steps a parameter group's optimiser."""

    TRAIN = "train"
    VALID = "valid"  # a validation batch drawn after each training step (bi-level search)


@dataclasses.dataclass(frozen=True)
class Stage:
    """One step of a method's job: `name` labels its folder, MLflow run and progress lines.

    `freeze_rest`: only the tables' parameter groups train in this stage, every other parameter
    of the model is held fixed (DNIS's search). `epochs`: the stage's epoch limit (None: the
    job's `train.epochs`). `keep_start`: the weights the stage starts from count as its epoch
    0, so that early stopping returns them when no epoch beats them on validation AUC (a
    fine-tune never ends worse than it started). `ignores`: keys of `embedding.options` that
    neither this stage nor any before it reads (the ones that set the budget, say): jobs that
    differ only in them share the stage's result, so a benchmark over budgets trains it once.
    """

    name: str
    kind: StageKind = StageKind.TRAIN
    init: StageInit = StageInit.CONTINUE
    freeze_rest: bool = False
    epochs: int | None = None
    keep_start: bool = False
    ignores: tuple[str, ...] = ()


SINGLE_STAGE = (Stage("train"),)
FRESH_SEED_OFFSET = 1_000_003  # a fresh stage i draws with seed + i * this (`stage_model`)


@dataclasses.dataclass(frozen=True)
class ParameterGroup:
    """Parameters that a method wants optimised apart from the rest of the model.

    `optimizer` is "sgd", "adam" or "none" (held fixed in this stage); `lr` None means the job's
    `train.lr`, `weight_decay` None the job's L2 of table parameters (`train.embedding_weight_decay`
    where set, else `train.weight_decay`): a group belongs to the tables, so the tables' own
    regularisation applies to it as it does to a plain method's rows. `batches` the batches whose
    loss steps it (training, or validation batches drawn in turn with the training ones).
    """

    name: str
    params: tuple[nn.Parameter, ...]
    optimizer: str = "adam"
    lr: float | None = None
    weight_decay: float | None = None
    batches: BatchSource = BatchSource.TRAIN

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adam", "none"):
            raise ValueError(f"parameter group {self.name!r}: optimizer must be sgd, adam or none")


def embedding_tables(model: nn.Module) -> Iterator[EmbeddingTables]:
    """Every `EmbeddingTables` module of `model`, in module order."""
    from plexus.models.embeddings.base import EmbeddingTables

    for module in model.modules():
        if isinstance(module, EmbeddingTables):
            yield module


def bind_model(model: nn.Module) -> nn.Module:
    """Call every table's `bind(model)`; the model builders do, before returning a model."""
    for tables in embedding_tables(model):
        tables.bind(model)
    return model


def extra_loss(model: nn.Module) -> torch.Tensor | None:
    """The sum of the tables' `extra_loss()` terms, or None when no table adds one."""
    terms = [t for t in (m.extra_loss() for m in embedding_tables(model)) if t is not None]
    return torch.stack(terms).sum() if terms else None


def build_optimizers(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    stage: Stage | None = None,
    parameters: Sequence[nn.Parameter] | None = None,
    table_weight_decay: float | None = None,
) -> list[torch.optim.Optimizer]:
    """The loop's optimisers: one per `ParameterGroup` of the tables, then Adam over the rest
    (none when `stage.freeze_rest`; groups with optimizer "none" get none either). `parameters`:
    the ones the loop optimises (default all of `model`'s; sharded tables update themselves).
    `table_weight_decay` (None: `weight_decay`): the L2 of the tables' own parameters in that
    Adam, apart from the dense network's (FuxiCTR's `embedding_regularizer` beside its
    `net_regularizer`: embeddings of sparse ids overfit at other strengths than the MLP).

    The order is fixed (groups in module order, the main optimiser last), so checkpoints of
    the optimisers' states restore into the same list. Each optimiser's param group records
    its `batches` (`optimizer_batches` reads it back).
    """
    optimizers: list[torch.optim.Optimizer] = []
    grouped: set[int] = set()
    group_decay = weight_decay if table_weight_decay is None else table_weight_decay
    for tables in embedding_tables(model):
        for group in tables.parameter_groups():
            grouped.update(id(p) for p in group.params)
            if group.optimizer == "none":
                continue
            options = {
                "lr": lr if group.lr is None else group.lr,
                "weight_decay": group_decay if group.weight_decay is None else group.weight_decay,
            }
            kind = torch.optim.SGD if group.optimizer == "sgd" else torch.optim.Adam
            optimizers.append(kind(list(group.params), **options))
            optimizers[-1].param_groups[0]["batches"] = BatchSource(group.batches).value
    candidates = model.parameters() if parameters is None else parameters
    rest = [p for p in candidates if id(p) not in grouped]
    if rest and not (stage is not None and stage.freeze_rest):
        optimizers.append(
            torch.optim.Adam(
                _decay_groups(model, rest, table_weight_decay), lr=lr, weight_decay=weight_decay
            )
        )
    return optimizers


def _decay_groups(
    model: nn.Module, params: list[nn.Parameter], table_weight_decay: float | None
) -> list[nn.Parameter] | list[dict[str, Any]]:
    """`params` as they are, or split in two Adam param groups (tables' parameters with
    `table_weight_decay`, the rest with the optimiser's default) when a table decay is set."""
    if table_weight_decay is None:
        return params
    owned = {id(p) for tables in embedding_tables(model) for p in tables.parameters()}
    tables = [p for p in params if id(p) in owned]
    dense = [p for p in params if id(p) not in owned]
    groups = [{"params": tables, "weight_decay": table_weight_decay}, {"params": dense}]
    return [g for g in groups if g["params"]]


def optimizer_batches(optimizer: torch.optim.Optimizer) -> BatchSource:
    """The batches that step `optimizer` (as `build_optimizers` recorded them)."""
    return BatchSource(optimizer.param_groups[0].get("batches", BatchSource.TRAIN.value))


def stage_named(model: nn.Module, name: str | None) -> Stage | None:
    """The model's stage called `name` (None for a single-stage model or no name)."""
    return next((s for s in model_stages(model) if s.name == name), None) if name else None


def figures(model: nn.Module) -> dict[str, Any]:
    """Every table's `figures()`: name -> matplotlib figure, to log after a stage."""
    out: dict[str, Any] = {}
    for tables in embedding_tables(model):
        out.update(tables.figures())
    return out


@dataclasses.dataclass(frozen=True)
class StepContext:
    """What an `after_step` hook sees besides its own tables, after an optimiser step.

    `optimizer_state(p)` is the state dict of the optimiser that owns parameter `p` (Adam's
    `exp_avg`/`exp_avg_sq`, SGD's `momentum_buffer`; empty before its first step), to be edited
    in place; `total_steps` the optimiser steps this training stage plans (epochs x batches
    per epoch of a worker), None when the caller cannot know it. Gradients of the step are
    still on `.grad`.
    """

    optimizer_state: Callable[[nn.Parameter], dict[str, Any]]
    total_steps: int | None = None


def after_step(
    model: nn.Module,
    optimizers: Sequence[torch.optim.Optimizer] = (),
    *,
    total_steps: int | None = None,
) -> None:
    """Call every table's `after_step` with a `StepContext` over `optimizers`."""
    owner = {id(p): o for o in optimizers for g in o.param_groups for p in g["params"]}

    def optimizer_state(param: nn.Parameter) -> dict[str, Any]:
        optimizer = owner.get(id(param))
        return {} if optimizer is None else optimizer.state[param]

    context = StepContext(optimizer_state, total_steps)
    for tables in embedding_tables(model):
        tables.after_step(context)


def training_step(
    model: nn.Module,
    task_loss: torch.Tensor,
    optimizers: Sequence[torch.optim.Optimizer],
    *,
    step: Sequence[torch.optim.Optimizer] | None = None,
    total_steps: int | None = None,
) -> None:
    """One optimiser step under the protocol: the tables' `extra_loss` added to `task_loss`,
    every optimiser's gradients cleared, backward, the `step` optimisers (default: all) stepped,
    then the tables' `after_step` over them."""
    extra = extra_loss(model)
    loss = task_loss if extra is None else task_loss + extra
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    loss.backward()
    stepped = optimizers if step is None else step
    for optimizer in stepped:
        optimizer.step()
    after_step(model, stepped, total_steps=total_steps)


def model_stages(model: nn.Module) -> tuple[Stage, ...]:
    """The stages of the model's learned tables. Several modules may define them when they
    define the same ones (the two towers of a retrieval model, one method on both): each
    stage then begins on every module at once."""
    staged = {t.stages() for t in embedding_tables(model)} - {SINGLE_STAGE}
    if len(staged) > 1:
        raise ValueError(
            "the embedding-tables modules of a model define different stages: "
            f"{sorted([s.name for s in stages] for stages in staged)}"
        )
    return staged.pop() if staged else SINGLE_STAGE


def stage_model(
    build: Callable[[], nn.Module],
    seed: int,
    stage: Stage,
    index: int,
    previous: dict[str, torch.Tensor] | None,
) -> nn.Module:
    """The model stage `index` starts from: `build()` drawn from `seed` (a `FRESH` training
    stage: `seed + index * FRESH_SEED_OFFSET`, so that its draw differs from the first stage's),
    given the previous stage's weights unless it starts otherwise (`Stage.init`), then every
    table's `begin_stage` with the previous stage's model (its found architecture, say)."""
    fresh = stage.kind is StageKind.TRAIN and stage.init is StageInit.FRESH
    torch.manual_seed(seed + (index * FRESH_SEED_OFFSET if fresh else 0))
    model = build()
    before = None
    if previous is not None:
        before = build()
        before.load_state_dict(previous)
        if stage.kind is StageKind.SEARCH or stage.init is StageInit.CONTINUE:
            model.load_state_dict(previous)
    begin_stage(model, stage, before)
    return model


def begin_stage(model: nn.Module, stage: Stage, previous: nn.Module | None) -> None:
    """Let each table of `model` take over its state from the same table of `previous`."""
    mine = list(embedding_tables(model))
    theirs: Sequence[EmbeddingTables | None] = (
        list(embedding_tables(previous)) if previous is not None else [None] * len(mine)
    )
    for table, before in zip(mine, theirs, strict=True):
        table.begin_stage(stage, before)


@dataclasses.dataclass(frozen=True)
class ModuleCandidate:
    """A search candidate of one tables module: `module` is its index in `embedding_tables`."""

    module: int
    candidate: Any


def search(model: nn.Module, stage: Stage, evaluate: Evaluate) -> dict[str, float]:
    """Run a `SEARCH` stage on the model's staged tables; returns its summary metrics.

    Each staged module searches in turn (the two towers: the user tables', then the item
    tables'), the others holding what they have, found architectures included; `evaluate` gets
    `ModuleCandidate`s, which `apply_candidate` gives to their own module. With several staged
    modules each metric is prefixed with the module's name in the model (`user_tables.`)."""
    names = {id(m): name for name, m in model.named_modules()}
    staged = [(k, t) for k, t in enumerate(embedding_tables(model)) if stage in t.stages()]
    summary: dict[str, float] = {}
    for k, tables in staged:

        def scoped(candidates: list[Any], k: int = k) -> list[float]:
            return evaluate([ModuleCandidate(k, c) for c in candidates])

        prefix = f"{names[id(tables)]}." if len(staged) > 1 else ""
        summary.update({prefix + key: v for key, v in tables.search(stage, scoped).items()})
    return summary


def apply_candidate(model: nn.Module, candidate: Any) -> None:
    """Give the staged tables of `model` a search candidate (inside a fitness evaluation): a
    `ModuleCandidate` to its module, anything else to every staged module."""
    if isinstance(candidate, ModuleCandidate):
        list(embedding_tables(model))[candidate.module].apply_candidate(candidate.candidate)
        return
    for tables in embedding_tables(model):
        if tables.stages() != SINGLE_STAGE:
            tables.apply_candidate(candidate)


def embedding_bytes(model: nn.Module) -> int:
    """Serving bytes of every embedding table of `model` (compact forms, index arrays included)."""
    return sum(t.num_bytes() for t in embedding_tables(model))
