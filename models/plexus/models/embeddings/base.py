"""The embedding-table interface every embedding method implements, and its config.

An embedding method turns a batch of sparse ids (a TorchRec `KeyedJaggedTensor`, one key per
feature) into one pooled vector per feature (a `KeyedTensor`, keys in feature order). Backbones
only see this interface, so full tables, the hashing trick, feature multiplexing and Unified
Embedding (and later OptEmbed, DNIS, ...) are interchangeable from the job config.

Initialisation: every table is drawn from N(0, 0.01^2) (`EMBEDDING_INIT_STD`), the range used by
DeepFM/FuxiCTR-style CTR models. PyTorch's N(0, 1) default makes FM's pairwise term and the
cross layers of DCN-v2 start far from zero and slows or destabilises training.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from plexus.models.embeddings.protocol import (
    SINGLE_STAGE,
    Evaluate,
    ParameterGroup,
    Stage,
    StepContext,
)
from plexus.platform.config import coerce_choice, from_dict
from plexus.platform.errors import ConfigError
from plexus.platform.feature_spec import Feature
from torch import nn
from torchrec import KeyedJaggedTensor, KeyedTensor, PoolingType

EMBEDDING_INIT_STD = 0.01


class EmbeddingMethod(str, enum.Enum):  # noqa: UP042  (str mixin, as FeatureKind)
    """Registry keys of the embedding methods (`embedding.method` in a job config)."""

    FULL = "full"
    HASHING = "hashing"
    MULTIPLEXED = "multiplexed"
    UNIFIED = "unified"
    OPTEMBED = "optembed"
    DNIS = "dnis"
    DSL = "dsl"
    MAGNITUDE_PRUNING = "magnitude_pruning"


PLAIN_METHODS = (
    EmbeddingMethod.FULL,
    EmbeddingMethod.HASHING,
    EmbeddingMethod.MULTIPLEXED,
    EmbeddingMethod.UNIFIED,
)


def coerce_base(options: Any, method: str) -> None:
    """Make a learned method's `options.base` a plain `EmbeddingMethod` (the tables it builds
    on), or fail naming `embedding.options.base` and the bases `method` accepts."""
    coerce_choice(options, "base", EmbeddingMethod, "embedding.options.base")
    if options.base not in PLAIN_METHODS:
        raise ConfigError(
            f"embedding.options.base={options.base.value!r}: {method} builds on "
            f"{', '.join(m.value for m in PLAIN_METHODS)}"
        )


class LearnedOptions:
    """The base of a learned method's typed `embedding.options` (a frozen dataclass with a
    `base` field: the plain tables it builds on). The benchmark sizes a learned row through
    these alone, so adding a learned method touches its own file and the registry only."""

    SIZED: ClassVar[tuple[str, ...]] = ()  # the option keys a benchmark row's budget sets

    @classmethod
    def at_budget(
        cls, base: str, budget: float, configured: Mapping[str, Any]
    ) -> tuple[float, dict[str, Any]]:
        """A benchmark row at `budget` of the full tables' bytes on `base`: (the base's
        `embedding.budget`, the options the budget sets: `base` and `SIZED` keys).
        `configured`: the job's other options of this method, which the row keeps."""
        raise NotImplementedError

    @property
    def sizes_first_order(self) -> bool:
        """Whether the method sizes FM/DeepFM's linear part itself; if not, a budgeted row on
        full tables cuts that part into one shared table at its budget."""
        return False


# Typed option classes of the methods that have options of their own (`embedding.options`),
# filled by `register_embedding(method, options=...)`.
_METHOD_OPTIONS: dict[EmbeddingMethod, type] = {}


_POOLING = {"sum": PoolingType.SUM, "mean": PoolingType.MEAN}


