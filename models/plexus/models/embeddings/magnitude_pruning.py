"""Post-hoc magnitude pruning with fine-tuning: the baseline Dynamic Sparse Learning must beat.

    embedding: {method: magnitude_pruning, dim: 16, options: {byte_budget: 0.25}}

Two training stages (Han et al., NeurIPS 2015, "Learning both Weights and Connections"; the
baseline of the DSL paper's Sec. 4):

1. **dense**: the base's tables train as usual (no mask).
2. **finetune**: at its start (`begin_stage`, on the dense stage's best weights) the weights of
   smallest magnitude are pruned until the stored form (`sparse_storage`, indices and pointers
   included) fits `byte_budget` of the tables' dense bytes, or to `density`; then the model
   trains on with the mask fixed, masked weights and their Adam moments kept at zero after
   every step (the same `MaskedTables.after_step` as DSL, without its prune and grow).

The dense stage reads no budget (`Stage.ignores`): jobs that differ only in `byte_budget` or
`density` share it, so magnitude pruning at three budgets trains one dense model.

`scope: global` (default) ranks the magnitudes of all tables together, so important fields
keep more; `table` prunes each table to the same density, like DSL's uniform masks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from plexus.models.embeddings.base import (
    EmbeddingConfig,
    EmbeddingMethod,
    EmbeddingTables,
    LearnedOptions,
    coerce_base,
)
from plexus.models.embeddings.protocol import Stage
from plexus.models.embeddings.registry import register_embedding
from plexus.models.embeddings.sparse_storage import (
    MaskedTables,
    byte_budget_row,
    check_fraction,
    sparse_bytes,
)
from plexus.platform.errors import ConfigError
from plexus.platform.feature_spec import Feature

DEFAULT_DENSITY = 0.5


@dataclasses.dataclass(frozen=True, kw_only=True)
class MagnitudePruningConfig(LearnedOptions):
    """`embedding.options` of `method: magnitude_pruning`."""

    SIZED = ("density", "byte_budget")

    base: EmbeddingMethod = EmbeddingMethod.FULL
    density: float | None = None  # kept weights; None: from byte_budget, else 0.5
    byte_budget: float | None = None  # serving bytes / the tables' dense float32 bytes
    scope: str = "global"  # rank magnitudes over all tables, or per "table"

    def __post_init__(self) -> None:
        coerce_base(self, "magnitude pruning")
        if self.density is not None and self.byte_budget is not None:
            raise ConfigError("embedding.options: give density or byte_budget, not both")
        check_fraction(self.density, "embedding.options.density")
        check_fraction(self.byte_budget, "embedding.options.byte_budget")
        if self.scope not in ("global", "table"):
            raise ConfigError(f"embedding.options.scope={self.scope!r}: use 'global' or 'table'")

    @classmethod
    def at_budget(
        cls, base: str, budget: float, configured: Mapping[str, Any]
    ) -> tuple[float, dict[str, Any]]:
        """The benchmark's row at `budget` of the full tables' bytes (`byte_budget_row`)."""
        return byte_budget_row(base, budget)


@register_embedding(EmbeddingMethod.MAGNITUDE_PRUNING, options=MagnitudePruningConfig)
class MagnitudePruningTables(MaskedTables):
    """Dense tables, then (from the `finetune` stage on) the same tables pruned by magnitude."""

    def __init__(self, config: EmbeddingConfig, features: Sequence[Feature]) -> None:
        super().__init__(config, features)
        self.options: MagnitudePruningConfig = config.options
        density = self.options.density
        if density is None and self.options.byte_budget is None:
            density = DEFAULT_DENSITY
        self._setup(config.base_config(), density, self.options.byte_budget)
        self.register_buffer("pruned", torch.tensor(False))

    def _sparse(self) -> bool:
        return bool(self.pruned)

    def stages(self) -> tuple[Stage, ...]:
        # The dense stage reads no budget: jobs at other budgets reuse it.
        return (Stage("dense", ignores=("density", "byte_budget")), Stage("finetune"))

    def begin_stage(self, stage: Stage, previous: EmbeddingTables | None) -> None:
        if stage.name == "finetune" and not bool(self.pruned):
            self.prune()

    @torch.no_grad()
    def prune(self) -> None:
        """Keep the largest-magnitude weights within the budget; zero the rest (once)."""
        weights = [w.detach() for w in self.weights()]
        if self.options.scope == "table":
            kept = self.target_nonzeros
        else:
            kept = self._global_counts(weights)
        for weight, mask, count in zip(weights, self.masks(), kept, strict=True):
            mask.zero_()
            top = torch.topk(weight.abs().reshape(-1), count).indices
            mask.view(-1)[top] = True
        self.pruned.fill_(True)
        self.apply_masks()

    def _global_counts(self, weights: list[torch.Tensor]) -> list[int]:
        """Per-table counts of the globally largest magnitudes: as many in all as the byte
        budget allows with each table's own indices and pointers (at least one per table)."""
        dim = self.config.dim
        total = sum(self.target_nonzeros)
        ranked = torch.sort(torch.cat([w.abs().reshape(-1) for w in weights]), descending=True)
        rows = list(self.table_rows.values())
        budget = sum(
            sparse_bytes(r, dim, n) for r, n in zip(rows, self.target_nonzeros, strict=True)
        )

        def counts(k: int) -> list[int]:
            threshold = ranked.values[k - 1]
            return [max(1, int((w.abs() >= threshold).sum())) for w in weights]

        def fits(k: int) -> bool:
            return (
                sum(sparse_bytes(r, dim, n) for r, n in zip(rows, counts(k), strict=True)) <= budget
            )

        lo, hi = 1, len(ranked.values)  # the largest k that fits (ties may keep a few more)
        if fits(hi):
            return counts(hi)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
        found = counts(lo)
        if sum(found) < min(total, len(weights)):
            raise ConfigError("magnitude pruning: the byte budget leaves no weight")
        return found


__all__ = ["MagnitudePruningConfig", "MagnitudePruningTables"]
