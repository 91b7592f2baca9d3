"""DNIS (Cheng, Shen and Huang, 2020): differentiable search of embedding dimensions per
frequency block, over any base table.

    embedding: {method: dnis, dim: 16, options: {base: full, search_budget: 0.25}}
    embedding: {method: dnis, dim: 8, budget: 0.125, chunks: 2,
                options: {base: unified, search_budget: 0.0625}}

Each feature's ids are cut by frequency rank into blocks (Sec. 3.1): the spec's vocabulary is
already ordered by descending training frequency (id 1 the most frequent; id 0, the OOV bucket
of missing and rare values, is put in the first block), so the rank is the id. The spec keeps
no counts, so the default boundaries are the frequency quantiles under a Zipf law: with
`S = num_blocks`, block k ends at rank `(V + 1)^(k / S) - 1`, which gives each block the same
share of the feature's occurrences when frequency ~ 1/rank; `blocks` gives explicit rank
boundaries instead (the official Criteo script's 51, 126, 1763, 17057, 91265). Features whose
ids carry no frequency order (hashed or bucketized numeric ones) are one block.

A soft selection `alpha` of shape (P, S, dim), one (S, dim) matrix per lookup of the base (a
feature of full tables, a (feature, chunk) of Unified Embedding), initialised to 1, scales each
looked-up row (Eq. 3): `e~ = e * alpha[probe, block(id)]`. The job runs four stages:

1. **warmup**: ordinary training, alpha held at 1 (the official `warm_start`).
2. **search** (Sec. 3.2, Algorithm 1): alternately, an Adam step of the embedding tables on a
   training batch with the rest of the network frozen (as the official code does), and a plain
   SGD step of alpha on a *validation* batch with loss `BCE + l1 * sum|alpha|`, its gradient
   divided by its mean absolute value per (probe, block) (`grad_norm`), alpha clamped to
   [0, 1] after each step. First-order (the official default `use_second_grad 0`). It stops
   on the loop's early stopping (validation AUC, `train.patience`) or after `search_epochs`.
3. **prune**: the threshold on `|e * alpha|` that keeps exactly as many values as the
   `search_budget` (a fraction of the full tables' float32 bytes) allows in the compact form
   (indices included), found by sorting the scores (the exact limit of a binary search: ties
   are broken by position, so the count is met exactly even where scores tie). The mask is
   then fixed. With `keep_first_order` the budget covers FM/DeepFM's linear part too, kept
   whole and dense: the tables get `search_budget * (tables + linear) - linear`.
4. **retrain** with the mask: from the pruned weights (`retrain_init: continue`, fine-tuning,
   whose start counts as epoch 0: the official notebook evaluates the pruned model as it is
   and calls retraining optional, so a fine-tune that only overfits returns the pruned model)
   or rewound/fresh; pruned weights are masked in the forward and re-zeroed after every
   step, so they never grow back (the official pruning notebook lets them).

Storage (`storage`), both counted in real bytes (the VLDB 2024 compression study's count):
`structured` (full base): whole (feature, block, dimension) columns are pruned, so each block
keeps a set of dimensions and is stored as a mixed-width table (the column that meets the
budget is cut at a row, so the most frequent rows of its block keep it); `unstructured`: any
entry, stored as CSR (float32 values, uint8 column indices, int32 row pointers). On a shared
base (unified, multiplexed, hashing) the stored entries are the shared rows': an entry's score
is `|e| * max alpha` over the (probe, block) pairs whose ids hash to that row, and alpha stays
per (feature, chunk), so a chunk whose alpha reaches 0 leaves the feature (a learned
`feature_chunks`; the prune stage's `chunks_removed`) and rows only rare ids reach lose their
dimensions. On full tables alpha is merged into the stored values.

Where this differs from the paper's official code (github.com/Viperccc/AutoSrh): alpha is per
feature (the official one is one (S, D) matrix over all fields' ids concatenated); a search
epoch covers the whole training set and cycles the validation batches (the official `zip`
ends the epoch when the smaller validation loader is exhausted); the search stops on
validation AUC (the official code stops when ReduceLROnPlateau has cut the weights' learning
rate below 1e-6); the second-order variant (`AdamNas`) is not offered; FM/DeepFM's first-order
tables are the base's and are frozen during the search (the official code trains its
`feature_biases` with the embeddings).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from plexus.models.embeddings.base import (
    EmbeddingConfig,
    EmbeddingMethod,
    LearnedOptions,
    coerce_base,
    gather_rows,
    pool_padded,
)
from plexus.models.embeddings.hashed import HashedEmbeddingTables
from plexus.models.embeddings.protocol import (
    BatchSource,
    Evaluate,
    ParameterGroup,
    Stage,
    StageInit,
    StageKind,
    StepContext,
)
from plexus.models.embeddings.registry import method_class, register_embedding
from plexus.models.layers.hashing import hash_bucket
from plexus.platform.config import coerce_choice
from plexus.platform.errors import ConfigError
from plexus.platform.feature_spec import Encoding, Feature
from torch import nn
from torchrec import KeyedJaggedTensor, KeyedTensor

NO_BOUND = 2**62  # padding of the block boundaries: never reached
WARMUP, SEARCH, PRUNE, RETRAIN = "warmup", "search", "prune", "retrain"
_PHASES = {WARMUP: 0, SEARCH: 1, PRUNE: 2, RETRAIN: 2}


class Storage(str, enum.Enum):  # noqa: UP042
    STRUCTURED = "structured"  # mixed-width blocks (full base)
    UNSTRUCTURED = "unstructured"  # CSR over the pruned tables


@dataclasses.dataclass(frozen=True, kw_only=True)
class DNISConfig(LearnedOptions):
    """`embedding.options` of `method: dnis`. Defaults are the official CTR script's
    (`DNIS-ctr.sh`: lr_a 0.01, l1 1e-5, alpha initialised to 1, gradient normalisation on)."""

    SIZED = ("search_budget", "prune_first_order")

    base: EmbeddingMethod = EmbeddingMethod.FULL
    num_blocks: int = 6  # frequency blocks per feature (the official Criteo split has 6)
    blocks: tuple[int, ...] | None = None  # explicit rank boundaries, e.g. [51, 126, 1763]
    init_alpha: float = 1.0
    alpha_lr: float = 0.01  # plain SGD on alpha, on validation batches
    l1: float = 1e-5  # weight of sum|alpha|
    grad_norm: bool = True  # alpha's gradient / its mean |.| per (probe, block)
    search_epochs: int | None = None  # None: train.epochs
    search_budget: float | None = None  # compact bytes / full tables' bytes; None: alpha > 0
    storage: Storage | None = None  # None: structured on full tables, else unstructured
    retrain_init: StageInit = StageInit.CONTINUE  # continue (fine-tune), rewind or fresh
    # FM/DeepFM's width-1 first-order tables searched and pruned too, as a DNIS module of their
    # own at the same search budget (the official code keeps its `feature_biases` dense).
    prune_first_order: bool = False
    # Or the linear part kept whole and dense *inside* the search budget: the tables are pruned
    # to what it leaves (where it is the budget's best use, as on MovieLens-100K at 1/16).
    keep_first_order: bool = False

    def __post_init__(self) -> None:
        coerce_base(self, "DNIS")
        coerce_choice(self, "retrain_init", StageInit, "embedding.options.retrain_init")
        if self.storage is not None:
            coerce_choice(self, "storage", Storage, "embedding.options.storage")
        if self.prune_first_order and self.keep_first_order:
            raise ConfigError(
                "embedding.options.prune_first_order and keep_first_order are both set: the "
                "linear part is either pruned by DNIS or kept whole inside the budget; pick one"
            )
        if self.num_blocks < 1:
            raise ConfigError(f"embedding.options.num_blocks={self.num_blocks} must be >= 1")
        if self.blocks is not None and (
            not self.blocks
            or any(b < 1 for b in self.blocks)
            or list(self.blocks) != sorted(set(self.blocks))
        ):
            raise ConfigError(
                f"embedding.options.blocks={list(self.blocks)} must be increasing ranks >= 1 "
                "(e.g. [51, 126, 1763, 17057, 91265])"
            )
        for key in ("alpha_lr", "l1"):
            if getattr(self, key) < 0:
                raise ConfigError(f"embedding.options.{key} must be >= 0")
        if not 0.0 < self.init_alpha <= 1.0:
            raise ConfigError("embedding.options.init_alpha must be in (0, 1]")
        if self.search_epochs is not None and self.search_epochs < 1:
            raise ConfigError("embedding.options.search_epochs must be >= 1 (or null)")
        if self.search_budget is not None and not 0.0 < self.search_budget <= 1.0:
            raise ConfigError(
                f"embedding.options.search_budget={self.search_budget} must be in (0, 1]: the "
                "fraction of the full tables' bytes the pruned model may take"
            )

    @property
    def sizes_first_order(self) -> bool:
        """The linear part is DNIS's: pruned with the tables, or kept whole in the budget."""
        return self.prune_first_order or self.keep_first_order

    @classmethod
    def at_budget(
        cls, base: str, budget: float, configured: Mapping[str, Any]
    ) -> tuple[float, dict[str, Any]]:
        """The benchmark's row at `budget` of the full tables' bytes: (the base's
        `embedding.budget`, these options). A shared base starts at twice the budget (so the
        search prunes about half of it, after the CSR's row pointers); full tables at 1, with
        their linear part pruned to the budget as well (a shared base cuts its own), unless
        the job keeps it whole inside the budget (`keep_first_order`)."""
        start = 1.0 if base == EmbeddingMethod.FULL.value else min(1.0, 2 * budget)
        options: dict[str, Any] = {"base": base}
        if budget < 1.0:
            options["search_budget"] = budget
            full_base = base == EmbeddingMethod.FULL.value
            options["prune_first_order"] = full_base and not configured.get("keep_first_order")
        return start, options


