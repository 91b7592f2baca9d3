"""OptEmbed's evolutionary search on toy fitnesses: optimum found, budget kept, cache, seeds."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from plexus.models.embeddings.evolution import (
    EvolutionConfig,
    SearchResult,
    breed,
    crossover,
    evolutionary_search,
    mutate,
)
from plexus.platform.errors import ConfigError, PlexusError

Candidate = tuple[int, ...]


class Recorder:
    """A fitness of `-sum |c - target|` that records every batch it is called with."""

    def __init__(self, target: Candidate) -> None:
        self.target = target
        self.calls: list[list[Candidate]] = []

    def __call__(self, cands: list[Candidate]) -> list[float]:
        self.calls.append(list(cands))
        return [-float(sum(abs(a - b) for a, b in zip(c, self.target, strict=True))) for c in cands]

    @property
    def seen(self) -> list[Candidate]:
        return [c for call in self.calls for c in call]


def _target(fields: int, high: int, seed: int) -> Candidate:
    return tuple(np.random.default_rng(1000 + seed).integers(1, high + 1, size=fields).tolist())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_finds_a_planted_optimum_with_the_default_generations(seed: int) -> None:
    # Without elites and with uniform redraws, 8 fields x 16 choices is only approached in 30
    # generations (next test); 6 fields x 4 choices is solved in ~499 of 500 seeds.
    target = _target(6, 4, seed)
    result = evolutionary_search(
        [range(1, 5)] * 6, Recorder(target), config=EvolutionConfig(seed=seed)
    )
    assert result.best == target and result.fitness == 0.0
    assert result.cost is None


def test_approaches_the_optimum_of_a_large_space() -> None:
    target = _target(8, 16, 0)
    fitness = Recorder(target)
    result = evolutionary_search([range(1, 17)] * 8, fitness)
    assert len(result.history) == 30
    assert result.history[0]["mean"] < -25  # random widths are ~42 away
    assert result.fitness >= -10
    assert result.fitness == fitness([result.best])[0]  # the returned best is intact
    so_far = [h["best_so_far"] for h in result.history]
    assert so_far == sorted(so_far) and so_far[-1] == result.fitness
    for h in result.history:
        assert h["worst"] <= h["mean"] <= h["best"] <= h["best_so_far"]
    assert [h["generation"] for h in result.history] == list(range(30))


def test_over_budget_candidates_are_never_evaluated_nor_returned() -> None:
    # The unconstrained optimum costs 16 * 8 = 128; the budget allows 40.
    fitness = Recorder((16,) * 8)
    result = evolutionary_search([range(1, 17)] * 8, fitness, cost=sum, budget=40)
    assert fitness.seen and all(sum(c) <= 40 for c in fitness.seen)
    assert result.cost == sum(result.best) == 40 and result.fitness == -(128 - 40)
    # Repair lowers one choice at a time, so repaired children fill the budget exactly.
    assert sum(sum(c) == 40 for c in fitness.seen) > len(fitness.seen) / 2


def test_a_budget_below_the_smallest_candidate_raises() -> None:
    with pytest.raises(
        ConfigError, match=r"budget 7 is below.*cost 8.*embedding\.options\.search_budget"
    ):
        evolutionary_search([range(1, 17)] * 8, Recorder((1,) * 8), cost=sum, budget=7)
    with pytest.raises(ConfigError, match="no cost function"):
        evolutionary_search([range(1, 17)] * 8, Recorder((1,) * 8), budget=7)


def test_a_budget_of_exactly_the_smallest_cost_returns_the_smallest() -> None:
    result = evolutionary_search(
        [[2, 4], [1, 3, 5]], Recorder((4, 5)), cost=sum, budget=3, config=_tiny(generations=3)
    )
    assert result.best == (2, 1) and result.evaluations == 1


def test_mutation_copies_its_parent() -> None:
    rng = np.random.default_rng(0)
    parent = np.zeros(32, dtype=np.int64)
    child = mutate(parent, [1000] * 32, 1.0, rng)
    assert not parent.any()  # the official code edits the parent in place
    assert child.any()
    assert (mutate(parent, [1000] * 32, 1e-9, rng) == parent).all()


def test_crossover_cuts_over_fields() -> None:
    rng = np.random.default_rng(0)
    a, b = np.zeros(5, dtype=np.int64), np.ones(5, dtype=np.int64)
    cuts = set()
    for _ in range(200):
        child = crossover(a, b, rng)
        cut = int((child == 0).sum())
        assert child.tolist() == [0] * cut + [1] * (5 - cut)  # a prefix of a, a suffix of b
        cuts.add(cut)
    assert cuts == {1, 2, 3, 4}  # every cut over the 5 fields, never a plain copy
    assert not a.any() and b.all()
    single = crossover(a[:1], b[:1], rng)
    assert single.tolist() == [0] and single is not a


def test_breeding_mutates_parents_in_rank_order_and_crosses_distinct_top_parents() -> None:
    ranked = [np.full(6, p, dtype=np.int64) for p in range(8)]  # parent p holds p everywhere
    config = EvolutionConfig(mutation=7, crossover=50, parents=3, mutation_prob=1e-12)
    children = breed(ranked, [8] * 6, config, np.random.default_rng(0))
    assert len(children) == 57
    assert [int(c[0]) for c in children[:7]] == [0, 1, 2, 0, 1, 2, 0]  # i mod parents
    assert all((c == c[0]).all() for c in children[:7])
    pairs = set()
    for child in children[7:]:
        x, y = int(child[0]), int(child[-1])
        assert x != y and {x, y} <= {0, 1, 2}  # two distinct parents of the top 3
        assert len(set(child.tolist())) == 2  # one cut: a prefix of x, a suffix of y
        pairs.add((x, y))
    assert len(pairs) == 6
    assert all((p == i).all() for i, p in enumerate(ranked))


def test_one_field_searches_its_choices() -> None:
    result = evolutionary_search([[3, 1, 2, 2]], Recorder((2,)), config=_tiny(generations=5))
    assert result.best == (2,)
    assert result.evaluations <= 3


def test_same_seed_same_result_other_seed_other_run() -> None:
    runs = []
    for seed in (3, 3, 4):
        fitness = Recorder(_target(8, 16, 1))
        result = evolutionary_search(
            [range(1, 17)] * 8, fitness, config=EvolutionConfig(seed=seed, generations=10)
        )
        runs.append((result, fitness.calls))
    assert runs[0] == runs[1]
    assert runs[0][1] != runs[2][1]


def test_fitness_is_called_once_per_generation_with_new_candidates_only() -> None:
    fitness = Recorder(_target(8, 16, 2))
    generations: list[dict[str, float]] = []
    result = evolutionary_search(
        [range(1, 17)] * 8, fitness, config=_tiny(generations=12), on_generation=generations.append
    )
    assert len(generations) == 12 and generations == result.history
    assert 1 <= len(fitness.calls) <= 12
    assert all(fitness.calls)  # never called with an empty batch
    assert len(fitness.calls[0]) == len(set(fitness.calls[0]))
    assert len(fitness.seen) == len(set(fitness.seen)) == result.evaluations


def test_a_small_space_is_evaluated_once_then_served_from_the_cache() -> None:
    fitness = Recorder((2, 2))
    result = evolutionary_search([[1, 2], [1, 2]], fitness, config=_tiny(generations=20))
    assert result.best == (2, 2) and result.evaluations <= 4
    assert len(fitness.seen) == result.evaluations
    assert len(fitness.calls) < 20


def test_fitness_returning_the_wrong_count_raises() -> None:
    with pytest.raises(PlexusError, match="fitness returned 1 scores for"):
        evolutionary_search([range(1, 17)] * 3, lambda cands: [0.0])
    with pytest.raises(PlexusError, match="nan"):
        evolutionary_search([range(1, 17)] * 3, lambda cands: [float("nan")] * len(cands))


@pytest.mark.parametrize(
    ("choices", "message"),
    [
        ([], "choices is empty"),
        ([range(1, 4), []], r"choices\[1\] is empty"),
        ([[1, 2.5]], r"choices\[0\] holds 2\.5"),
    ],
)
def test_bad_choices_raise(choices: list, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        evolutionary_search(choices, Recorder((1,)))


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"generations": 0}, "generations"),
        ({"mutation": 0}, "mutation"),
        ({"crossover": -1}, "crossover"),
        ({"parents": 0}, "parents"),
        ({"parents": 21}, "parents"),
        ({"mutation_prob": 0.0}, "mutation_prob"),
        ({"mutation_prob": 1.5}, "mutation_prob"),
        ({"generations": 2.0}, "generations"),
        ({"seed": "0"}, "seed"),
    ],
)
def test_config_errors_name_the_key(options: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"embedding\.options\.search\.{key}\b"):
        EvolutionConfig(**options)


def test_config_is_frozen_and_keyword_only() -> None:
    config = EvolutionConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seed = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        EvolutionConfig(30)  # type: ignore[misc]
    assert config.mutation + config.crossover == 20 and config.mutation_prob == 0.1
    assert SearchResult((1,), 0.0, None, 1, []).best == (1,)


def _tiny(**options: int) -> EvolutionConfig:
    return EvolutionConfig(mutation=4, crossover=4, parents=4, **options)
