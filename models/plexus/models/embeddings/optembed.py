"""OptEmbed (Lyu et al., CIKM 2022): learned row pruning and per-feature widths over any base.

    embedding: {method: optembed, dim: 16, options: {base: full}}
    embedding: {method: optembed, dim: 8, budget: 0.125, chunks: 2, options: {base: unified}}

The base (`options.base`: full, hashing, multiplexed or unified) is a probe plan of
`plexus.models.embeddings.hashed`; OptEmbed adds, per feature f, a learned threshold `t_f`, and
runs three stages (Sec. 3 of the paper; official code: github.com/fuyuanlyu/OptEmbed):

1. **supernet** (Sec. 3.2): a looked-up row e of feature f is kept when
   `BinaryStep(||e||_1 - t_f)` is 1 (Eq. 5-7), else replaced by zeros (or a per-probe OOV vector,
   `pruned: oov`). The step's backward is the surrogate of the official `layer.py`:
   `2 - 4|x|` for `|x| <= 0.4`, `0.4` for `0.4 < |x| <= 1`, 0 beyond. The loss adds
   `alpha * sum_f exp(-t_f)` (Eq. 8); thresholds train by plain SGD at `threshold_lr`, the
   embeddings by Adam (the job's `lr`; L2 `weight_decay`, by default the job's table L2). In
   training only, each sample and feature keeps a random prefix of its output (Eq. 10: width
   d ~ U over the feature's choices).
2. **search** (Sec. 3.3): the row masks are frozen (each row's norm and the thresholds at that
   moment), then `evolution.evolutionary_search` picks each feature's width on validation AUC
   (Recall@20 on the validation hold-out for the retrieval towers, each tower in turn),
   optionally within `search_budget` of the full tables' bytes (beyond the paper).
3. **retrain** (Sec. 3.4): the found masks and widths are fixed and the model trains again,
   rewound to the supernet's initial weights (`retrain_init: rewind`, the official `init.pth`
   option) or from a fresh draw.

On a shared base (unified, multiplexed) the mask is per (feature, shared row): the row is
pruned for the features whose threshold its norm falls below, and removed from the compact
table only when it is pruned for every feature still using the table. Widths come in whole
chunks where a feature concatenates several chunks (Unified Embedding's variable width,
`feature_chunks`), and in single dimensions otherwise; width 0 drops a feature, and with it
every row only it kept.

`compact()` gives the serving form (`CompactOptEmbedTables`): kept rows only, each table at the
widest width its features use, an int32 remap from row to compact row (-1: removed), and for a
shared table a uint8 level per row saying for which features it is kept. `num_parameters()` and
`num_bytes()` of a retrained model are those of that form.

Where this differs from the official code: thresholds are per feature (its `field` mode; the
per-feature-value mode is not offered); `pruned: oov` mixes `m * e + (1 - m) * oov` so the
surrogate gradient still reaches the threshold (the official `torch.where` cuts it); the
first-order (linear) tables of FM/DeepFM are not pruned, as in the official code; on a shared
base width 0 (the feature dropped) is a choice of the search (`drop_features`, see
`OptEmbedConfig`), where the paper's choices start at 1.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
from plexus.models.embeddings.base import (
    EmbeddingConfig,
    EmbeddingMethod,
    EmbeddingTables,
    LearnedOptions,
    coerce_base,
    gather_rows,
    init_weight,
    pool_padded,
)
from plexus.models.embeddings.evolution import EvolutionConfig, evolutionary_search
from plexus.models.embeddings.hashed import HashedEmbeddingTables, Plan
from plexus.models.embeddings.protocol import (
    Evaluate,
    ParameterGroup,
    Stage,
    StageInit,
    StageKind,
)
from plexus.models.embeddings.registry import method_class, register_embedding
from plexus.platform.config import coerce_choice
from plexus.platform.errors import ConfigError
from plexus.platform.feature_spec import Feature
from torch import nn
from torchrec import KeyedJaggedTensor, KeyedTensor


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptEmbedConfig(LearnedOptions):
    """`embedding.options` of `method: optembed`.

    The search defaults are the paper's (30 generations of 10 + 10). The threshold defaults are
    not: the official README's DeepFM/Criteo values (alpha 1e-4, threshold lr 1e-4) move a
    threshold by about lr * alpha = 1e-8 per step, which prunes over the ~10^6 steps of 30
    Criteo epochs but not at all in the few hundred to few thousand steps of the jobs here
    (measured: thresholds within 4e-6 of 0 after 2 epochs of 160k rows, every row kept). alpha
    1e-3 with threshold lr 1 moves them ~1e-3 per step and pruned 38% of the rows in that run at
    the same AUC; the task gradient still holds back the thresholds of useful rows.

    `drop_features` adds width 0 to every feature's choices in the search. The paper's choices
    are 1..D: on per-field tables a useless field leaves through its rows (the 5M-row synthetic
    set's supernet pruned every row of its five noise fields), but on a shared base its rows are
    the useful features' rows too, held above its threshold by them, so only a width of 0 can
    take it out (there the search kept every noise feature). The supernet still samples 1..D:
    width 0 is what a feature gets from rows pruned for it, which the supernet trains with. (Drawn
    in the supernet too, 0 took a third of a two-chunk feature's samples, the thresholds rose
    with the weaker task gradient and kept 1,529 of 32,722 rows on the 5M-row set, not 4,570:
    test AUC 0.0107 below plain Unified Embedding.)
    """

    SIZED = ("search_budget",)

    base: EmbeddingMethod = EmbeddingMethod.FULL
    alpha: float = 1e-3  # weight of the threshold regulariser sum_f exp(-t_f)
    threshold_lr: float = 1.0  # plain SGD on the thresholds
    weight_decay: float | None = None  # Adam L2 of the rows; None: the job's table L2
    pruned: str = "zero"  # a pruned row becomes zeros, or "oov": a learned vector per probe
    search: EvolutionConfig = EvolutionConfig()
    search_budget: float | None = None  # max compact bytes, as a fraction of the full tables'
    retrain_init: StageInit = StageInit.REWIND  # or "fresh"
    # Width 0 (the feature dropped) among the search's choices; None: on a shared base only
    drop_features: bool | None = None

    def __post_init__(self) -> None:
        coerce_base(self, "OptEmbed")
        coerce_choice(self, "retrain_init", StageInit, "embedding.options.retrain_init")
        if self.retrain_init is StageInit.CONTINUE:
            raise ConfigError("embedding.options.retrain_init must be 'rewind' or 'fresh'")
        if self.pruned not in ("zero", "oov"):
            raise ConfigError(f"embedding.options.pruned={self.pruned!r}: use 'zero' or 'oov'")
        for key in ("alpha", "threshold_lr"):
            if getattr(self, key) < 0:
                raise ConfigError(f"embedding.options.{key} must be >= 0")
        if self.weight_decay is not None and self.weight_decay < 0:
            raise ConfigError("embedding.options.weight_decay must be >= 0")
        if self.search_budget is not None and not 0.0 < self.search_budget <= 1.0:
            raise ConfigError(
                f"embedding.options.search_budget={self.search_budget} must be in (0, 1]: "
                "the fraction of the full tables' bytes a searched model may take"
            )

    @classmethod
    def at_budget(
        cls, base: str, budget: float, configured: Mapping[str, Any]
    ) -> tuple[float, dict[str, Any]]:
        """The benchmark's row at `budget` of the full tables' bytes: the search's budget over
        the full tables, or over a shared base's tables at 0.95 of it (its rows are rarely
        pruned for every feature, so the search must fit with all of them kept; 5% leaves
        room for the levels). None at budget 1."""
        start = 1.0 if base == EmbeddingMethod.FULL.value or budget >= 1.0 else 0.95 * budget
        return start, {"base": base, "search_budget": None if budget >= 1.0 else budget}


class BinaryStep(torch.autograd.Function):
    """`x > 0` forward; the official surrogate gradient backward (see the module docstring)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * step_surrogate(x)