def block_bounds(feature: Feature, options: DNISConfig) -> list[int]:
    """The first rank of each block after the first (increasing, inside (0, V)): a feature
    whose ids are not frequency ranks (not vocabulary-encoded) is one block."""
    size = feature.cardinality
    if feature.encoding is not Encoding.VOCAB:
        return []
    if options.blocks is not None:
        bounds = list(options.blocks)
    else:
        s = options.num_blocks
        bounds = [round((size + 1) ** (k / s)) - 1 for k in range(1, s)]
    return sorted({b for b in bounds if 0 < b < size})


def _normalise_alpha_grad(grad: torch.Tensor) -> torch.Tensor:
    """alpha's gradient divided by its mean |.| over the dimensions of each (probe, block)."""
    return grad / (grad.abs().mean(-1, keepdim=True) + 1e-8)


@register_embedding(EmbeddingMethod.DNIS, options=DNISConfig)
class DNISTables(HashedEmbeddingTables):
    """Base tables whose rows are scaled by alpha[probe, block(id)] and, once pruned, masked:
    `(B, sum output_dims)` out, as the base."""

    def __init__(self, config: EmbeddingConfig, features: Sequence[Feature]) -> None:
        super().__init__(config, features)
        self.options: DNISConfig = config.options
        base = config.base_config()
        self._plan = method_class(base.method).plan(base, self.features)  # type: ignore[attr-defined]
        self._build(*self._plan)
        # Full tables (one unhashed probe per table): alpha merges into the rows, blocks are
        # row ranges and the structured form applies.
        self.merged = all(p.identity for p in self.probes) and all(
            n == 1 for n in self._probes_per_table.values()
        )
        storage = self.options.storage or (
            Storage.STRUCTURED if self.merged else Storage.UNSTRUCTURED
        )
        if storage is Storage.STRUCTURED and not self.merged:
            raise ConfigError(
                f"embedding.options.storage=structured needs full tables (base full); on a "
                f"{base.method.value} base use storage: unstructured"
            )
        self.storage = storage
        bounds = [block_bounds(f, self.options) for f in self.features]
        self.num_blocks = max(len(b) for b in bounds) + 1
        padded = [b + [NO_BOUND] * (self.num_blocks - 1 - len(b)) for b in bounds]
        self.register_buffer(
            "_bounds", torch.tensor(padded, dtype=torch.int64).view(len(bounds), -1)
        )
        self.block_counts = [len(b) + 1 for b in bounds]
        dim = config.dim
        self.alpha = nn.Parameter(torch.ones(len(self.probes), self.num_blocks, dim))
        if self.options.grad_norm:
            self.alpha.register_hook(_normalise_alpha_grad)
        self.register_buffer("phase", torch.tensor(0))
        self.register_buffer("threshold", torch.tensor(0.0))
        for k, rows in enumerate(self.table_rows.values()):
            self.register_buffer(f"mask_{k}", torch.ones(rows, dim, dtype=torch.bool))
        self._kept_bytes = 0  # `keep_first_order`: the model's linear part, inside the budget

    # -- lookups ------------------------------------------------------------------------------

    def _weight(self, table: str) -> torch.Tensor:
        return self.ebc.embedding_bags[table].weight

    def _mask(self, k: int) -> torch.Tensor:
        return getattr(self, f"mask_{k}")

    @property
    def pruned(self) -> bool:
        return int(self.phase) >= 2

    def block_of(self, feature: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Block of each id: feature indices and raw ids of one shape -> int64 of that shape."""
        return (ids.unsqueeze(-1) >= self._bounds[feature]).sum(-1)

    def _scaled(
        self, k: int, table: str, rows: torch.Tensor, probe: torch.Tensor, ids: torch.Tensor
    ) -> torch.Tensor:
        """Rows (...) of table k looked up, masked if pruned, scaled by alpha: (..., dim)."""
        weight = self._weight(table)
        vectors = gather_rows(weight, rows)
        if self.pruned:
            vectors = vectors * self._mask(k)[rows].to(vectors.dtype)
        block = self.block_of(self._probe_feature[probe], ids)
        flat = self.alpha.view(-1, self.alpha.shape[-1])  # (probes * blocks, dim)
        return vectors * gather_rows(flat, probe * self.num_blocks + block)

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        batch = features.stride()
        ids, rows, lengths = self.probe_ids(features)
        ids = ids.to(torch.int64)
        bag = torch.repeat_interleave(
            torch.arange(lengths.numel(), device=ids.device), lengths, output_size=ids.numel()
        )
        probe_of_id = torch.div(bag, batch, rounding_mode="floor")
        offsets = torch.cumsum(lengths, 0)
        pooled, first = [], 0
        for k, (table, count) in enumerate(self._probes_per_table.items()):
            start = int(offsets[first * batch - 1]) if first else 0
            stop = int(offsets[(first + count) * batch - 1])
            part = slice(start, stop)
            vectors = self._scaled(k, table, rows[part], probe_of_id[part], ids[part])
            out = vectors.new_zeros(count * batch, vectors.shape[-1])
            pooled.append(out.index_add(0, bag[part] - first * batch, vectors))
            first += count
        return self._keyed(self._pooled_output(pooled, lengths, batch))

    def forward_padded(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        pooled = []
        for k, (table, index, rows) in enumerate(self.padded_rows(ids)):
            feature = self._probe_feature[index]
            probe = torch.tensor(index, device=ids.device).view(1, -1, 1)
            vectors = self._scaled(k, table, rows, probe, ids[:, feature, :])
            pooled.append(pool_padded(vectors, lengths[:, feature], self.config.pooling))
        return self._combine(torch.cat(pooled, dim=1).transpose(0, 1))

    # -- the training protocol ----------------------------------------------------------------

    def _tables(self) -> tuple[nn.Parameter, ...]:
        return tuple(self._weight(t) for t in self.table_rows)  # type: ignore[misc]

    def bind(self, model: nn.Module) -> None:
        """With `keep_first_order`, count the model's linear part (`first_order`) in the budget."""
        linear = getattr(model, "first_order", None)
        # Never a DNIS module itself: keep_first_order excludes prune_first_order.
        if self.options.keep_first_order and linear is not None:
            self._kept_bytes = linear.num_bytes()

    def parameter_groups(self) -> tuple[ParameterGroup, ...]:
        if int(self.phase) != 1:
            return (ParameterGroup("dnis.alpha", (self.alpha,), "none"),)
        alpha = ParameterGroup(
            "dnis.alpha", (self.alpha,), "sgd", self.options.alpha_lr, 0.0, BatchSource.VALID
        )
        return (alpha, ParameterGroup("dnis.embeddings", self._tables(), "adam"))

    def extra_loss(self) -> torch.Tensor | None:
        if int(self.phase) != 1 or self.options.l1 == 0:
            return None
        return self.options.l1 * self.alpha.abs().sum()

    @torch.no_grad()
    def after_step(self, context: StepContext | None = None) -> None:
        if int(self.phase) == 1:
            self.alpha.clamp_(0.0, 1.0)
        elif self.pruned:
            self.zero_pruned()

    @torch.no_grad()
    def zero_pruned(self) -> None:
        """Set every pruned weight to 0 (the mask's complement)."""
        for k, table in enumerate(self.table_rows):
            self._weight(table).mul_(self._mask(k).to(self.alpha.dtype))

    def stages(self) -> tuple[Stage, ...]:
        init = self.options.retrain_init
        later = ("search_budget", "retrain_init")  # read from the prune on: shared before it
        return (
            Stage(WARMUP, ignores=later),
            Stage(SEARCH, freeze_rest=True, epochs=self.options.search_epochs, ignores=later),
            Stage(PRUNE, StageKind.SEARCH),
            Stage(RETRAIN, StageKind.TRAIN, init, keep_start=init is StageInit.CONTINUE),
        )

    @torch.no_grad()
    def begin_stage(self, stage: Stage, previous: Any) -> None:
        if isinstance(previous, DNISTables):  # alpha, the phase and the masks found so far
            self.alpha.copy_(previous.alpha)
            self.threshold.copy_(previous.threshold)
            for k in range(len(self.table_rows)):
                self._mask(k).copy_(previous._mask(k))
        self.phase.fill_(max(int(self.phase), _PHASES.get(stage.name, 0)))
        if stage.name == SEARCH:  # alpha starts the search at its initial value
            self.alpha.fill_(self.options.init_alpha)
        if self.pruned:
            self.zero_pruned()

    def search(self, stage: Stage, evaluate: Evaluate) -> dict[str, float]:
        full, kept = self.full_table_bytes(), self._kept_bytes
        budget = self.options.search_budget
        summary = self.prune(None if budget is None else budget * (full + kept) - kept)
        compact = self.num_bytes()
        summary.update({"compact_bytes": float(compact), "compact_fraction": compact / full})
        if kept:
            summary["first_order_bytes"] = float(kept)
            summary["model_compact_fraction"] = (compact + kept) / (full + kept)
        return summary

    def apply_candidate(self, candidate: Any) -> None:
        """DNIS has no candidates to score: its search is the gradient stage."""

    # -- pruning ------------------------------------------------------------------------------

    @torch.no_grad()
    def reach_alpha(self, k: int) -> torch.Tensor:
        """(rows, dim): for each row of table k, the largest alpha of the (probe, block)
        pairs whose ids reach it (0 for a row no id reaches)."""
        table = list(self.table_rows)[k]
        rows = self.table_rows[table]
        out = torch.zeros(rows, self.config.dim)
        for i, p in enumerate(self.probes):
            if p.table != table:
                continue
            f = int(self._probe_feature[i])
            ids = torch.arange(self.features[f].cardinality)
            if p.identity:
                hashed = torch.remainder(ids, rows)
            else:
                hashed = hash_bucket(ids, self._seed_lo[i], self._seed_hi[i], rows)
            values = self.alpha[i, self.block_of(torch.full_like(ids, f), ids)].detach()
            out.scatter_reduce_(0, hashed.unsqueeze(1).expand_as(values), values, "amax")
        return out

    def fixed_bytes(self) -> int:
        """Bytes of the compact form besides its stored values and their column indices."""
        dim = self.config.dim
        if self.storage is Storage.STRUCTURED:  # per feature: segments (start, offset, width, cols)
            return len(self.features) * (self.num_blocks + 1) * (9 + dim)
        rowptr = sum(4 * (rows + 1) for rows in self.table_rows.values())
        alpha = 0 if self.merged else 4 * self.alpha.numel() + 4 * self._bounds.numel()
        return rowptr + alpha

    def value_bytes(self) -> int:
        """Bytes per stored value: float32, plus a uint8 column index in CSR."""
        return 4 if self.storage is Storage.STRUCTURED else 5

    @torch.no_grad()
    def prune(self, budget_bytes: float | None) -> dict[str, float]:
        """Fix the mask: the largest scores |e * alpha| that fit `budget_bytes` (None: every
        entry whose alpha is > 0), exactly that many; then zero the pruned weights."""
        scores = [
            self._weight(t).detach().abs() * self.reach_alpha(k)
            for k, t in enumerate(self.table_rows)
        ]
        positive = sum(int((s > 0).sum()) for s in scores)
        keep = positive
        if budget_bytes is not None:
            fits = int((budget_bytes - self.fixed_bytes()) // self.value_bytes())
            keep = max(0, min(positive, fits))
        if self.storage is Storage.STRUCTURED:
            masks, threshold = _structured_masks(scores, self._row_blocks(), keep)
        else:
            masks, threshold = _top_entries(scores, keep)
        for k, mask in enumerate(masks):
            self._mask(k).copy_(mask)
        self.threshold.fill_(threshold)
        self.phase.fill_(2)
        self.zero_pruned()
        kept = sum(int(m.sum()) for m in masks)
        total = sum(m.numel() for m in masks)
        dead = (self.alpha.detach().amax(dim=(1, 2)) == 0).sum()
        per_feature = {
            f"width.{p.feature}": float(self._mask(k).sum()) / self.table_rows[p.table]
            for k, p in enumerate(self.probes)
            if self.merged
        }
        return {
            "threshold": threshold,
            "kept_values": float(kept),
            "total_values": float(total),
            "kept_fraction": kept / total,
            "alpha_mean": float(self.alpha.mean()),
            "alpha_zero_fraction": float((self.alpha == 0).float().mean()),
            "chunks_removed": float(dead),
            **per_feature,
        }

    def _row_blocks(self) -> list[torch.Tensor]:
        """Per table of a merged base, the block of each row (its id's block)."""
        out = []
        for p in self.probes:
            f = self.feature_names.index(p.feature)
            ids = torch.arange(self.table_rows[p.table])
            out.append(self.block_of(torch.full_like(ids, f), ids))
        return out

    # -- sizes and the compact form -----------------------------------------------------------

    def full_table_bytes(self) -> int:
        """float32 bytes of full per-feature tables at this model's feature widths."""
        return 4 * sum(f.cardinality * self._widths[f.name] for f in self.features)

    def num_parameters(self) -> int:
        if not self.pruned:
            return super().num_parameters()
        kept = sum(int(self._mask(k).sum()) for k in range(len(self.table_rows)))
        return kept + (0 if self.merged else self.alpha.numel())

    def num_bytes(self) -> int:
        if not self.pruned:
            return super().num_bytes()
        return self.compact().num_bytes()

    def compact(self) -> HashedEmbeddingTables:
        if not self.pruned:
            raise ValueError("only a pruned DNIS model (after its prune stage) has a compact form")
        from plexus.models.embeddings.dnis_compact import CompactCSR, CompactStructured

        if self.storage is Storage.STRUCTURED:
            return CompactStructured(self)
        return CompactCSR(self)

    def figures(self) -> dict[str, Any]:
        if int(self.phase) < 1:
            return {}
        from plexus.models.embeddings.dnis_compact import alpha_figure

        return {"dnis_alpha": alpha_figure(self)}


def _top_entries(scores: list[torch.Tensor], keep: int) -> tuple[list[torch.Tensor], float]:
    """Masks keeping exactly the `keep` largest scores over all tables (ties by position)."""
    flat = torch.cat([s.flatten() for s in scores])
    chosen = torch.zeros(flat.numel(), dtype=torch.bool)
    threshold = 0.0
    if keep > 0:
        values, index = torch.topk(flat, keep, sorted=True)
        chosen[index] = True
        threshold = float(values[-1])
    sizes = [s.numel() for s in scores]
    return [c.view_as(s) for c, s in zip(chosen.split(sizes), scores, strict=True)], threshold


def _structured_masks(
    scores: list[torch.Tensor], row_blocks: list[torch.Tensor], keep: int
) -> tuple[list[torch.Tensor], float]:
    """Masks keeping whole (table, block, dimension) columns by mean score, best first, until
    `keep` values: the column that crosses it keeps only its first (most frequent) rows."""
    columns = []  # (score, table, block, dim, rows of the block)
    for t, (score, blocks) in enumerate(zip(scores, row_blocks, strict=True)):
        for b in torch.unique(blocks).tolist():
            rows = torch.nonzero(blocks == b).flatten()
            means = score[rows].mean(0)
            columns += [(float(means[d]), t, b, d, rows) for d in range(score.shape[1])]
    columns.sort(key=lambda c: -c[0])  # stable: ties keep (table, block, dim) order
    masks = [torch.zeros_like(s, dtype=torch.bool) for s in scores]
    left, threshold = keep, 0.0
    for score, t, _, d, rows in columns:
        if left <= 0 or score <= 0:
            break
        take = rows[: min(left, len(rows))]
        masks[t][take, d] = True
        left -= len(take)
        threshold = score
    return masks, threshold
