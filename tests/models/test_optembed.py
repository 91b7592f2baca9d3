"""OptEmbed's own behaviour: the surrogate step, thresholds that learn, train-only width
sampling, the search over the tables, the compact serving form and its ONNX graph."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from plexus.models.backbones import Backbone, ModelConfig, build_ctr_model
from plexus.models.batch import batch_from_arrow, pad_sparse
from plexus.models.embeddings import EmbeddingConfig, build_embedding_tables, protocol
from plexus.models.embeddings.optembed import BinaryStep, OptEmbedTables
from plexus.platform.config import from_dict
from plexus.platform.errors import ConfigError
from tiny_ctr_data import (
    onnxruntime_logits,
    planted_table,
    random_kjt,
    sparse_features,
    tiny_spec,
)

SPARSE = [f.name for f in tiny_spec().sparse]
BASES = {
    "full": {"dim": 4},
    "unified": {"dim": 2, "budget": 0.5, "chunks": 2, "options": {"base": "unified"}},
    "multiplexed": {"dim": 4, "budget": 0.5, "probes": 2, "options": {"base": "multiplexed"}},
}


def _config(base: str, **options) -> EmbeddingConfig:
    raw = {"method": "optembed", **BASES[base]}
    raw["options"] = {**raw.get("options", {}), **options}
    return from_dict(EmbeddingConfig, raw)


def _tables(base: str = "full", **options) -> OptEmbedTables:
    torch.manual_seed(0)
    tables = build_embedding_tables(_config(base, **options), sparse_features())
    assert isinstance(tables, OptEmbedTables)
    return tables


def _searched(
    tables: OptEmbedTables,
    shift: float = 0.3,
    *,
    noise: int | None = None,
    dropped: int | None = None,
) -> OptEmbedTables:
    """Trained-looking rows, thresholds that prune part of them, a middle width per feature;
    feature `noise`'s threshold above every row (its whole table pruned, as the 5M-row set's
    supernet pruned the tables of its noise fields), feature `dropped` at width 0."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in tables.parameters():
            p.add_(torch.randn_like(p) * shift)
        median = torch.cat([tables._weight(t).abs().sum(1) for t in tables.table_rows]).median()
        tables.threshold.copy_(median + 0.05 * torch.randn(len(tables.feature_names)))
        if noise is not None:
            tables.threshold[noise] = 1e6
    tables.freeze_rows()
    widths = [c[(len(c) - 1) // 2] for c in tables.width_choices]
    if dropped is not None:
        widths[dropped] = 0
    tables.apply_candidate(widths)
    return tables.eval()


def test_binary_step_forward_is_the_step_and_backward_the_official_surrogate() -> None:
    x = torch.tensor(
        [-2.0, -0.9, -0.5, -0.3, -0.1, 0.0, 0.1, 0.3, 0.45, 1.0, 1.5], requires_grad=True
    )
    out = BinaryStep.apply(x)
    assert out.tolist() == [0.0] * 6 + [1.0] * 5
    out.backward(torch.full_like(x, 2.0))  # the upstream gradient is multiplied through
    a = x.detach().abs()
    expected = torch.where(
        a <= 0.4, 2 - 4 * a, torch.where(a <= 1, torch.tensor(0.4), torch.tensor(0.0))
    )
    torch.testing.assert_close(x.grad, 2.0 * expected)
    assert x.grad[0] == 0 and x.grad[-1] == 0  # no gradient far from the threshold


def test_thresholds_receive_gradients_from_the_task_and_the_regulariser() -> None:
    tables = _tables(alpha=1e-2)
    tables(random_kjt(batch=32)).values().pow(2).sum().backward()
    task = tables.threshold.grad.clone()
    assert task.abs().min() > 0  # every field's rows sit near t = 0 at initialisation
    tables.zero_grad()
    extra = tables.extra_loss()
    torch.testing.assert_close(extra, torch.tensor(1e-2 * len(tables.feature_names)))  # exp(-0)
    extra.backward()
    torch.testing.assert_close(tables.threshold.grad, torch.full((4,), -1e-2))  # d/dt alpha e^-t


def test_thresholds_get_their_own_sgd_optimiser_until_the_rows_are_frozen() -> None:
    torch.manual_seed(0)
    model = build_ctr_model(ModelConfig(hidden=(8,)), _config("full"), tiny_spec())
    optimizers = protocol.build_optimizers(model, lr=1e-3, weight_decay=1e-5)
    kinds = [type(o).__name__ for o in optimizers]
    assert kinds == ["SGD", "Adam", "Adam"]  # thresholds, OptEmbed's embeddings, the rest
    assert optimizers[0].param_groups[0]["params"] == [model.embeddings.threshold]
    assert optimizers[0].param_groups[0]["lr"] == model.embeddings.options.threshold_lr
    owned = {id(p) for o in optimizers for g in o.param_groups for p in g["params"]}
    assert owned == {id(p) for p in model.parameters()}  # every parameter exactly once
    assert sum(len(g["params"]) for o in optimizers for g in o.param_groups) == len(owned)
    model.embeddings.freeze_rows()
    assert model.embeddings.extra_loss() is None
    assert [g.name for g in model.embeddings.parameter_groups()] == ["optembed.embeddings"]


def test_the_rows_take_the_jobs_table_decay_unless_optembed_sets_its_own() -> None:
    torch.manual_seed(0)
    model = build_ctr_model(ModelConfig(hidden=(8,)), _config("full"), tiny_spec())

    def decays(**kwargs: float) -> list[float]:
        optimizers = protocol.build_optimizers(model, lr=1e-3, **kwargs)
        return [o.param_groups[0]["weight_decay"] for o in optimizers[:2]]  # thresholds, rows

    assert decays(weight_decay=1e-5) == [0.0, 1e-5]
    assert decays(weight_decay=0.0, table_weight_decay=1e-3) == [0.0, 1e-3]  # the tables' own
    model.embeddings.options = dataclasses.replace(model.embeddings.options, weight_decay=0.1)
    assert decays(weight_decay=0.0, table_weight_decay=1e-3) == [0.0, 0.1]


@pytest.mark.parametrize("base", list(BASES))
def test_widths_are_sampled_per_sample_and_feature_in_training_only(base: str) -> None:
    tables = _tables(base)
    with torch.no_grad():
        tables.threshold.fill_(-1.0)  # keep every row: only the width masks zero columns
    kjt = random_kjt(batch=256, empty_bags=False)
    tables.eval()
    first, second = tables(kjt).to_dict(), tables(kjt).to_dict()
    for name in tables.feature_names:
        torch.testing.assert_close(first[name], second[name])
        assert (first[name] != 0).all()  # eval: every column of every feature
    tables.train()
    trained = tables(kjt).to_dict()
    for name, choices in zip(tables.feature_names, tables.width_choices, strict=True):
        kept = (trained[name] != 0).sum(1)  # a prefix of each sample's vector survives
        prefix = torch.arange(trained[name].shape[1]) < kept.unsqueeze(1)
        assert torch.equal(trained[name] != 0, prefix)
        # every width is drawn, and only those; never 0, which only the search offers
        assert set(kept.tolist()) == {c for c in choices if c > 0}


def test_search_sets_the_best_widths_and_never_returns_an_over_budget_candidate() -> None:
    tables = _searched(_tables("full", search_budget=0.5, search={"generations": 6}))
    seen: list[tuple[int, ...]] = []

    def fitness(candidates: list[tuple[int, ...]]) -> list[float]:
        seen.extend(candidates)
        return [float(sum(c)) for c in candidates]  # wider is better: the budget must bind

    summary = tables.search(protocol.Stage("search", protocol.StageKind.SEARCH), fitness)
    budget = 0.5 * tables.full_table_bytes()
    assert seen and all(tables.bytes_at(c) <= budget for c in seen)
    assert tables.num_bytes() <= budget and bool(tables.frozen)
    assert summary["search_fitness"] == max(sum(c) for c in seen)
    assert tuple(tables.widths.tolist()) in seen


def test_a_supernet_that_pruned_a_whole_table_says_which_key_to_lower(capsys) -> None:
    """Thresholds above every row of a table (OptEmbed on the cosine towers' unified tables at
    its CTR defaults: all item vectors zero) are named, with the options that set their pace."""
    tables = _tables("full")
    with torch.no_grad():
        tables.threshold.fill_(1e6)
    tables.search(protocol.Stage("search", protocol.StageKind.SEARCH), lambda c: [0.0] * len(c))
    lines = [line for line in capsys.readouterr().out.splitlines() if "pruned every row" in line]
    assert len(lines) == len(tables.table_rows) and "embedding.options.alpha" in lines[0]
    kept = _tables("full")  # thresholds at 0: every row kept, nothing said
    kept.search(protocol.Stage("search", protocol.StageKind.SEARCH), lambda c: [0.0] * len(c))
    assert "pruned every row" not in capsys.readouterr().out


def test_a_model_with_two_searched_modules_searches_each_with_its_own_candidates() -> None:
    """The two towers' tables: `protocol.search` runs each module's search in turn, every
    candidate a `ModuleCandidate` that `apply_candidate` gives to its own module only (the
    other holds its widths: its start, then what it found), and names each module's metrics."""
    model = torch.nn.ModuleDict(
        {"user": _searched(_tables("full")), "item": _searched(_tables("full"))}
    )
    towers = list(model.values())
    item_start = towers[1].widths.tolist()
    seen: list[tuple[int, list[int]]] = []  # (searched module, the other module's widths)

    def fitness(candidates: list[protocol.ModuleCandidate]) -> list[float]:
        scores = []
        for candidate in candidates:
            protocol.apply_candidate(model, candidate)
            assert towers[candidate.module].widths.tolist() == list(candidate.candidate)
            seen.append((candidate.module, towers[1 - candidate.module].widths.tolist()))
            scores.append(float(sum(candidate.candidate)))
        return scores

    summary = protocol.search(model, protocol.Stage("search", protocol.StageKind.SEARCH), fitness)
    widest = [[c[-1] for c in t.width_choices] for t in towers]  # the fittest: every width full
    assert [m for m, _ in seen] == sorted(m for m, _ in seen) and {m for m, _ in seen} == {0, 1}
    assert all(other == (item_start if m == 0 else widest[0]) for m, other in seen)
    for name, tables, best in zip(model, towers, widest, strict=True):
        assert summary[f"{name}.search_fitness"] == sum(best)
        assert tables.widths.tolist() == best


@pytest.mark.parametrize("pruned", ["zero", "oov"])
@pytest.mark.parametrize("base", list(BASES))
def test_the_compact_form_serves_the_masked_model_from_fewer_bytes(base: str, pruned: str) -> None:
    tables = _searched(_tables(base, pruned=pruned))
    compact = tables.compact()
    kjt = random_kjt(batch=64, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(compact(kjt).values(), tables(kjt).values(), rtol=0, atol=0)
    assert compact.num_bytes() == tables.num_bytes()
    assert compact.num_parameters() == tables.num_parameters()
    # Never more than every row dense plus a level byte each (the fallback layout of a table
    # with few pruned rows), the per-feature widths and the OOV vectors.
    rows = sum(tables.table_rows.values())
    oov = 0 if tables.oov is None else 4 * tables.oov.numel()
    assert compact.num_bytes() <= rows * (4 * tables.config.dim + 1) + 8 * 4 + oov
    if base == "full":  # ~half the rows and columns pruned: the remapped layout is smaller
        stored = sum(v.numel() for v in compact.values.values())
        assert stored < rows * tables.config.dim / 2
        assert compact.num_bytes() < 4 * rows * tables.config.dim


def test_a_shared_row_pruned_for_every_feature_leaves_the_compact_table() -> None:
    tables = _tables("unified")
    with torch.no_grad():
        tables.threshold.copy_(torch.tensor([0.1, 0.2, 0.3, 0.4]))
        weight = tables._weight("shared_0")
        weight.fill_(0.0)
        weight[0] = 0.05 / weight.shape[1]  # below every threshold: pruned for all features
        weight[1] = 0.25 / weight.shape[1]  # kept for the first two features only
        weight[2:4] = 1.0  # kept for all; the other rows pruned for all (a remapped table)
    tables.freeze_rows()
    compact = tables.compact()
    remap = compact.remap_0
    assert remap[0] == -1 and remap[1] >= 0 and bool((remap[2:4] >= 0).all())
    assert bool((remap[4:] == -1).all()) and compact.values["shared_0"].shape[0] == 3
    level = compact.level_0[remap[1]]
    kept_for = [int(compact.rank[f]) < int(level) for f in range(4)]
    assert kept_for == [True, True, False, False]


def test_on_a_shared_base_a_feature_may_be_dropped_and_the_rows_only_it_kept_leave() -> None:
    """Width 0 is a choice on a shared base (where a noise feature's rows are the useful
    features' rows too, so no threshold can prune them all) and, by default, nowhere else."""
    for base in ("unified", "multiplexed"):
        assert all(c[0] == 0 for c in _tables(base).width_choices)
        assert all(c[0] >= 1 for c in _tables(base, drop_features=False).width_choices)
    assert all(c[0] >= 1 for c in _tables("full").width_choices)  # the paper's 1..D
    assert all(c[0] == 0 for c in _tables("full", drop_features=True).width_choices)

    tables = _tables("unified")
    with torch.no_grad():
        tables.threshold.copy_(torch.tensor([0.1, 0.2, 0.3, 0.4]))
        weight = tables._weight("shared_0")
        weight.fill_(0.0)
        weight[1] = 0.25 / weight.shape[1]  # kept for the first two features only
        weight[2:4] = 1.0  # kept for all; the other rows for none (a remapped table)
    tables.freeze_rows()
    full_width = [c[-1] for c in tables.width_choices]
    assert bool(tables.kept_rows(full_width)["shared_0"][1])
    tables.apply_candidate([0, 0, *full_width[2:]])  # the first two features dropped
    assert not bool(tables.kept_rows()["shared_0"][1])  # so row 1 leaves the compact table
    tables.eval()
    compact = tables.compact()
    assert compact.values["shared_0"].shape[0] == 2 and int(compact.remap_0[1]) == -1
    kjt = random_kjt(batch=64, seed=5)
    with torch.no_grad():
        masked = tables(kjt)
        torch.testing.assert_close(compact(kjt).values(), masked.values(), rtol=0, atol=0)
    dropped = masked.to_dict()
    names = tables.feature_names
    assert not dropped[names[0]].any() and not dropped[names[1]].any()
    assert dropped[names[2]].any() and dropped[names[3]].any()
    assert compact.num_bytes() == tables.num_bytes() < tables.bytes_at(full_width)
    tables.apply_candidate([0] * len(names))  # every feature dropped: nothing stored at all
    assert tables.num_bytes() == 8 * len(names)


@pytest.mark.parametrize("pruned", ["zero", "oov"])
def test_a_table_with_no_kept_row_stores_nothing_and_serves_pruned_rows(pruned: str) -> None:
    tables = _searched(_tables("full", pruned=pruned), noise=0)
    layouts = tables.table_layouts(tables.widths.tolist())
    noise_table = next(iter(layouts))
    assert layouts[noise_table].bytes == 0 and layouts[noise_table].rows == 0
    compact = tables.compact()
    assert compact.values[noise_table].numel() == 0
    assert not any(name.endswith("_0") for name, _ in compact.named_buffers())
    kjt = random_kjt(batch=64, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(compact(kjt).values(), tables(kjt).values(), rtol=0, atol=0)
    assert compact.num_bytes() == tables.num_bytes()
    assert compact.num_parameters() == tables.num_parameters()


@pytest.mark.parametrize(
    ("base", "noise", "dropped"),
    [
        ("full", None, None),
        ("unified", None, None),
        ("full", 0, None),
        ("unified", None, 0),
        ("full", None, 0),
    ],
)
def test_onnxruntime_serves_the_compact_ctr_model(
    base: str, noise: int | None, dropped: int | None, tmp_path
) -> None:
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    options = {} if dropped is None else {"drop_features": True}
    model = build_ctr_model(
        ModelConfig(backbone=Backbone.DEEPFM, hidden=(8,)), _config(base, **options), tiny_spec()
    )
    _searched(model.embeddings, noise=noise, dropped=dropped)
    served = model.compact()
    batch = batch_from_arrow(planted_table(64, seed=6), tiny_spec())
    ids, lengths = pad_sparse(batch.sparse, SPARSE, max_length=3)
    with torch.no_grad():
        expected = model.eval()(batch.dense, batch.sparse)
        torch.testing.assert_close(served(batch.dense, batch.sparse), expected)

    out = onnxruntime_logits(served, batch.dense, ids, lengths, tmp_path / "optembed.onnx")
    np.testing.assert_allclose(out, expected.numpy(), rtol=1e-5, atol=1e-5)


def test_retrain_takes_over_the_architecture_and_the_stages_are_declared() -> None:
    searched = _searched(_tables("unified"))
    assert [(s.name, s.kind.value, s.init.value) for s in searched.stages()] == [
        ("supernet", "train", "continue"),
        ("search", "search", "continue"),
        ("retrain", "train", "rewind"),
    ]
    fresh = _tables("unified")
    assert not bool(fresh.frozen)
    fresh.begin_stage(searched.stages()[2], searched)
    assert bool(fresh.frozen) and torch.equal(fresh.widths, searched.widths)
    assert fresh.num_bytes() == searched.num_bytes()
    fresh.train()
    kjt = random_kjt(batch=16)
    torch.testing.assert_close(fresh(kjt).values(), fresh(kjt).values())  # no sampling now


def test_options_are_typed_and_belong_to_their_method() -> None:
    with pytest.raises(ConfigError, match=r"embedding\.options\.alpah"):
        from_dict(EmbeddingConfig, {"method": "optembed", "options": {"alpah": 1.0}})
    with pytest.raises(ConfigError, match=r"embedding\.options\.base"):
        from_dict(EmbeddingConfig, {"method": "optembed", "options": {"base": "optembed"}})
    with pytest.raises(ConfigError, match=r"embedding\.options is for learned methods"):
        from_dict(EmbeddingConfig, {"method": "unified", "options": {"base": "full"}})
    with pytest.raises(ConfigError, match=r"embedding\.chunks applies only to method 'unified'"):
        from_dict(EmbeddingConfig, {"method": "optembed", "chunks": 2})
    with pytest.raises(ConfigError, match=r"embedding\.options\.search\.generations"):
        from_dict(
            EmbeddingConfig, {"method": "optembed", "options": {"search": {"generations": 0}}}
        )
    config = _config("unified", alpha=1e-3)
    assert config.base_method.value == "unified" and config.options.alpha == 1e-3
    assert config.first_order_config().method.value == "unified"  # the linear part: unlearned