@dataclasses.dataclass(frozen=True, kw_only=True)
class EmbeddingConfig:
    """The `embedding:` section of a job config.

    `dim` is the width of one lookup (for `unified`, of one chunk). `budget` is the fraction of
    the full per-field tables' parameters (`full_table_parameters`) that the compressed methods
    may use; the table sizes follow from it. Method options:

    * `probes` (multiplexed): lookups per feature into the shared table, summed.
    * `chunks` (unified): chunks per feature, concatenated (feature width `chunks * dim`);
      `feature_chunks` overrides it per feature name; `num_tables`: physical tables the chunks
      are spread over round-robin.

    A learned method keeps its own options in a typed config beside it, given as
    `options: {...}` (e.g. `embedding: {method: optembed, options: {base: unified}}`) and
    validated into that class; the options above then describe its `base` tables.

    `first_order_budget` sizes the width-1 tables of FM/DeepFM's linear part apart from the
    main ones: one shared table of that fraction of their rows (Unified Embedding's layout at
    width 1). By default they are the base's tables at `budget`, so a learned method on full
    tables keeps them whole: at 1/16 of the bytes they would take half of its budget, while the
    plain methods at the same bytes compress them with their main tables. A learned method
    whose options set `prune_first_order` (DNIS) prunes them itself instead.
    """

    method: EmbeddingMethod = EmbeddingMethod.FULL
    dim: int = 16
    budget: float = 1.0
    pooling: str = "sum"
    probes: int = 1
    chunks: int = 1
    feature_chunks: dict[str, int] = dataclasses.field(default_factory=dict, hash=False)
    num_tables: int = 1
    first_order_budget: float | None = None
    options: Any = dataclasses.field(default=None, hash=False)

    def __post_init__(self) -> None:
        coerce_choice(self, "method", EmbeddingMethod, "embedding.method")
        self._coerce_options()
        if self.dim < 1:
            raise ConfigError(f"embedding.dim={self.dim} must be a positive integer (e.g. 16)")
        if not 0.0 < self.budget <= 1.0:
            raise ConfigError(
                f"embedding.budget={self.budget} must be in (0, 1]: it is the fraction of the "
                "full per-field tables' parameters"
            )
        if self.base_method is EmbeddingMethod.FULL and self.budget != 1.0:
            raise ConfigError(
                f"embedding.budget={self.budget} has no effect with full tables; "
                "use method hashing, multiplexed or unified for a smaller budget"
            )
        if self.first_order_budget is not None and not 0.0 < self.first_order_budget <= 1.0:
            raise ConfigError(
                f"embedding.first_order_budget={self.first_order_budget} must be in (0, 1]: the "
                "fraction of the first-order tables' rows kept (or remove it: the base's tables)"
            )
        if self.first_order_budget is not None and self._prunes_first_order:
            raise ConfigError(
                "embedding.first_order_budget and embedding.options.prune_first_order both size "
                "the linear part's tables: keep one"
            )
        if self.pooling not in _POOLING:
            raise ConfigError(f"embedding.pooling={self.pooling!r} must be 'sum' or 'mean'")
        for key in ("probes", "chunks", "num_tables"):
            if getattr(self, key) < 1:
                raise ConfigError(f"embedding.{key}={getattr(self, key)} must be >= 1")
        bad = {k: v for k, v in self.feature_chunks.items() if not isinstance(v, int) or v < 1}
        if bad:
            raise ConfigError(f"embedding.feature_chunks: chunk counts must be ints >= 1: {bad}")
        self._check_options_used()

    def _check_options_used(self) -> None:
        uses = {
            "probes": (self.probes != 1, EmbeddingMethod.MULTIPLEXED),
            "chunks": (self.chunks != 1, EmbeddingMethod.UNIFIED),
            "feature_chunks": (bool(self.feature_chunks), EmbeddingMethod.UNIFIED),
            "num_tables": (self.num_tables != 1, EmbeddingMethod.UNIFIED),
        }
        for key, (is_set, method) in uses.items():
            if is_set and self.base_method is not method:
                raise ConfigError(
                    f"embedding.{key} applies only to method '{method.value}', not "
                    f"'{self.method.value}'; remove it or set embedding.method={method.value}"
                )

    def _coerce_options(self) -> None:
        cls = _METHOD_OPTIONS.get(self.method)
        if cls is None:
            if self.options:
                raise ConfigError(
                    f"embedding.options is for learned methods; method '{self.method.value}' "
                    "has none: remove it"
                )
            object.__setattr__(self, "options", None)
        elif not isinstance(self.options, cls):
            value = {} if self.options is None else self.options
            object.__setattr__(self, "options", from_dict(cls, value, path="embedding.options"))

    @property
    def base_method(self) -> EmbeddingMethod:
        """The method whose tables are built: `options.base` for a learned method, else `method`."""
        base = getattr(self.options, "base", None)
        return self.method if base is None else EmbeddingMethod(base)

    def base_config(self) -> EmbeddingConfig:
        """This config as its plain base method (the tables a learned method starts from)."""
        return dataclasses.replace(self, method=self.base_method, options=None)

    def first_order_config(self) -> EmbeddingConfig:
        """The width-1 tables of a backbone's linear part: the base method, unlearned, as in
        the learned methods' official code (OptEmbed prunes only the field embeddings); with
        `first_order_budget`, one shared table of that fraction of their rows; with a learned
        method's `options.prune_first_order`, that method itself at width 1."""
        if self._prunes_first_order:  # the method's own tables, at width 1
            return dataclasses.replace(self, dim=1)
        if self.first_order_budget is None:
            return dataclasses.replace(self.base_config(), dim=1, first_order_budget=None)
        return EmbeddingConfig(
            method=EmbeddingMethod.UNIFIED,
            dim=1,
            budget=self.first_order_budget,
            pooling=self.pooling,
        )

    @property
    def _prunes_first_order(self) -> bool:
        """A learned method whose options ask it to prune the linear part itself."""
        return bool(getattr(self.options, "prune_first_order", False))

    @property
    def pooling_type(self) -> PoolingType:
        return _POOLING[self.pooling]


