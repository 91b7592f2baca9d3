"""One contract every registered embedding method passes, at tiny sizes (10 rows, dim 4)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from plexus.models.embeddings import (
    EmbeddingConfig,
    EmbeddingMethod,
    budget_rows,
    build_embedding_tables,
    full_table_parameters,
    learned_methods,
    registered_methods,
)
from plexus.models.embeddings.hashed import HashedEmbeddingTables
from plexus.models.embeddings.sparse_storage import MaskedTables
from plexus.platform.config import from_dict, to_dict
from plexus.platform.errors import ConfigError
from tiny_ctr_data import random_kjt, sparse_features
from torchrec import KeyedJaggedTensor

DIM = 4
# Extra option sets per method; every registered method also runs with its defaults.
OPTIONS: dict[EmbeddingMethod, list[dict]] = {
    EmbeddingMethod.FULL: [{"pooling": "mean"}],
    EmbeddingMethod.HASHING: [
        {"budget": 0.3, "pooling": "mean"},
        {"budget": 0.9},
    ],  # 0.9: identity rows
    EmbeddingMethod.MULTIPLEXED: [{"budget": 0.3, "probes": 2}],
    EmbeddingMethod.UNIFIED: [
        {"budget": 0.4, "chunks": 2, "num_tables": 2},
        {
            "budget": 0.5,
            "feature_chunks": {"user": 3, "hour": 1},
            "num_tables": 3,
            "pooling": "mean",
        },
    ],
    # The learned methods over each base: `budget` and the base's options describe the base.
    EmbeddingMethod.OPTEMBED: [
        {"budget": 0.5, "chunks": 2, "num_tables": 2, "options": {"base": "unified"}},
        {"budget": 0.5, "probes": 2, "pooling": "mean", "options": {"base": "multiplexed"}},
        {"budget": 0.3, "options": {"base": "hashing"}},
        {"options": {"search_budget": 0.25, "retrain_init": "fresh"}},
    ],
    EmbeddingMethod.DSL: [
        {"options": {"byte_budget": 0.4}},
        {"budget": 0.5, "chunks": 2, "num_tables": 2, "options": {"base": "unified"}},
        {"budget": 0.5, "probes": 2, "pooling": "mean", "options": {"base": "multiplexed"}},
        {"budget": 0.3, "options": {"base": "hashing", "density": 0.3}},
    ],
    EmbeddingMethod.MAGNITUDE_PRUNING: [
        {"budget": 0.5, "chunks": 2, "options": {"base": "unified", "byte_budget": 0.25}},
    ],
}
OPTIONS[EmbeddingMethod.DNIS] = [
    {"options": {"search_budget": 0.25, "retrain_init": "fresh"}},  # what stages may share
    {"budget": 0.5, "chunks": 2, "num_tables": 2, "options": {"base": "unified"}},
    {"budget": 0.5, "probes": 2, "pooling": "mean", "options": {"base": "multiplexed"}},
    {"budget": 0.3, "options": {"base": "hashing", "blocks": [2, 5]}},
]
LEARNED = set(learned_methods())  # they default to the full tables as their base


def _cases() -> list:
    cases = []
    for method in registered_methods():
        base = {"method": method.value, "dim": DIM}
        if method not in (EmbeddingMethod.FULL, *LEARNED):  # learned methods default to full
            base["budget"] = 0.5
        for options in [{}, *OPTIONS.get(method, [])]:
            config = from_dict(EmbeddingConfig, {**base, **options})
            label = "-".join([method.value, *(f"{k}={v}" for k, v in options.items())])
            cases.append(pytest.param(config, id=label))
    return cases


CASES = _cases()


def _build(config: EmbeddingConfig):
    """The tables in eval mode: the outputs a served model computes (a supernet's training
    forward draws random widths, tested with the method)."""
    torch.manual_seed(0)
    return build_embedding_tables(config, sparse_features()).eval()


def test_every_enum_member_is_registered() -> None:
    assert set(registered_methods()) == set(EmbeddingMethod)


@pytest.mark.parametrize("config", CASES)
def test_shapes_and_keys(config: EmbeddingConfig) -> None:
    tables = _build(config)
    names = tuple(f.name for f in sparse_features())
    assert tables.feature_names == names
    dims = tables.output_dims()
    assert list(dims) == list(names) and all(d % DIM == 0 for d in dims.values())
    out = tables(random_kjt(batch=5))
    assert out.keys() == list(names)
    assert out.length_per_key() == [dims[n] for n in names]
    assert out.values().shape == (5, sum(dims.values()))
    assert torch.isfinite(out.values()).all()


@pytest.mark.parametrize("config", CASES)
def test_input_key_order_does_not_matter(config: EmbeddingConfig) -> None:
    tables = _build(config)
    kjt = random_kjt(batch=4, seed=3)
    reversed_keys = kjt.permute(list(reversed(range(len(kjt.keys())))))
    torch.testing.assert_close(tables(reversed_keys).values(), tables(kjt).values())


@pytest.mark.parametrize("config", CASES)
def test_backward_reaches_every_table(config: EmbeddingConfig) -> None:
    tables = _build(config)
    tables(random_kjt(batch=64, empty_bags=False)).values().pow(2).sum().backward()
    params = list(tables.parameters())
    assert params
    for p in params:
        assert p.grad is not None and p.grad.abs().sum() > 0


@pytest.mark.parametrize("config", CASES)
def test_gradients_are_bit_identical_between_runs_on_two_threads(config: EmbeddingConfig) -> None:
    """The same seed must train the same model: every gradient, summed from many lookups of few
    rows across two threads, is equal bit for bit between two backward passes (the training
    forward, so a supernet's width draws are in it, from one seed each time)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        kjt = random_kjt(batch=50_000, seed=5, empty_bags=False)
        grads = []
        for _ in range(2):
            tables = _build(config).train()
            torch.manual_seed(1)
            tables(kjt).values().sin().sum().backward()
            grads.append([p.grad.clone() for p in tables.parameters()])
    finally:
        torch.set_num_threads(threads)
    for first, second in zip(*grads, strict=True):
        assert torch.equal(first, second)


def _ignored_defaults(config: EmbeddingConfig) -> dict:
    """The options the first stage ignores (`Stage.ignores`) at their defaults, when the case
    gives one of them another value; else {} (nothing to compare)."""
    if config.options is None:
        return {}
    ignored = set(_build(config).stages()[0].ignores)
    fields = [f for f in dataclasses.fields(config.options) if f.name in ignored]
    defaults = {f.name: f.default for f in fields}
    if all(getattr(config.options, k) == v for k, v in defaults.items()):
        return {}
    return defaults


SHARED = [c for c in CASES if _ignored_defaults(c.values[0])]


def test_every_method_with_a_shared_stage_is_checked() -> None:
    shared = {c.values[0].method for c in SHARED}
    for config in (c.values[0] for c in CASES):
        if _build(config).stages()[0].ignores:
            assert config.method in shared, f"give {config.method.value} a case that varies them"


@pytest.mark.parametrize("config", SHARED)
def test_options_a_stage_ignores_change_nothing_it_trains(config: EmbeddingConfig) -> None:
    """`Stage.ignores` lets jobs share a stage: with those options at their defaults the tables
    start from the same state and give the same outputs and gradients."""
    tables = _build(config)
    defaults = _ignored_defaults(config)
    other = _build(
        dataclasses.replace(config, options=dataclasses.replace(config.options, **defaults))
    )
    first, second = tables.state_dict(), other.state_dict()
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key
    kjt = random_kjt(batch=16, empty_bags=False)
    for t in (tables, other):
        t.train()
        torch.manual_seed(1)
        t(kjt).values().pow(2).sum().backward()
    for (name, a), b in zip(tables.named_parameters(), other.parameters(), strict=True):
        assert torch.equal(a.grad, b.grad), name


@pytest.mark.parametrize("config", CASES)
def test_num_parameters_matches_the_budget(config: EmbeddingConfig) -> None:
    tables = _build(config)
    features = sparse_features()
    counted = sum(p.numel() for p in tables.parameters())
    if isinstance(tables, MaskedTables) and tables._sparse():  # served: the non-zeros
        assert tables.num_parameters() == sum(tables.nonzeros()) < counted
        assert tables.num_bytes() < 4 * counted
    else:
        assert tables.num_parameters() == counted
    # A learned method's own parameters (thresholds, ...) come on top of its base tables'.
    counted -= sum(
        p.numel() for name, p in tables.named_parameters() if not name.startswith("ebc.")
    )
    if config.base_method is EmbeddingMethod.FULL:
        assert counted == full_table_parameters(features, DIM) == (10 + 10 + 10 + 3) * DIM
    else:
        assert counted == budget_rows(features, config.budget) * DIM
        assert counted == math.floor(config.budget * 33 + 0.5) * DIM  # rows rounded half up


@pytest.mark.parametrize("config", CASES)
def test_state_dict_round_trip_reproduces_outputs(config: EmbeddingConfig) -> None:
    tables = _build(config)
    kjt = random_kjt(batch=8, seed=1)
    expected = tables(kjt).values()
    torch.manual_seed(123)  # different init: only the loaded state may make them agree
    fresh = build_embedding_tables(config, sparse_features()).eval()
    assert not torch.equal(fresh(kjt).values(), expected)
    fresh.load_state_dict(tables.state_dict())
    torch.testing.assert_close(fresh(kjt).values(), expected, rtol=0, atol=0)


@pytest.mark.parametrize("config", CASES)
def test_multi_valued_pooling(config: EmbeddingConfig) -> None:
    """A bag pools its ids' lookups: sum = sum of singles, mean = their average; empty -> 0."""
    tables = _build(config)
    names = [f.name for f in sparse_features()]
    ones = {n: ([1, 1, 1], [1, 1, 1]) for n in names}

    def run(tags_values: list[int], tags_lengths: list[int]) -> torch.Tensor:
        values, lengths = [], []
        for n in names:
            v, lens = (tags_values, tags_lengths) if n == "tags" else ones[n]
            values += v
            lengths += lens
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=names, values=torch.tensor(values), lengths=torch.tensor(lengths)
        )
        return tables(kjt).to_dict()["tags"]

    # rows: bag {2, 7}, single 2, single 7 ... and an empty bag
    out = run([2, 7, 2, 7], [2, 1, 1])
    expected = out[1] + out[2] if config.pooling == "sum" else (out[1] + out[2]) / 2
    torch.testing.assert_close(out[0], expected)
    empty = run([2], [0, 1, 0])
    assert torch.count_nonzero(empty[0]) == 0 and torch.count_nonzero(empty[2]) == 0