def step_surrogate(x: torch.Tensor) -> torch.Tensor:
    """d step / dx as OptEmbed trains it: 2 - 4|x| (|x| <= 0.4), 0.4 (|x| <= 1), 0 beyond."""
    a = x.abs()
    return torch.where(a <= 0.4, 2 - 4 * a, torch.where(a <= 1.0, 0.4, 0.0)).to(x.dtype)


class _MaskedTables(HashedEmbeddingTables):
    """A probe plan whose looked-up rows are masked per (feature, row) and whose outputs keep a
    prefix per feature. Subclasses give `_lookup` (rows -> vectors and keep mask)."""

    oov: nn.Parameter | None
    widths: torch.Tensor

    def _layout(self, plan: Plan) -> None:
        """Width choices and column bookkeeping, once `_build` has set up the plan."""
        dim = self.config.dim
        self._plan = plan
        probes_per_feature = {
            n: sum(p.feature == n for p in self.probes) for n in self.feature_names
        }
        units = [
            dim if self.combine == "concat" and probes_per_feature[n] > 1 else 1
            for n in self.feature_names
        ]
        lowest = 0 if self._drops_features() else 1
        self.width_choices: tuple[tuple[int, ...], ...] = tuple(
            tuple(range(lowest * unit, self._widths[n] + 1, unit))
            for n, unit in zip(self.feature_names, units, strict=True)
        )
        col_feature, col_position = [], []
        for i, n in enumerate(self.feature_names):
            col_feature += [i] * self._widths[n]
            col_position += list(range(self._widths[n]))
        self.register_buffer("_col_feature", torch.tensor(col_feature), persistent=False)
        self.register_buffer("_col_position", torch.tensor(col_position), persistent=False)
        sampled = [sum(w > 0 for w in c) for c in self.width_choices]  # the supernet's: no 0
        self.register_buffer("_choice_counts", torch.tensor(sampled), persistent=False)
        self.register_buffer("_choice_unit", torch.tensor(units), persistent=False)
        full = [self._widths[n] for n in self.feature_names]
        self.register_buffer("widths", torch.tensor(full, dtype=torch.int64))

    def _lookup(
        self, table_index: int, table: str, rows: torch.Tensor, probe: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """rows (...) of `table` for probes `probe` (broadcastable) -> vectors (..., dim), keep (...)."""
        raise NotImplementedError

    def _sample_widths(self) -> bool:
        return False

    def _drops_features(self) -> bool:
        """Whether width 0 is a choice: `drop_features`, by default on a shared base only."""
        option = self.config.options.drop_features
        if option is not None:
            return bool(option)
        return any(self._shared(table) for table in {p.table for p in self.probes})

    def _shared(self, table: str) -> bool:
        return len({p.feature for p in self.probes if p.table == table}) > 1

    def _masked(
        self, vectors: torch.Tensor, keep: torch.Tensor, probe: torch.Tensor
    ) -> torch.Tensor:
        if self.oov is None:
            return vectors * keep.unsqueeze(-1)
        k = keep.unsqueeze(-1)
        return vectors * k + (1 - k) * gather_rows(self.oov, probe.expand_as(keep))

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        probes = self.remap(features)
        batch = probes.stride()
        lengths = probes.lengths().to(torch.int64)  # (P * B,), probe-major in table order
        values = probes.values()
        bags = torch.arange(lengths.numel(), device=values.device)
        bag = torch.repeat_interleave(bags, lengths, output_size=values.numel())
        probe_of_id = torch.div(bag, batch, rounding_mode="floor")
        offsets = torch.cumsum(lengths, 0)
        pooled, first = [], 0
        for k, (table, count) in enumerate(self._probes_per_table.items()):
            start = int(offsets[first * batch - 1]) if first else 0
            stop = int(offsets[(first + count) * batch - 1])
            probe = probe_of_id[start:stop]
            vectors, keep = self._lookup(k, table, values[start:stop], probe)
            vectors = self._masked(vectors, keep, probe)
            out = vectors.new_zeros(count * batch, vectors.shape[-1])
            pooled.append(out.index_add(0, bag[start:stop] - first * batch, vectors))
            first += count
        values = self._pooled_output(pooled, lengths, batch)
        return self._keyed(values * self._width_mask(batch, values.dtype))

    def forward_padded(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        pooled = []
        for k, (table, index, rows) in enumerate(self.padded_rows(ids)):
            probe = torch.tensor(index, device=ids.device).view(1, -1, 1)
            vectors, keep = self._lookup(k, table, rows, probe)
            vectors = self._masked(vectors, keep, probe)  # (B, Pt, L, dim)
            feature = self._probe_feature[index]
            pooled.append(pool_padded(vectors, lengths[:, feature], self.config.pooling))
        out = self._combine(torch.cat(pooled, dim=1).transpose(0, 1))
        return out * self._width_mask(ids.shape[0], out.dtype)

    def _width_mask(self, batch: int, dtype: torch.dtype) -> torch.Tensor:
        """(B, sum widths) 0/1: each feature's kept prefix; random per sample in the supernet."""
        if self._sample_widths():
            draws = torch.rand(batch, len(self.feature_names), device=self.widths.device)
            picks = (draws * self._choice_counts).long().clamp(max=self._choice_counts - 1)
            widths = (picks + 1) * self._choice_unit  # (B, F)
            return (self._col_position < widths[:, self._col_feature]).to(dtype)
        return (self._col_position < self.widths[self._col_feature]).to(dtype).unsqueeze(0)


@register_embedding(EmbeddingMethod.OPTEMBED, options=OptEmbedConfig)
class OptEmbedTables(_MaskedTables):
    """The supernet and, once searched, the masked model: `(B, sum output_dims)` out."""

    def __init__(self, config: EmbeddingConfig, features: Sequence[Feature]) -> None:
        super().__init__(config, features)
        self.options: OptEmbedConfig = config.options
        base = config.base_config()
        plan = method_class(base.method).plan(base, self.features)  # type: ignore[attr-defined]
        self._build(*plan)
        self._layout(plan)
        self.threshold = nn.Parameter(torch.zeros(len(self.feature_names)))
        self.oov = None
        if self.options.pruned == "oov":
            self.oov = nn.Parameter(init_weight(torch.empty(len(self.probes), config.dim)))
        total = sum(self.table_rows.values())
        self._table_start = [0, *itertools.accumulate(self.table_rows.values())][:-1]
        self.register_buffer("frozen", torch.tensor(False))
        self.register_buffer("frozen_norm", torch.zeros(total))
        self.register_buffer("frozen_threshold", torch.zeros(len(self.feature_names)))

    # -- the masked lookups ------------------------------------------------------------------

    def _weight(self, table: str) -> torch.Tensor:
        return self.ebc.embedding_bags[table].weight

    def _lookup(
        self, table_index: int, table: str, rows: torch.Tensor, probe: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        weight = self._weight(table)
        vectors = gather_rows(weight, rows)
        feature = self._probe_feature[probe]
        if bool(self.frozen):
            norm = self.frozen_norm[self._table_start[table_index] + rows]
            return vectors, (norm > self.frozen_threshold[feature]).to(vectors.dtype)
        x = vectors.abs().sum(-1) - gather_rows(self.threshold, feature.expand_as(rows))
        keep = BinaryStep.apply(x) if torch.is_grad_enabled() else (x > 0).to(x.dtype)
        return vectors, keep

    def _sample_widths(self) -> bool:
        return self.training and not bool(self.frozen)

    # -- the training protocol ---------------------------------------------------------------

    def extra_loss(self) -> torch.Tensor | None:
        if bool(self.frozen) or self.options.alpha == 0:
            return None
        return self.options.alpha * torch.exp(-self.threshold).sum()

    def parameter_groups(self) -> tuple[ParameterGroup, ...]:
        tables = tuple(self._weight(t) for t in self.table_rows)
        if self.oov is not None:
            tables += (self.oov,)
        groups = [
            ParameterGroup("optembed.embeddings", tables, "adam", None, self.options.weight_decay)
        ]
        if not bool(self.frozen):
            groups.insert(
                0,
                ParameterGroup(
                    "optembed.thresholds", (self.threshold,), "sgd", self.options.threshold_lr, 0.0
                ),
            )
        return tuple(groups)

    def stages(self) -> tuple[Stage, ...]:
        return (
            # shared by jobs that differ in these only
            Stage("supernet", ignores=("search_budget", "retrain_init", "drop_features")),
            Stage("search", StageKind.SEARCH),
            Stage("retrain", StageKind.TRAIN, self.options.retrain_init),
        )

    def begin_stage(self, stage: Stage, previous: EmbeddingTables | None) -> None:
        if isinstance(previous, OptEmbedTables):  # the architecture found so far
            for name in ("frozen", "frozen_norm", "frozen_threshold", "widths"):
                getattr(self, name).copy_(getattr(previous, name))

    @torch.no_grad()
    def freeze_rows(self) -> None:
        """Fix every row's mask as it is now: its norm and the thresholds (the search's start)."""
        norms = [self._weight(t).abs().sum(1) for t in self.table_rows]
        self.frozen_norm.copy_(torch.cat(norms))
        self.frozen_threshold.copy_(self.threshold.detach())
        self.frozen.fill_(True)

    def search(self, stage: Stage, evaluate: Evaluate) -> dict[str, float]:
        self.freeze_rows()
        for table, kept in self.kept_rows().items():
            if not kept.any():  # right for a noise field; say what to do if it is not one
                print(
                    f"[plexus] optembed: the supernet pruned every row of table {table!r} (its "
                    "rows' L1 norms all fell below their features' thresholds); if its features "
                    "carry signal, lower embedding.options.alpha or embedding.options.threshold_lr",
                    flush=True,
                )
        full = self.full_table_bytes()
        budget = None if self.options.search_budget is None else self.options.search_budget * full
        result = evolutionary_search(
            self.width_choices,
            evaluate,
            config=self.options.search,
            cost=lambda cand: float(self.bytes_at(cand)),
            budget=budget,
            on_generation=lambda h: print(
                f"[plexus] search generation {int(h['generation']) + 1}/{self.options.search.generations}: "
                f"best fitness {h['best']:.4f} (so far {h['best_so_far']:.4f})",
                flush=True,
            ),
        )
        self.apply_candidate(result.best)
        kept = self.kept_rows()
        compact_bytes = self.num_bytes()
        return {
            "search_fitness": result.fitness,  # validation AUC (CTR), Recall@20 (retrieval)
            "search_evaluations": float(result.evaluations),
            "kept_rows": float(sum(int(k.sum()) for k in kept.values())),
            "total_rows": float(sum(self.table_rows.values())),
            "compact_bytes": float(compact_bytes),
            "compact_fraction": compact_bytes / full,
            **{
                f"width.{n}": float(w) for n, w in zip(self.feature_names, result.best, strict=True)
            },
        }

    def apply_candidate(self, candidate: Any) -> None:
        widths = torch.as_tensor(list(candidate), dtype=torch.int64)
        if widths.shape != self.widths.shape:
            raise ValueError(f"a candidate needs {len(self.feature_names)} widths, got {candidate}")
        self.widths.copy_(widths)

    # -- sizes and the compact form ----------------------------------------------------------

    def full_table_bytes(self) -> int:
        """float32 bytes of full per-feature tables at this model's feature widths."""
        return 4 * sum(f.cardinality * self._widths[f.name] for f in self.features)

    def _probe_columns(self, widths: Sequence[int]) -> list[int]:
        """Columns each probe contributes under `widths` (0: the probe is cut off)."""
        dim, index = self.config.dim, {n: i for i, n in enumerate(self.feature_names)}
        cols = []
        for p in self.probes:
            w = int(widths[index[p.feature]])
            cols.append(w if self.combine == "sum" else max(0, min(dim, w - p.index * dim)))
        return cols

    def kept_rows(self, widths: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
        """Per table, the rows some probe still in use keeps (bool (rows,)): the compact rows."""
        if not bool(self.frozen):
            return {t: torch.ones(r, dtype=torch.bool) for t, r in self.table_rows.items()}
        cols = self._probe_columns(self.widths.tolist() if widths is None else widths)
        out = {}
        for k, table in enumerate(self.table_rows):
            active = [i for i, p in enumerate(self.probes) if p.table == table and cols[i] > 0]
            start = self._table_start[k]
            norms = self.frozen_norm[start : start + self.table_rows[table]]
            if not active:  # every feature reading the table dropped (width 0)
                out[table] = torch.zeros_like(norms, dtype=torch.bool)
                continue
            out[table] = norms > self.frozen_threshold[self._probe_feature[active]].min()
        return out

    def _stored_widths(self, widths: Sequence[int]) -> dict[str, int]:
        cols = self._probe_columns(widths)
        return {
            t: max(c for c, p in zip(cols, self.probes, strict=True) if p.table == t)
            for t in self.table_rows
        }

    def table_layouts(self, widths: Sequence[int]) -> dict[str, TableLayout]:
        """How each table is stored under `widths`: the smaller of its kept rows with an int32
        remap (plus levels if shared) and all its rows with a level each (few rows pruned);
        nothing for a table with no kept row (every lookup of it is a pruned row)."""
        kept, stored = self.kept_rows(widths), self._stored_widths(widths)
        level = _level_dtype(len(self.feature_names)).itemsize
        layouts = {}
        for table, rows in self.table_rows.items():
            n, width = int(kept[table].sum()), stored[table]
            if n == 0:
                layouts[table] = TableLayout(False, False, 0, 0, 0)
                continue
            shared = self._shared(table)
            remapped = 4 * n * width + 4 * rows + (level * n if shared else 0)
            dense = 4 * rows * width + level * rows
            if remapped <= dense:
                layouts[table] = TableLayout(True, shared, n, width, remapped)
            else:
                layouts[table] = TableLayout(False, True, rows, width, dense)
        return layouts

    def bytes_at(self, widths: Sequence[int]) -> int:
        """Bytes of the compact form under `widths`: values, remaps (int32), levels, OOV
        vectors and the widths themselves."""
        size = 8 * len(self.feature_names)
        size += sum(layout.bytes for layout in self.table_layouts(widths).values())
        return size + (0 if self.oov is None else 4 * self.oov.numel())

    def num_parameters(self) -> int:
        if not bool(self.frozen):
            return super().num_parameters()
        layouts = self.table_layouts(self.widths.tolist()).values()
        values = sum(layout.rows * layout.width for layout in layouts)
        return values + (0 if self.oov is None else self.oov.numel())

    def num_bytes(self) -> int:
        if not bool(self.frozen):
            return super().num_bytes()
        return self.bytes_at(self.widths.tolist())

    def compact(self) -> EmbeddingTables:
        if not bool(self.frozen):
            raise ValueError("only a searched (frozen) OptEmbed model has a compact form")
        return CompactOptEmbedTables(self)


class CompactOptEmbedTables(_MaskedTables):
    """OptEmbed's serving form: kept rows at their stored width, an int32 remap per table and a
    uint8 level per kept row of a shared table (row r is kept for feature f iff
    `rank[f] < level[r]`, `rank` ordering the features by threshold). Same outputs as the
    masked model in eval mode; hashing of a hashed base stays in the graph."""

    def __init__(self, source: OptEmbedTables) -> None:
        super().__init__(source.config, source.features)
        self._build(*source._plan, with_tables=False)
        self._layout(source._plan)
        self.widths.copy_(source.widths)
        widths = source.widths.tolist()
        kept = source.kept_rows(widths)
        order = torch.argsort(source.frozen_threshold, stable=True)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(len(order))
        sorted_thresholds = source.frozen_threshold[order].contiguous()
        self.register_buffer("rank", rank)
        self.values = nn.ParameterDict()
        layouts = source.table_layouts(widths)
        self._layouts = list(layouts.values())
        level_dtype = _level_dtype(len(order))
        for k, (table, layout) in enumerate(layouts.items()):
            if layout.rows == 0:
                self.values[table] = nn.Parameter(torch.zeros(0, 0), requires_grad=False)
                continue
            mask = kept[table] if layout.remapped else torch.ones_like(kept[table])
            weight = source._weight(table).detach()
            self.values[table] = nn.Parameter(
                weight[mask, : layout.width].clone(), requires_grad=False
            )
            if layout.remapped:
                remap = torch.full((len(mask),), -1, dtype=torch.int32)
                remap[mask] = torch.arange(int(mask.sum()), dtype=torch.int32)
                self.register_buffer(f"remap_{k}", remap)
            if layout.levels:
                start = source._table_start[k]
                norm = source.frozen_norm[start : start + len(mask)][mask]
                level = torch.searchsorted(sorted_thresholds, norm.contiguous())  # #{t_f < norm}
                self.register_buffer(f"level_{k}", level.to(level_dtype))
        self.oov = None
        if source.oov is not None:
            self.oov = nn.Parameter(source.oov.detach().clone(), requires_grad=False)
        self.eval()

    def _lookup(
        self, table_index: int, table: str, rows: torch.Tensor, probe: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        layout = self._layouts[table_index]
        if layout.rows == 0:  # no kept row (a field the supernet found to be noise): all pruned
            vectors = self.values[table].new_zeros((*rows.shape, self.config.dim))
            return vectors, vectors.new_zeros(rows.shape)
        keep = None
        if layout.remapped:
            compact_rows = getattr(self, f"remap_{table_index}")[rows].to(torch.int64)
            keep = compact_rows >= 0
            rows = torch.clamp(compact_rows, min=0)
        values = self.values[table]
        vectors = nn.functional.embedding(rows, values)
        pad = self.config.dim - values.shape[1]
        if pad:
            vectors = nn.functional.pad(vectors, (0, pad))
        if layout.levels:
            level = getattr(self, f"level_{table_index}")[rows].to(torch.int64)
            for_feature = self.rank[self._probe_feature[probe]] < level
            keep = for_feature if keep is None else keep & for_feature
        assert keep is not None
        return vectors, keep.to(vectors.dtype)

    def num_parameters(self) -> int:
        values = sum(v.numel() for v in self.values.values())
        return values + (0 if self.oov is None else self.oov.numel())

    def num_bytes(self) -> int:
        size = 8 * len(self.feature_names) + 4 * self.num_parameters()
        for name, buffer in self.named_buffers():
            if name.startswith(("remap_", "level_")):
                size += buffer.numel() * buffer.element_size()
        return size


class TableLayout(NamedTuple):
    """The compact storage of one table: `remapped` (kept rows + int32 remap) or all rows;
    `levels` (a per-row level saying for which features it is kept); stored rows x width
    (0 x 0, neither remapped nor levelled: no row kept, nothing stored)."""

    remapped: bool
    levels: bool
    rows: int
    width: int
    bytes: int


def _level_dtype(features: int) -> torch.dtype:
    return torch.uint8 if features < 256 else torch.int16