class EmbeddingTables(nn.Module, abc.ABC):
    """Sparse ids of F features -> one pooled vector per feature.

    `forward(features)` takes a `KeyedJaggedTensor` holding (at least) the keys `feature_names`
    with raw vocabulary ids, batch size B, and returns a `KeyedTensor` whose keys are
    `feature_names` in order, with `values()` of shape (B, sum(output_dims())).

    `forward_padded(ids, lengths)` computes the same values from padded dense tensors with plain
    gathers, hashing included: the path to export to ONNX, where the served graph takes raw ids.
    """

    feature_names: tuple[str, ...]
    # True for methods whose tables are plain `EmbeddingBagCollection`s trained by the optimiser
    # step alone (no masks, hooks or optimisers of their own): TorchRec's sharded kernels can
    # train them. Others are replicated when a job runs on several workers.
    shards_through_torchrec: ClassVar[bool] = False

    def __init__(self, config: EmbeddingConfig, features: Sequence[Feature]) -> None:
        super().__init__()
        self.features = sparse_features(features)
        self.feature_names = tuple(f.name for f in self.features)
        self.config = config

    @abc.abstractmethod
    def output_dims(self) -> dict[str, int]:
        """Width of each feature's pooled output, in feature order."""

    @abc.abstractmethod
    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor: ...

    @abc.abstractmethod
    def forward_padded(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Export path: ids (B, F, L) int64 (feature f's bag in `ids[:, f, :lengths[:, f]]`,
        features in `feature_names` order), lengths (B, F) -> (B, sum(output_dims())), equal to
        `forward(kjt).values()` for the same bags."""

    def num_parameters(self) -> int:
        """Embedding parameters the method serves with (what the budget is measured against)."""
        return sum(p.numel() for p in self.parameters())

    def num_bytes(self) -> int:
        """Bytes of the form the method serves from: float32 values plus any index arrays."""
        return 4 * self.num_parameters()

    def compact(self) -> EmbeddingTables:
        """The serving form (same outputs, pruned storage); plain methods are already compact."""
        return self

    # Training protocol (see `plexus.models.embeddings.protocol`): no-ops for plain methods.

    def extra_loss(self) -> torch.Tensor | None:
        """A term added to the task loss at every training step, or None."""
        return None

    def parameter_groups(self) -> tuple[ParameterGroup, ...]:
        """Parameters optimised apart from the rest (their own optimiser or learning rate)."""
        return ()

    def after_step(self, context: StepContext) -> None:
        """Called after every optimiser step (`protocol.StepContext`: optimiser state, steps)."""

    def bind(self, model: nn.Module) -> None:
        """Called once the whole model around these tables is built, before any state is
        loaded into it: a method that manages other parameters of the model registers its
        state for them here (Dynamic Sparse Learning's masks of the MLP)."""

    def stages(self) -> tuple[Stage, ...]:
        """The stages the job runs for this method, in order."""
        return SINGLE_STAGE

    def begin_stage(self, stage: Stage, previous: EmbeddingTables | None) -> None:
        """Take over the method's state from `previous` (the last stage's tables, or None)."""

    def search(self, stage: Stage, evaluate: Evaluate) -> dict[str, float]:
        """A `SEARCH` stage: choose the method's architecture with `evaluate(candidates)`."""
        raise NotImplementedError(f"{type(self).__name__} has no search stage")

    def apply_candidate(self, candidate: Any) -> None:
        """Use a search candidate until the next call (fitness evaluation)."""
        raise NotImplementedError(f"{type(self).__name__} has no search candidates")

    def figures(self) -> dict[str, Any]:
        """Plots of the method's state (name -> matplotlib figure), logged after each stage."""
        return {}


def sparse_features(features: Sequence[Feature]) -> tuple[Feature, ...]:
    """The sparse features, checked to have a usable id range."""
    sparse = tuple(f for f in features if f.is_sparse)
    if not sparse:
        raise ConfigError("embedding tables need at least one sparse (categorical) feature")
    for f in sparse:
        if f.cardinality < 1:
            raise ConfigError(
                f"feature {f.name!r} has cardinality {f.cardinality}; rebuild the spec"
            )
    names = [f.name for f in sparse]
    if len(set(names)) != len(names):
        raise ConfigError(f"feature names must be unique, got {names}")
    return sparse


def full_table_parameters(features: Sequence[Feature], dim: int) -> int:
    """Parameters of one full `cardinality x dim` table per sparse feature: the budget's 1.0."""
    return sum(f.cardinality for f in sparse_features(features)) * dim


def budget_rows(features: Sequence[Feature], budget: float) -> int:
    """Rows of `dim` width a method may use in total: `round(budget * sum(cardinality))`."""
    total = sum(f.cardinality for f in sparse_features(features))
    return max(1, int(budget * total + 0.5))


def pool_padded(rows: torch.Tensor, lengths: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pool looked-up vectors of padded bags like TorchRec does: (..., L, D) with lengths (...)
    -> (..., D); positions past a bag's length are ignored and an empty bag pools to zeros."""
    positions = torch.arange(rows.shape[-2], device=rows.device)
    mask = (positions < lengths.unsqueeze(-1)).to(rows.dtype)  # (..., L)
    pooled = (rows * mask.unsqueeze(-1)).sum(dim=-2)
    if pooling == "mean":
        pooled = pooled / lengths.clamp(min=1).unsqueeze(-1).to(rows.dtype)
    return pooled


def gather_rows(weight: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """`weight[index]` for an int64 `index` of any shape -> (*index.shape, *weight.shape[1:]),
    with a backward that sums each row's gradients in a fixed order.

    Advanced indexing differentiates through `index_put_(accumulate=True)`, which on CPU adds
    with atomics across threads: the sums, and so the training run, differed between two runs
    of the same seed (OptEmbed's thresholds, DNIS's alpha). `index_select` backs off to
    `index_add_`, which is deterministic."""
    flat = torch.index_select(weight, 0, index.reshape(-1))
    return flat.view(*index.shape, *weight.shape[1:])


def init_weight(weight: torch.Tensor) -> torch.Tensor:
    """The shared embedding initialiser, N(0, EMBEDDING_INIT_STD^2) in place."""
    with torch.no_grad():
        return nn.init.normal_(weight, mean=0.0, std=EMBEDDING_INIT_STD)