@pytest.mark.parametrize(
    "config",
    [c for c in CASES if c.values[0].method not in (EmbeddingMethod.FULL, *LEARNED)],
)
def test_fused_lookup_equals_the_torchrec_lookup(config: EmbeddingConfig) -> None:
    """Hashed methods pool with one embedding_bag per shared table unless sharded (then through
    the EBC): both paths must agree, gradients included."""
    tables = _build(config)
    assert isinstance(tables, HashedEmbeddingTables)
    probes = tables.remap(random_kjt(batch=6, seed=2))
    fused, torchrec_path = tables._pool_per_table(probes), tables._pool_torchrec(probes)
    torch.testing.assert_close(fused, torchrec_path)
    weight = next(tables.parameters())
    (g1,) = torch.autograd.grad(fused.pow(2).sum(), weight)
    (g2,) = torch.autograd.grad(torchrec_path.pow(2).sum(), weight)
    torch.testing.assert_close(g1, g2)


@pytest.mark.parametrize("config", [c for c in CASES if c.values[0].method is EmbeddingMethod.FULL])
def test_full_lookup_equals_the_torchrec_lookup(config: EmbeddingConfig) -> None:
    """Unsharded full tables pool with `pooled_lookup`, sharded ones through the EBC: same
    values and the same table gradients."""
    tables = _build(config)
    features = random_kjt(batch=6, seed=2)
    ours, torchrec_path = tables(features).values(), tables.ebc(features).values()
    torch.testing.assert_close(ours, torchrec_path)
    weights = list(tables.parameters())
    g1 = torch.autograd.grad(ours.pow(2).sum(), weights)
    g2 = torch.autograd.grad(torchrec_path.pow(2).sum(), weights)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b)


