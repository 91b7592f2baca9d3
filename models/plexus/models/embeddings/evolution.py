"""Evolutionary search of OptEmbed (Lyu et al., CIKM 2022), Stage 2: Sec. 3.3 and Algorithm 1.

After the supernet is trained, OptEmbed searches one integer per field (the embedding width it
keeps) by a genetic algorithm whose fitness is the supernet's validation AUC with those widths.
This module is that search, generic over per-field integer choices and an arbitrary fitness, so
it knows nothing about torch, the supernet or how candidates are evaluated: the caller evaluates a
whole generation at once (in parallel if it likes).

Deviations from the official code (github.com/fuyuanlyu/OptEmbed, `evolution.py`), all bug fixes
or additions; the algorithm is otherwise the same (no elites, `keep_num = 0`):

- mutation copies its parent; the official code edits the parent tensor in place, so parents
  and the recorded best-so-far change under it;
- crossover cuts over the field count; the official code draws the cut over the embedding width,
  and any cut past the last field makes the child a copy of its first parent;
- crossover parents are two distinct members of the top `parents`; the official code draws them
  from `0..crossover_num` inclusive, possibly twice the same;
- the best-so-far is compared with the best fitness of the sorted population; the official code
  compares it with the unsorted population's first entry;
- mutated values come from the field's choices; the official code never draws width 0 on
  mutation but does at initialisation;
- fitness is cached per candidate (it is deterministic), and an optional cost `budget` keeps
  infeasible candidates out of the search (Sec. 3.3 searches without a constraint).

Example:
    >>> widths = [range(1, 17)] * 4  # 4 fields, each keeps 1..16 dimensions
    >>> result = evolutionary_search(
    ...     widths, lambda cands: [supernet_auc(c) for c in cands], cost=sum, budget=32
    ... )
    >>> result.best, result.cost  # e.g. ((11, 7, 7, 7), 32.0)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np
from plexus.platform.errors import ConfigError, PlexusError

__all__ = ["EvolutionConfig", "SearchResult", "evolutionary_search"]

Candidate = tuple[int, ...]


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvolutionConfig:
    """The genetic algorithm's knobs; nested as `search:` in the OptEmbed config.

    The population is `mutation + crossover` candidates (20 by default, as in the paper's code);
    children are bred from its `parents` fittest members.
    """

    generations: int = 30
    mutation: int = 10
    crossover: int = 10
    parents: int = 15  # k = 15 in the paper's settings (official README)
    mutation_prob: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        for key in ("generations", "mutation", "crossover", "parents"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(
                    f"embedding.options.search.{key}: must be an integer >= 1, got {value!r}"
                )
        population = self.mutation + self.crossover
        if self.parents > population:
            raise ConfigError(
                f"embedding.options.search.parents={self.parents} exceeds the population "
                f"(mutation + crossover = {population}): lower parents or grow the population"
            )
        prob = self.mutation_prob
        if isinstance(prob, bool) or not isinstance(prob, int | float) or not 0 < prob <= 1:
            raise ConfigError(
                f"embedding.options.search.mutation_prob: must be in (0, 1], got {prob!r}"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(
                f"embedding.options.search.seed: must be an integer, got {self.seed!r}"
            )


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """The fittest feasible candidate seen in any generation, and the search's trace.

    `history` holds one entry per generation with keys `generation`, `best`, `worst`, `mean`
    (fitness over that generation's population) and `best_so_far`.
    """

    best: Candidate
    fitness: float
    cost: float | None
    evaluations: int
    history: list[dict[str, float]]


def evolutionary_search(
    choices: Sequence[Sequence[int]],
    fitness: Callable[[list[Candidate]], list[float]],
    *,
    config: EvolutionConfig = EvolutionConfig(),  # noqa: B008  (frozen, so safe to share)
    cost: Callable[[Candidate], float] | None = None,
    budget: float | None = None,
    on_generation: Callable[[dict[str, float]], None] | None = None,
) -> SearchResult:
    """Search one value per field maximising `fitness` (Algorithm 1 of the paper).

    `choices[f]` are field f's allowed values (duplicates dropped, ordered ascending). `fitness`
    is called at most once per generation, with that generation's candidates that were never
    evaluated before, and returns one score per candidate (higher is better); it is never called
    twice for the same candidate. With `budget`, candidates whose `cost` exceeds it are repaired
    (fields lowered one choice at a time, a random field each step) before anyone sees them, so
    `cost` should not decrease when a field grows. The search is deterministic for
    `config.seed`.
    """
    fields = _normalise_choices(choices)
    if budget is not None:
        if cost is None:
            raise ConfigError(
                "embedding.options.search_budget is set but no cost function was given"
            )
        if math.isnan(budget):
            raise ConfigError("embedding.options.search_budget: must be a number, got nan")
        smallest = tuple(values[0] for values in fields)
        floor = float(cost(smallest))
        if floor > budget:
            raise ConfigError(
                f"the search budget {budget:g} is below the smallest possible candidate's cost "
                f"{floor:g} (every field at its smallest choice): raise "
                "embedding.options.search_budget"
            )
    search = _Search(fields, fitness, config, cost, budget)
    return search.run(on_generation)


def _normalise_choices(choices: Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
    if len(choices) == 0:
        raise ConfigError("evolutionary_search: choices is empty; give one sequence per field")
    fields = []
    for f, values in enumerate(choices):
        clean = set()
        for value in values:
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise ConfigError(
                    f"evolutionary_search: choices[{f}] holds {value!r}; choices must be integers"
                )
            clean.add(int(value))
        if not clean:
            raise ConfigError(
                f"evolutionary_search: choices[{f}] is empty; every field needs at least one value"
            )
        fields.append(tuple(sorted(clean)))
    return fields


def mutate(
    parent: np.ndarray, sizes: Sequence[int], prob: float, rng: np.random.Generator
) -> np.ndarray:
    """A copy of `parent` (choice indices) with each field redrawn uniformly with `prob`."""
    child = parent.copy()
    for f, size in enumerate(sizes):
        if rng.random() < prob:
            child[f] = rng.integers(size)
    return child


def crossover(a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`a[:cut] + b[cut:]` with the cut uniform over the fields (1..F-1); a copy of `a` if F == 1."""
    if len(a) == 1:
        return a.copy()
    cut = int(rng.integers(1, len(a)))
    return np.concatenate([a[:cut], b[cut:]])


def breed(
    ranked: Sequence[np.ndarray],
    sizes: Sequence[int],
    config: EvolutionConfig,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    """The next population (no elites, as `keep_num = 0` in the official code).

    `mutation` children mutate parent `i mod parents` of the population `ranked` fittest first,
    then `crossover` children cross two distinct parents of the top `parents`; with a single
    parent a crossover child is its copy.
    """
    parents = ranked[: config.parents]
    children = [
        mutate(parents[i % len(parents)], sizes, config.mutation_prob, rng)
        for i in range(config.mutation)
    ]
    for _ in range(config.crossover):
        if len(parents) == 1:
            children.append(parents[0].copy())
            continue
        x, y = rng.choice(len(parents), size=2, replace=False)
        children.append(crossover(parents[x], parents[y], rng))
    return children


class _Search:
    """One run's state: the choices, the caches and the random stream."""

    def __init__(
        self,
        fields: list[tuple[int, ...]],
        fitness: Callable[[list[Candidate]], list[float]],
        config: EvolutionConfig,
        cost: Callable[[Candidate], float] | None,
        budget: float | None,
    ) -> None:
        self.fields = fields
        self.sizes = [len(values) for values in fields]
        self.fitness = fitness
        self.config = config
        self.cost = cost
        self.budget = budget
        self.rng = np.random.default_rng(config.seed)
        self.scores: dict[Candidate, float] = {}
        self.costs: dict[Candidate, float] = {}

    def values(self, index: np.ndarray) -> Candidate:
        return tuple(values[i] for values, i in zip(self.fields, index.tolist(), strict=True))

    def cost_of(self, candidate: Candidate) -> float:
        assert self.cost is not None
        if candidate not in self.costs:
            value = float(self.cost(candidate))
            if math.isnan(value):
                raise PlexusError(f"evolutionary_search: cost returned nan for {candidate}")
            self.costs[candidate] = value
        return self.costs[candidate]

    def repair(self, index: np.ndarray) -> np.ndarray:
        """Lower random fields one choice at a time until the candidate fits the budget."""
        if self.budget is None:
            return index
        while self.cost_of(self.values(index)) > self.budget:
            lowerable = np.flatnonzero(index > 0)
            # Cannot be empty: the all-smallest candidate was checked to fit.
            index[lowerable[self.rng.integers(len(lowerable))]] -= 1
        return index

    def evaluate(self, population: list[Candidate]) -> list[float]:
        new = list(dict.fromkeys(c for c in population if c not in self.scores))
        if new:
            scores = list(self.fitness(list(new)))  # a copy: callers may reorder it
            if len(scores) != len(new):
                raise PlexusError(
                    f"evolutionary_search: fitness returned {len(scores)} scores for "
                    f"{len(new)} candidates; return exactly one score per candidate, in order"
                )
            for candidate, score in zip(new, scores, strict=True):
                score = float(score)
                if math.isnan(score):
                    raise PlexusError(
                        f"evolutionary_search: fitness returned nan for {candidate}; "
                        "return a number (use -inf to reject a candidate)"
                    )
                self.scores[candidate] = score
        return [self.scores[c] for c in population]

    def run(self, on_generation: Callable[[dict[str, float]], None] | None) -> SearchResult:
        config = self.config
        size = config.mutation + config.crossover
        population = [
            self.repair(np.array([self.rng.integers(n) for n in self.sizes], dtype=np.int64))
            for _ in range(size)
        ]
        best: Candidate | None = None
        best_score = -math.inf
        history: list[dict[str, float]] = []
        for generation in range(config.generations):
            candidates = [self.values(index) for index in population]
            scores = self.evaluate(candidates)
            order = sorted(range(size), key=lambda i: -scores[i])  # stable: ties keep order
            top = order[0]
            if best is None or scores[top] > best_score:
                best, best_score = candidates[top], scores[top]
            entry: dict[str, float] = {
                "generation": generation,
                "best": scores[top],
                "worst": scores[order[-1]],
                "mean": float(np.mean(scores)),
                "best_so_far": best_score,
            }
            history.append(entry)
            if on_generation is not None:
                on_generation(dict(entry))
            if generation + 1 < config.generations:
                ranked = [population[i] for i in order]
                children = breed(ranked, self.sizes, config, self.rng)
                population = [self.repair(child) for child in children]
        assert best is not None
        return SearchResult(
            best=best,
            fitness=best_score,
            cost=None if self.cost is None else self.cost_of(best),
            evaluations=len(self.scores),
            history=history,
        )
