"""Dynamic Sparse Learning (Wang et al., WSDM 2024): sparse embedding tables trained from
scratch at a fixed number of non-zeros, over any base.

    embedding: {method: dsl, dim: 16, options: {density: 0.5}}                   # full tables
    embedding: {method: dsl, dim: 16, options: {byte_budget: 0.25}}              # 1/4 of the bytes
    embedding: {method: dsl, dim: 8, budget: 0.125, chunks: 2, options: {base: unified}}

The method (Sec. 3 of the paper; official code: github.com/shuyao-wang/DSL, `*/utils/core.py`):

* Each table of the base (per-field tables, or the shared tables of a unified or multiplexed
  base) starts from a random mask at the target density, uniform per tensor. Here exactly
  `round(density * rows * dim)` positions are drawn (the official code draws each position
  with probability `density`, so the count only matches on average).
* After every optimiser step the mask is re-applied to the weights and to the optimiser's
  state (`sparse_storage.MaskedTables.after_step`): Adam's moments too. The official code
  masks only SGD's `momentum_buffer` and leaves Adam's `exp_avg`/`exp_avg_sq` dense, so a
  masked weight keeps a running momentum; the paper's sparse training has none.
* Every `delta_t` steps, per tensor: prune the `ceil(zeta * nnz)` active weights of smallest
  magnitude and grow as many inactive positions with the largest gradient magnitude of the
  current batch (still on `.grad` after the step); grown weights and their moments start at
  zero. The number of non-zeros never changes, so the byte budget holds throughout training.
  `zeta` decays from `zeta_start` (0.5) to `zeta_end` (0.005) on a cosine over the planned
  steps, as the official `CosineDecay` (the learning-rate cosine of `torch.optim` over all
  iterations). Just-pruned positions may be grown again at once, as in the official code.
* Beyond the paper, `update_until` (RigL's `T_end`, Evci et al. 2020, Sec. 3: 0.75 there):
  the masks are pruned and grown only during that share of the planned steps, and `zeta`'s
  decay spans it; then they stay fixed. Late updates grow positions at zero when the learning
  rate has decayed, so they may not relearn what was pruned. The default 1.0 is the paper's;
  0.75 gave the same Gowalla figures as 1.0 (README, "DSL on the retrieval towers").
* Options of the official code: `prune: taylor` (`(w * g)^2`, its `Taylor_FO`) and
  `grow: random`. Its `momentum` growth is not offered: with Adam's moments masked (above)
  the momentum of an inactive position is one step's gradient scaled to its sign.
* Beyond the paper, `grow: accumulated`: the largest |sum of the gradients since the last
  update| (every position's gradient summed over the `delta_t` steps, in a table-sized buffer
  that each step adds its gradient to and each update clears). It is close to what the
  official momentum growth reads (SGD's momentum, a decaying sum of past gradients) without
  keeping momentum at masked positions, and it matters for sparse gradients: one batch
  touches a few percent of a retrieval table's rows (Gowalla: 1,024 of 29,858 users), so the
  current-batch rule grows most positions at random (below), while `delta_t` batches cover
  most rows. The sums are not
  checkpointed: a resumed run starts its window at the resume.
* Beyond the paper, `scope: global`: each update prunes the `ceil(zeta * nnz)` smallest
  weights among all tables' non-zeros and grows as many where the gradient is largest in any
  table (`prune_and_grow_global`; each table keeps its largest weight), so the non-zeros move to
  the fields that need them, as global magnitude pruning allots them, while their total stays
  fixed. The paper sparsifies two tables (MF/LightGCN users and items) at one density; a CTR
  model has a table per field, from a few rows to most of the vocabulary, and one density for
  all starves the small, informative ones at low budgets. A model with several table modules
  (the retrieval towers: users and items) pools all of them: the last module in the model's
  order updates every module's masks (`bind`), after the others' steps. With sparse gradients
  the positions no step of the window touched are grown after the rest, at random, as per tensor.
  The count of non-zeros is what stays fixed: the stored bytes move a little with each table's
  share of the index and pointers (`num_bytes()` counts them as stored).
* Beyond the paper, `granularity: row`: the tables' non-zeros are whole rows (the network's
  weights stay per position). Prune drops the active rows of smallest L2 norm (`taylor`: sum
  of (w g)^2), growth takes the inactive rows of largest gradient norm, rows without a gradient
  after them in random order; each update moves `ceil(zeta * active rows)` rows, and the
  budget is rounded down to whole rows. An id then has its full embedding or looks up zeros,
  as an out-of-vocabulary id would. Per position, at 1/4 of the bytes on the 5M-row synthetic
  set the large id tables ended at ~3 of 16 coordinates a row, grown from few examples, and
  scored 0.0033 below the dense model; whole rows with `grow: accumulated` (whose window sums
  favour frequent ids) 0.0008 below it over three seeds (README, "Whole rows close the gap at
  1/4"). On MovieLens-1M, where every id is frequent, whole rows do worse than positions.

`delta_t` defaults to a twentieth of the planned steps: the official 2,000-3,000 steps come from
runs of 10^5-10^6 steps (hundreds of updates of the mask); jobs here take hundreds to thousands.
The tables are stored and served row-compressed (`sparse_storage`: blocked CSR, or a bitmap per
row, whichever is smaller): `num_bytes()` counts values, indices and pointers, and
`byte_budget` picks the density that fits those bytes.
`sparsify_mlp: true` sparsifies the network too (the paper trains the whole model sparse): every
`nn.Linear` weight of the model outside the embedding tables (DeepFM's MLP, DCN-v2's cross
and deep layers) gets a random mask at the tables' density (`bind`), re-applied after each
step with its Adam moments and pruned and grown every `delta_t` steps like a table. Biases
stay dense. The network is still stored dense: its zeros are counted, not compressed.

Sparse gradients (the retrieval towers train with `SparseAdam` on sparse COO gradients): the step
then stays row-sparse. After a step only the rows it touched (those in the gradient) are
re-masked, weights and moments; other rows did not change. Growth reads the coalesced gradient:
its largest magnitudes are among the touched rows (every other position has gradient 0), and
when those rows hold fewer inactive positions than are to be grown, the rest are drawn at random
among the zero-gradient positions (the dense rule's tie among zeros, broken at random instead
of by `topk`'s order). Only the prune-and-grow step, every `delta_t` steps, reads whole tables,
and the first step, which masks whole tables once (a model may draw the weights again after
the tables were built: the towers' N(0, init_std); a row never touched is never re-masked).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from plexus.models.embeddings import protocol
from plexus.models.embeddings.base import (
    EmbeddingConfig,
    EmbeddingMethod,
    LearnedOptions,
    coerce_base,
)
from plexus.models.embeddings.protocol import StepContext
from plexus.models.embeddings.registry import register_embedding
from plexus.models.embeddings.sparse_storage import (
    MaskedTables,
    byte_budget_row,
    check_fraction,
    mask_with_moments,
)
from plexus.platform.errors import ConfigError
from plexus.platform.feature_spec import Feature
from torch import nn

DEFAULT_DENSITY = 0.5  # the official default
DEFAULT_CYCLES = 20  # prune-and-grow updates over the planned steps when delta_t is not given
_SCHEDULES = ("cosine", "linear", "constant")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DSLConfig(LearnedOptions):
    """`embedding.options` of `method: dsl` (see the module docstring)."""

    SIZED = ("density", "byte_budget")

    base: EmbeddingMethod = EmbeddingMethod.FULL
    density: float | None = None  # non-zeros per tensor; None: from byte_budget, else 0.5
    byte_budget: float | None = None  # serving bytes / the tables' dense float32 bytes
    delta_t: int | None = None  # steps between prune-and-grow; None: planned steps / 20
    zeta_start: float = 0.5  # fraction of the non-zeros pruned (and grown) at step 0
    zeta_end: float = 0.005  # ... at the last planned step
    zeta_schedule: str = "cosine"  # or "linear", "constant" (zeta_start throughout)
    prune: str = "magnitude"  # smallest |w|; or "taylor": smallest (w * grad)^2
    grow: str = "gradient"  # largest |grad| of the current batch; "accumulated", "random"
    scope: str = "tensor"  # prune and grow per table (the paper), or over all tables: "global"
    total_steps: int | None = None  # planned steps when the training loop cannot tell
    sparsify_mlp: bool = False  # also the network's Linear weights, at the tables' density
    granularity: str = "position"  # what is pruned and grown in a table; or "row": whole rows
    update_until: float = 1.0  # share of the planned steps with updates (RigL's T_end: 0.75)

    def __post_init__(self) -> None:
        coerce_base(self, "DSL")
        if self.density is not None and self.byte_budget is not None:
            raise ConfigError(
                "embedding.options: give density or byte_budget, not both (byte_budget "
                "derives the density with the index overhead included)"
            )
        check_fraction(self.density, "embedding.options.density")
        check_fraction(self.byte_budget, "embedding.options.byte_budget")
        if not 0.0 < self.update_until <= 1.0:
            raise ConfigError(
                f"embedding.options.update_until={self.update_until} must be in (0, 1]: the "
                "share of the planned steps during which the masks are pruned and grown"
            )
        for key in ("zeta_start", "zeta_end"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"embedding.options.{key} must be in [0, 1]")
        for key, value, choices in (
            ("zeta_schedule", self.zeta_schedule, _SCHEDULES),
            ("prune", self.prune, ("magnitude", "taylor")),
            ("grow", self.grow, ("gradient", "accumulated", "random")),
            ("scope", self.scope, ("tensor", "global")),
            ("granularity", self.granularity, ("position", "row")),
        ):
            if value not in choices:
                raise ConfigError(f"embedding.options.{key}={value!r}: use one of {choices}")
        for key in ("delta_t", "total_steps"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"embedding.options.{key}={value} must be >= 1 step")

    @classmethod
    def at_budget(
        cls, base: str, budget: float, configured: Mapping[str, Any]
    ) -> tuple[float, dict[str, Any]]:
        """The benchmark's row at `budget` of the full tables' bytes (`byte_budget_row`)."""
        return byte_budget_row(base, budget)


def zeta(config: DSLConfig, step: int, total: int) -> float:
    """The share of each tensor's non-zeros replaced at `step` of `total` (Sec. 3.2: cosine
    decay from `zeta_start` to `zeta_end`)."""
    t = min(max(step / total, 0.0), 1.0)
    a, b = config.zeta_start, config.zeta_end
    if config.zeta_schedule == "cosine":
        return b + (a - b) * (1 + math.cos(math.pi * t)) / 2
    if config.zeta_schedule == "linear":
        return a + (b - a) * t
    return a


@register_embedding(EmbeddingMethod.DSL, options=DSLConfig)
class DSLTables(MaskedTables):
    """The base's tables under masks that DSL prunes and grows: `(B, sum output_dims)` out."""

    def __init__(self, config: EmbeddingConfig, features: Sequence[Feature]) -> None:
        super().__init__(config, features)
        self.options: DSLConfig = config.options
        density = self.options.density
        if density is None and self.options.byte_budget is None:
            density = DEFAULT_DENSITY
        self._setup(config.base_config(), density, self.options.byte_budget)
        rows = self.options.granularity == "row"
        if rows:  # whole rows: the count rounded down to a multiple of the dim
            dim = config.dim
            self.target_nonzeros = [max(1, n // dim) * dim for n in self.target_nonzeros]
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))
        self._mlp: list[nn.Parameter] = []  # the network's weights under masks (`bind`)
        self._grad_sums: list[torch.Tensor] = []  # `grow: accumulated`: one per masked tensor
        # `scope: global` over several modules (`bind`): every member's list of them all; the
        # last one updates them all.
        self._pool: list[DSLTables] = []
        with torch.no_grad():
            for mask, nnz in zip(self.masks(), self.target_nonzeros, strict=True):
                mask.zero_()
                if rows:
                    mask[torch.randperm(mask.shape[0])[: nnz // mask.shape[1]]] = True
                else:
                    mask.view(-1)[torch.randperm(mask.numel())[:nnz]] = True
        self.apply_masks()

    @torch.no_grad()
    def bind(self, model: nn.Module) -> None:
        """With `scope: global` and several DSL table modules in `model` (the towers), the
        last of them pools all their tables at each update. With `sparsify_mlp`: a random mask
        at the tables' density for every Linear weight of `model` outside its embedding tables
        (registered here, so checkpoints keep it)."""
        every = list(protocol.embedding_tables(model))
        pool = [t for t in every if isinstance(t, DSLTables) and t.options.scope == "global"]
        if self in pool and len(pool) > 1:
            self._pool = pool
        if not self.options.sparsify_mlp or any(getattr(t, "_mlp", None) for t in every):
            return  # off, or another table module of the model (a tower) already holds them
        tables = {id(m) for t in every for m in t.modules()}
        layers = [m for m in model.modules() if isinstance(m, nn.Linear) and id(m) not in tables]
        if not layers:
            raise ConfigError(
                "embedding.options.sparsify_mlp: this model has no network (Linear layers) to "
                "sparsify; use a backbone with one (deepfm, dcnv2) or drop the option"
            )
        sizes = [w.numel() for w in self.weights()]
        density = sum(self.target_nonzeros) / sum(sizes)
        for k, layer in enumerate(layers):
            mask = torch.zeros(layer.weight.shape, dtype=torch.bool)
            nnz = max(1, round(density * mask.numel()))
            mask.view(-1)[torch.randperm(mask.numel())[:nnz]] = True
            self.register_buffer(f"mlp_mask_{k}", mask)
            layer.weight.mul_(self.keep(mask, layer.weight))
        self._mlp = [layer.weight for layer in layers]

    def _mlp_pairs(self) -> list[tuple[nn.Parameter, torch.Tensor]]:
        return [(w, getattr(self, f"mlp_mask_{k}")) for k, w in enumerate(self._mlp)]

    def apply_masks(self, context: StepContext | None = None) -> None:
        super().apply_masks(context)
        for weight, mask in self._mlp_pairs():
            mask_with_moments(weight, self.keep(mask, weight), context)

    def total_steps(self, context: StepContext) -> int:
        total = self.options.total_steps or context.total_steps
        if total is None:
            raise ConfigError(
                "DSL's zeta schedule needs the planned training steps: this caller does not "
                "give them, so set embedding.options.total_steps"
            )
        return total

    def delta_t(self, total: int) -> int:
        """Steps between updates, given the `total` planned steps."""
        return self.options.delta_t or max(1, total // DEFAULT_CYCLES)

    def after_step(self, context: StepContext) -> None:
        if not self.sparse_gradients() or int(self.steps) == 0:
            # Dense gradients: whole tables, as the CTR loop steps; the first step of sparse
            # ones too (see the module docstring).
            self.apply_masks(context)
            if self._update_masks(context):
                self.apply_masks(context)
            return
        self.mask_touched_rows(context)
        for weight, mask in self._mlp_pairs():  # dense gradients: the whole network stepped
            mask_with_moments(weight, self.keep(mask, weight), context)
        if self._update_masks(context):
            self.apply_masks(context)  # the pruned positions: anywhere in the tables

    @torch.no_grad()
    def _update_masks(self, context: StepContext) -> bool:
        """Count the step; every `delta_t` steps prune and grow each table. True if it did."""
        self.steps += 1
        step = int(self.steps)
        total = self.total_steps(context)
        ends = self.options.update_until < 1.0  # (at 1.0, a run past its plan keeps updating)
        until = max(1, int(self.options.update_until * total)) if ends else total
        if ends and step > until:
            return False  # the masks stay as they are (`update_until`)
        if self.options.grow == "accumulated":
            self._accumulate([weight for weight, _ in self._pairs()])
        every = self.delta_t(total)
        if step % every or (self._pool and self._pool[-1] is not self):
            return False  # (a pool's other members: its last module updates them, `bind`)
        share = zeta(self.options, step, until)
        members = self._pool or [self]
        tables, network = [], []  # (weight, mask, growth gradient), read before any change
        for member in members:
            count = len(member.weights())
            for k, (weight, mask) in enumerate(member._pairs()):
                entry = (weight, mask, member._growth_gradient(k, weight))
                (tables if k < count else network).append(entry)
        if self.options.scope == "global":  # the tables as one pool; the network per tensor
            weights, masks, grads = zip(*tables, strict=True)
            prune_and_grow_global(weights, grads, masks, share, self.options, seed=step)
        else:
            for weight, mask, grad in tables:
                prune_and_grow(weight, grad, mask, share, self.options, seed=step)
        positions = dataclasses.replace(self.options, granularity="position")
        for weight, mask, grad in network:
            prune_and_grow(weight, grad, mask, share, positions, seed=step)
        for member in members:
            member._grad_sums = []  # the next window starts empty
            if member is not self:
                member.apply_masks(context)  # (this module's own: by `after_step`)
        print(  # progress, and the resolved default of delta_t (it names no config value)
            f"[dsl] prune-and-grow {step // every}/{until // every} at step {step} "
            f"(delta_t {every}): zeta {share:.3f}",
            flush=True,
        )
        return True

    def _pairs(self) -> list[tuple[nn.Parameter, torch.Tensor]]:
        """Every masked tensor and its mask: the tables, then the network's (`bind`)."""
        return [*zip(self.weights(), self.masks(), strict=True), *self._mlp_pairs()]

    def _accumulate(self, weights: list[torch.Tensor]) -> None:
        """Add this step's gradients to their sums since the last update (sparse: its rows)."""
        if not self._grad_sums:
            self._grad_sums = [torch.zeros_like(weight) for weight in weights]
        for total, weight in zip(self._grad_sums, weights, strict=True):
            grad = weight.grad
            if grad is None:
                continue
            if grad.is_sparse:  # uncoalesced COO: index_add_ sums a row's repeats
                total.index_add_(0, grad._indices()[0], grad._values())
            else:
                total.add_(grad)

    def _growth_gradient(self, k: int, weight: torch.Tensor) -> torch.Tensor:
        """What growth ranks for the k-th masked tensor: the current batch's gradient, or the
        window's sum (as a sparse gradient over its non-zero rows when the steps are sparse, so
        that positions no step touched are drawn at random, as `prune_and_grow` does)."""
        grad = weight.grad
        if self.options.grow != "accumulated":
            return grad if grad is not None else torch.zeros_like(weight)
        total = self._grad_sums[k]  # filled by this very step's `_accumulate`
        if grad is None or not grad.is_sparse:
            return total
        rows = torch.nonzero(total.abs().amax(dim=1)).squeeze(1)  # sorted, distinct
        # Built by hand: `Tensor.to_sparse(sparse_dim=1)` took seconds on a Gowalla table.
        return torch.sparse_coo_tensor(
            rows.unsqueeze(0),
            total.index_select(0, rows),
            total.shape,
            is_coalesced=True,
            check_invariants=False,
        )


def prune_and_grow(
    weight: torch.Tensor,
    grad: torch.Tensor,
    mask: torch.Tensor,
    share: float,
    options: DSLConfig,
    *,
    seed: int = 0,
) -> int:
    """One DSL update of one tensor, in place on `mask` (bool, weight's shape): drop the
    `ceil(share * nnz)` active positions of lowest score (|w|, or (w g)^2 for `taylor`), then
    activate as many inactive ones of highest |g| (or at random). Returns how many moved.
    `granularity: row`: the same over whole rows (`_prune_and_grow_rows`).

    `grad` may be a sparse COO gradient of a `(rows, dim)` table (rows of an embedding lookup
    with `sparse=True`): it is coalesced and never made dense; positions outside its rows have
    gradient 0 (see the module docstring for growth beyond its rows)."""
    generator = torch.Generator(device=weight.device).manual_seed(seed)
    if options.granularity == "row":
        return _prune_and_grow_rows([weight], [grad], [mask], share, options, generator)
    flat = mask.view(-1)
    nnz = int(flat.sum())
    count = min(math.ceil(share * nnz), nnz)
    if count == 0:
        return 0
    w = weight.detach().reshape(-1)
    if grad.is_sparse:
        return _prune_and_grow_sparse(w, grad.coalesce(), flat, count, options, generator)
    _swap(*_position_scores(w, grad.reshape(-1), options, generator), flat, count)
    return count


def prune_and_grow_global(
    weights: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    masks: Sequence[torch.Tensor],
    share: float,
    options: DSLConfig,
    *,
    seed: int = 0,
) -> int:
    """`scope: global`: one DSL update of all tables as one pool, in place on `masks`: the
    `ceil(share * nnz)` positions (or rows) of lowest score among all tables' active ones are
    dropped and as many grown where the gradient is largest in any table, so non-zeros move to
    the tables (fields) where they matter, as global magnitude pruning allots them. Each table
    keeps at least one non-zero (row). Beyond the paper (per tensor, for its two MF/LightGCN
    tables). Sparse gradients (the towers') are made dense here, once an update; the positions
    outside their rows are grown after every position with a gradient, at random, as
    `prune_and_grow` does per tensor."""
    generator = torch.Generator(device=weights[0].device).manual_seed(seed)
    if options.granularity == "row":
        return _prune_and_grow_rows(weights, grads, masks, share, options, generator, floor=True)
    w = torch.cat([x.detach().reshape(-1) for x in weights])
    g = torch.cat([(x.to_dense() if x.is_sparse else x).reshape(-1) for x in grads])
    score, gain = _position_scores(w, g, options, generator)
    if options.grow != "random" and any(x.is_sparse for x in grads):
        touched = torch.cat([_touched(x).reshape(-1) for x in grads])
        draw = torch.rand(gain.shape, generator=generator, device=gain.device)
        gain = torch.where(touched, gain, -draw)
    # Each table's largest weight is kept out of the pruning: no table is left empty.
    actives = [m.reshape(-1) for m in masks]
    parts, count = _swap_pooled(actives, score, gain, share, floor=w.abs())
    for mask, part in zip(masks, parts, strict=True):
        mask.view(-1).copy_(part)
    return count


def _touched(grad: torch.Tensor) -> torch.Tensor:
    """Where `grad` has a value (bool, its shape): a sparse gradient's rows; all of a dense one."""
    if not grad.is_sparse:
        return torch.ones(grad.shape, dtype=torch.bool, device=grad.device)
    touched = torch.zeros(grad.shape, dtype=torch.bool, device=grad.device)
    touched[grad._indices()[0]] = True
    return touched


def _swap_pooled(
    actives: Sequence[torch.Tensor],
    score: torch.Tensor,
    gain: torch.Tensor,
    share: float,
    *,
    floor: torch.Tensor | None = None,
) -> tuple[list[torch.Tensor], int]:
    """One update of several tables' entries (positions or rows) as one pool: `actives` are
    each table's flat active flags, `score` and `gain` the pool's, concatenated in that order.
    Moves `ceil(share * active)` entries (`_swap`); with `floor`, each table's active entry of
    largest `floor` is never pruned, so no table is left empty. Returns each table's new flags
    and the count moved."""
    sizes = [a.numel() for a in actives]
    flat = torch.cat(actives)
    nnz = int(flat.sum())
    count = min(math.ceil(share * nnz), nnz - (len(actives) if floor is not None else 0))
    if count > 0:
        protect = None
        if floor is not None:
            protect = _largest_per_table(torch.where(flat, floor, -1.0), sizes)
        _swap(score, gain, flat, count, protect)
    return list(flat.split(sizes)), max(count, 0)


def _largest_per_table(score: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """The flat index of the largest `score` within each table's span of `sizes`."""
    offsets = torch.tensor([0, *sizes[:-1]]).cumsum(0)
    return offsets + torch.stack([torch.argmax(part) for part in score.split(sizes)])


def _prune_and_grow_rows(
    weights: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    masks: Sequence[torch.Tensor],
    share: float,
    options: DSLConfig,
    generator: torch.Generator,
    *,
    floor: bool = False,
) -> int:
    """`granularity: row` over one or more `(rows, dim)` tables as one pool: prune the
    `ceil(share * active rows)` active rows of lowest score (the row's L2 norm, or its sum of
    (w g)^2 for `taylor`) and grow as many inactive rows of largest gradient norm; rows without a
    gradient come after those with one, in random order. A row is wholly kept or wholly zero,
    so an id either has its full embedding or looks up zeros, as an out-of-vocabulary id would,
    never a few coordinates grown from one batch's gradient. `floor`: each table keeps its
    largest row. Returns the positions moved (rows times dim)."""
    dim = masks[0].shape[1]
    scores, gains, active = [], [], []
    for weight, grad, mask in zip(weights, grads, masks, strict=True):
        w = weight.detach()
        g = grad.coalesce() if grad.is_sparse else grad
        scores.append(_row_score(w, g, options))
        gains.append(_row_gain(g, w, options, generator))
        active.append(mask[:, 0])
    score = torch.cat(scores)
    parts, count = _swap_pooled(
        active, score, torch.cat(gains), share, floor=score if floor else None
    )
    for mask, part in zip(masks, parts, strict=True):
        mask.copy_(part.unsqueeze(1).expand_as(mask))
    return count * dim


def _row_score(w: torch.Tensor, g: torch.Tensor, options: DSLConfig) -> torch.Tensor:
    """Each row's pruning score (rows,): its L2 norm, or for `taylor` its sum of (w g)^2."""
    if options.prune == "magnitude":
        return w.norm(dim=1)
    if not g.is_sparse:
        return (w * g).pow(2).sum(dim=1)
    rows = g.indices()[0]
    taylor = (w.index_select(0, rows) * g.values()).pow(2).sum(dim=1)
    return torch.zeros(w.shape[0], dtype=w.dtype, device=w.device).index_copy_(0, rows, taylor)


def _row_gain(
    g: torch.Tensor, w: torch.Tensor, options: DSLConfig, generator: torch.Generator
) -> torch.Tensor:
    """Each row's growth score (rows,): its gradient's L2 norm, or at random; rows of zero
    gradient get a random value below every gradient's, so they are grown in random order."""
    draw = torch.rand(w.shape[0], generator=generator, device=w.device, dtype=w.dtype)
    if options.grow == "random":
        return draw
    if g.is_sparse:
        norm = torch.zeros_like(draw).index_copy_(0, g.indices()[0], g.values().norm(dim=1))
    else:
        norm = g.norm(dim=1)
    return torch.where(norm > 0, norm, -draw)


def _position_scores(
    w: torch.Tensor, g: torch.Tensor, options: DSLConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat w and dense g's pruning score (|w|, or (w g)^2 for `taylor`) and growth score
    (|g|, or at random) per position."""
    score = w.abs() if options.prune == "magnitude" else (w * g).pow(2)
    if options.grow != "random":
        return score, g.abs()
    return score, torch.rand(w.shape, generator=generator, device=w.device)


def _swap(
    score: torch.Tensor,
    gain: torch.Tensor,
    flat: torch.Tensor,
    count: int,
    protect: torch.Tensor | None = None,
) -> None:
    """In place on the flat mask: deactivate the `count` active entries of lowest `score`
    (never those in `protect`), then activate the `count` inactive ones of highest `gain`."""
    _prune(score, flat, count, protect)
    gain = torch.where(flat, torch.full_like(gain, -math.inf), gain)
    flat[torch.topk(gain, count, largest=True).indices] = True


def _prune(
    score: torch.Tensor, flat: torch.Tensor, count: int, protect: torch.Tensor | None = None
) -> None:
    """In place on the flat mask: deactivate the `count` active entries of lowest `score`,
    never those in `protect`."""
    score = torch.where(flat, score, torch.full_like(score, math.inf))
    if protect is not None:
        score[protect] = math.inf
    flat[torch.topk(score, count, largest=False).indices] = False


def _prune_and_grow_sparse(
    w: torch.Tensor,
    grad: torch.Tensor,
    flat: torch.Tensor,
    count: int,
    options: DSLConfig,
    generator: torch.Generator,
) -> int:
    """`prune_and_grow` with a coalesced sparse gradient: w (rows * dim,), flat mask alike."""
    dim = grad.shape[1]
    rows = grad.indices()[0]  # (R,) distinct, sorted
    positions = (rows.unsqueeze(1) * dim + torch.arange(dim, device=w.device)).reshape(-1)
    g = grad.values().reshape(-1)  # (R * dim,) the gradient at `positions`
    if options.prune == "magnitude":
        score = w.abs()
    else:  # (w g)^2: zero wherever the batch gave no gradient
        score = torch.zeros_like(w).index_copy_(0, positions, (w[positions] * g).pow(2))
    _prune(score, flat, count)
    grown = 0
    if options.grow != "random":
        gain = torch.where(flat[positions], torch.full_like(g, -math.inf), g.abs())
        grown = min(count, int((~flat[positions]).sum()))
        flat[positions[torch.topk(gain, grown, largest=True).indices]] = True
    if grown < count:  # random growth, or zero-gradient positions when the rows ran out
        draw = torch.rand(w.shape, generator=generator, device=w.device)
        draw = torch.where(flat, torch.full_like(draw, -math.inf), draw)
        flat[torch.topk(draw, count - grown, largest=True).indices] = True
    return count


__all__ = ["DSLConfig", "DSLTables", "prune_and_grow", "zeta"]