def test_full_rejects_a_budget_and_options_name_their_method() -> None:
    with pytest.raises(ConfigError, match="embedding.budget"):
        EmbeddingConfig(method=EmbeddingMethod.FULL, budget=0.5)
    with pytest.raises(ConfigError, match="embedding.probes"):
        EmbeddingConfig(method=EmbeddingMethod.HASHING, budget=0.5, probes=2)
    with pytest.raises(ConfigError, match="method"):
        from_dict(EmbeddingConfig, {"method": "hashed"})
    with pytest.raises(ConfigError, match="embedding.method"):
        EmbeddingConfig(method="hashed")
    with pytest.raises(ConfigError, match="embedding.pooling"):
        EmbeddingConfig(pooling="max")


# --- Determinism across processes: the same state and ids give the same outputs elsewhere. ---

_CHILD = """
import json, sys, torch
from plexus.models.embeddings import EmbeddingConfig, build_embedding_tables
from plexus.platform.config import from_dict
sys.path.insert(0, sys.argv[2])
from tiny_ctr_data import sparse_features
saved = torch.load(sys.argv[1], weights_only=False)
outputs = []
for config, state, kjt in zip(saved["configs"], saved["states"], saved["inputs"]):
    tables = build_embedding_tables(from_dict(EmbeddingConfig, json.loads(config)), sparse_features())
    tables.load_state_dict(state)
    tables.eval()
    outputs.append(tables(kjt).values())
torch.save(outputs, sys.argv[1] + ".out")
"""


@pytest.fixture(scope="module")
def child_outputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[list, list]:
    """Outputs of every case computed here and in one fresh Python process (other hash seed)."""
    path = tmp_path_factory.mktemp("determinism") / "saved.pt"
    configs = [c.values[0] for c in CASES]
    states, inputs, outputs = [], [], []
    for config in configs:
        tables = _build(config)
        kjt = random_kjt(batch=16, seed=7)
        states.append(tables.state_dict())
        inputs.append(kjt)
        outputs.append(tables(kjt).values().detach())
    torch.save(
        {"configs": [json.dumps(to_dict(c)) for c in configs], "states": states, "inputs": inputs},
        path,
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), str(Path(__file__).parent)],
        check=True,
        env=env,
        timeout=120,
    )
    return outputs, torch.load(str(path) + ".out", weights_only=False)


def test_outputs_identical_across_processes(child_outputs: tuple[list, list]) -> None:
    here, there = child_outputs
    assert len(here) == len(there) == len(CASES)
    for case, a, b in zip(CASES, here, there, strict=True):
        assert torch.equal(a, b), f"{case.id}: outputs differ across processes"
