"""Dynamic Sparse Learning and its magnitude-pruning baseline: the zeta schedule, prune and grow,
a constant number of non-zeros, masked weights and Adam moments, and the served ONNX graph."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from plexus.models.backbones import Backbone, ModelConfig, build_ctr_model
from plexus.models.batch import batch_from_arrow, pad_sparse
from plexus.models.embeddings import EmbeddingConfig, build_embedding_tables, protocol
from plexus.models.embeddings.dsl import (
    DSLConfig,
    DSLTables,
    prune_and_grow,
    prune_and_grow_global,
    zeta,
)
from plexus.models.embeddings.magnitude_pruning import MagnitudePruningTables
from plexus.models.embeddings.protocol import Stage
from plexus.models.embeddings.sparse_storage import CompactSparseTables
from plexus.platform.config import from_dict
from plexus.platform.errors import ConfigError
from tiny_ctr_data import onnxruntime_logits, planted_table, sparse_features, tiny_spec

SPARSE = [f.name for f in tiny_spec().sparse]
BASES = {
    "full": {"dim": 4},
    "unified": {"dim": 2, "budget": 0.5, "chunks": 2, "options": {"base": "unified"}},
}


def _config(method: str = "dsl", base: str = "full", **options) -> EmbeddingConfig:
    raw = {"method": method, **BASES[base]}
    raw["options"] = {**raw.get("options", {}), **options}
    return from_dict(EmbeddingConfig, raw)


def _model(method: str = "dsl", base: str = "full", **options):
    torch.manual_seed(0)
    return build_ctr_model(
        ModelConfig(backbone=Backbone.DEEPFM, hidden=(8,)),
        _config(method, base, **options),
        tiny_spec(),
    )


def _batches(count: int, size: int = 64):
    table = planted_table(count * size, seed=3)
    return [batch_from_arrow(table.slice(i * size, size), tiny_spec()) for i in range(count)]


def _train(model, batches, *, total_steps: int | None, check=None) -> list[torch.optim.Optimizer]:
    """The training loop's step, as `loop.train_loop` takes it; `check(step, before)` after each."""
    optimizers = protocol.build_optimizers(model, lr=0.05, weight_decay=0.0)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    for step, batch in enumerate(batches, 1):
        before = [m.clone() for m in model.embeddings.masks()]
        loss = loss_fn(model(batch.dense, batch.sparse), batch.labels)
        protocol.training_step(model, loss, optimizers, total_steps=total_steps)
        if check is not None:
            check(step, before, optimizers)
    return optimizers


def test_zeta_decays_on_the_official_cosine_from_half_to_half_a_percent() -> None:
    config = DSLConfig()
    total = 200
    # The official CosineDecay: an SGD learning rate of 0.5 under CosineAnnealingLR(T, 0.005).
    sgd = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    official = torch.optim.lr_scheduler.CosineAnnealingLR(sgd, total, eta_min=0.005)
    for step in range(1, total + 1):
        official.step()
        assert zeta(config, step, total) == pytest.approx(sgd.param_groups[0]["lr"], abs=1e-9)
    assert zeta(config, 0, total) == 0.5 and zeta(config, total, total) == pytest.approx(0.005)
    assert zeta(config, total // 2, total) == pytest.approx((0.5 + 0.005) / 2)
    linear = DSLConfig(zeta_schedule="linear")
    assert zeta(linear, total // 4, total) == pytest.approx(0.5 + 0.25 * (0.005 - 0.5))
    assert zeta(DSLConfig(zeta_schedule="constant"), 150, total) == 0.5


def test_prune_drops_the_smallest_weights_and_growth_takes_the_largest_gradients() -> None:
    weight = torch.tensor([[0.5, -0.1, 0.3, 0.02], [0.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True, True], [False, False, False, False]])
    grad = torch.tensor([[0.0, 0.0, 0.0, 0.9], [0.1, -2.0, 0.5, 0.05]])
    moved = prune_and_grow(weight, grad, mask, 0.5, DSLConfig())  # ceil(0.5 * 4) = 2
    assert moved == 2
    # Pruned: 0.02 and -0.1 (smallest |w|); grown: |g| = 2.0 and 0.9 among the inactive, which
    # includes the position just pruned (as in the official code).
    assert mask.tolist() == [[True, False, True, True], [False, True, False, False]]
    assert int(mask.sum()) == 4


def test_taylor_pruning_and_random_growth_keep_the_count() -> None:
    weight = torch.tensor([1.0, 0.1, 0.5, 0.0, 0.0, 0.0])
    mask = torch.tensor([True, True, True, False, False, False])
    grad = torch.tensor([0.01, 5.0, 1.0, 0.0, 0.0, 0.0])  # (w g)^2: 1e-4, 0.25, 0.25
    prune_and_grow(weight, grad, mask, 0.3, DSLConfig(prune="taylor", grow="random"), seed=3)
    assert int(mask.sum()) == 3 and not bool(mask[0])  # the lowest (w g)^2 went


def test_global_scope_moves_non_zeros_to_the_table_where_the_gradients_are() -> None:
    # Table a: small weights and no gradient; table b: two zero weights and large gradients.
    weights = [torch.tensor([[0.01, 0.02, 0.9]]), torch.zeros(2, 2)]
    masks = [torch.tensor([[True, True, True]]), torch.tensor([[True, False], [False, True]])]
    grads = [torch.zeros(1, 3), torch.tensor([[0.0, 3.0], [2.0, 1.0]])]
    moved = prune_and_grow_global(weights, grads, masks, 0.5, DSLConfig(scope="global"))
    assert moved == 3  # ceil(0.5 * 5 non-zeros in all)
    # Each table's largest weight stays (0.9; b's first zero). Pruned over both tables: b's
    # other 0.0, then 0.01 and 0.02 of a; grown: |g| 3, 2 and 1, all in b.
    assert masks[0].tolist() == [[False, False, True]]
    assert masks[1].tolist() == [[True, True], [True, True]]
    # Per tensor, table a keeps all 3 of its non-zeros whatever b's gradients.
    per_tensor = torch.tensor([[True, True, True]])
    prune_and_grow(weights[0], grads[0], per_tensor, 0.5, DSLConfig())
    assert int(per_tensor.sum()) == 3


def test_global_scope_leaves_every_table_a_non_zero() -> None:
    weights = [torch.tensor([[0.001, 0.002]]), torch.tensor([[0.5, 0.6]])]
    masks = [torch.tensor([[True, True]]), torch.tensor([[True, True]])]
    grads = [torch.zeros(1, 2), torch.zeros(1, 2)]
    prune_and_grow_global(weights, grads, masks, 1.0, DSLConfig(scope="global"))
    assert all(int(m.sum()) >= 1 for m in masks) and sum(int(m.sum()) for m in masks) == 4


def test_global_scope_takes_sparse_gradients_as_the_dense_rule_on_their_rows() -> None:
    """The towers' sparse gradients: the pool grows where the dense gradient would among the
    touched rows, then, when those run out of inactive positions, elsewhere at random."""
    torch.manual_seed(0)
    shapes = [(10, 4), (14, 4)]
    masks = [torch.rand(shape) < 0.5 for shape in shapes]
    weights = [torch.randn(shape) * m for shape, m in zip(shapes, masks, strict=True)]
    rows = [torch.tensor([2, 7, 2]), torch.tensor([0, 5, 11])]  # uncoalesced: row 2 twice
    sparse = [
        torch.sparse_coo_tensor(r.unsqueeze(0), torch.randn(3, 4), shape)
        for r, shape in zip(rows, shapes, strict=True)
    ]
    by_dense, by_sparse = [m.clone() for m in masks], [m.clone() for m in masks]
    options = DSLConfig(scope="global")
    prune_and_grow_global(weights, [g.to_dense() for g in sparse], by_dense, 0.1, options)
    prune_and_grow_global(weights, sparse, by_sparse, 0.1, options)
    assert all(torch.equal(a, b) for a, b in zip(by_sparse, by_dense, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(by_sparse, masks, strict=True))
    # More to grow than the touched rows have free: all of theirs, then others, count kept.
    wide = [m.clone() for m in masks]
    prune_and_grow_global(weights, sparse, wide, 0.9, options)
    assert sum(int(m.sum()) for m in wide) == sum(int(m.sum()) for m in masks)
    for mask, r in zip(wide, rows, strict=True):
        assert bool(mask[r].all())


def test_global_scope_keeps_the_total_but_not_each_tables_count() -> None:
    model = _model(density=0.3, delta_t=2, scope="global")
    tables = model.embeddings
    total = sum(tables.target_nonzeros)
    seen: set[tuple[int, ...]] = set()

    def check(step: int, before, optimizers) -> None:
        assert sum(tables.nonzeros()) == total
        assert min(tables.nonzeros()) >= 1
        seen.add(tuple(tables.nonzeros()))

    _train(model, _batches(8), total_steps=8, check=check)
    assert len(seen) > 1  # the tables' shares moved


def test_row_granularity_prunes_the_weakest_rows_and_grows_where_the_gradient_is() -> None:
    weight = torch.tensor([[0.5, 0.5], [0.1, -0.1], [0.0, 0.0], [0.0, 0.0]])
    mask = torch.tensor([[True, True], [True, True], [False, False], [False, False]])
    grad = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.1, 0.1], [2.0, 0.0]])
    rows = DSLConfig(granularity="row")
    assert prune_and_grow(weight, grad, mask, 0.5, rows) == 2  # one row of 2 positions
    # Row 1 has the smaller norm and goes; row 3 has the largest gradient norm and comes.
    assert mask.tolist() == [[True, True], [False, False], [False, False], [True, True]]
    # The same from a sparse gradient (the retrieval towers' rows), where rows without a
    # gradient are grown after every row with one.
    mask = torch.tensor([[True, True], [True, True], [False, False], [False, False]])
    prune_and_grow(weight, grad.to_sparse(sparse_dim=1), mask, 1.0, rows, seed=1)
    assert mask.tolist() == [[False, False], [False, False], [True, True], [True, True]]
    # Global: the tables' rows as one pool, each table keeping its largest row. Table a: rows
    # of norm 0.3 and 0.2; table b: one row of norm 0.01 and one inactive with a gradient.
    masks = [torch.ones(2, 2, dtype=torch.bool), torch.tensor([[True, True], [False, False]])]
    weights = [torch.tensor([[0.3, 0.0], [0.2, 0.0]]), torch.tensor([[0.01, 0.0], [0.0, 0.0]])]
    grads = [torch.zeros(2, 2), torch.tensor([[0.0, 0.0], [5.0, 5.0]])]
    both = DSLConfig(scope="global", granularity="row")
    # ceil(0.5 * 3 rows) = 2, at most 3 - 2 protected rows = 1: a's 0.2 row goes (b's weaker
    # row is its only one), b's row with the gradient comes.
    assert prune_and_grow_global(weights, grads, masks, 0.5, both) == 2
    assert masks[0].tolist() == [[True, True], [False, False]]
    assert masks[1].tolist() == [[True, True], [True, True]]


@pytest.mark.parametrize("scope", ["tensor", "global"])
def test_row_granularity_keeps_whole_rows_and_the_budget_through_training(scope) -> None:
    model = _model(density=0.3, delta_t=2, scope=scope, granularity="row")
    tables = model.embeddings
    dim = tables.masks()[0].shape[1]
    assert all(n % dim == 0 for n in tables.target_nonzeros)  # whole rows
    total = sum(tables.target_nonzeros)
    moved: list[bool] = []

    def check(step: int, before, optimizers) -> None:
        assert sum(tables.nonzeros()) == total
        for mask, old in zip(tables.masks(), before, strict=True):
            assert bool((mask == mask[:, :1]).all())  # every row wholly on or off
            moved.append(not torch.equal(mask, old))
        for weight, mask in zip(tables.weights(), tables.masks(), strict=True):
            assert int((weight.detach()[~mask] != 0).sum()) == 0

    _train(model, _batches(8), total_steps=8, check=check)
    assert any(moved)


@pytest.mark.parametrize("grow", ["gradient", "accumulated"])
def test_non_zeros_stay_constant_and_masked_weights_and_adam_moments_stay_zero(
    grow, capsys
) -> None:
    model = _model(density=0.4, delta_t=3, grow=grow)
    tables = model.embeddings
    assert isinstance(tables, DSLTables)
    target = list(tables.target_nonzeros)
    assert tables.nonzeros() == target
    changed_at: list[int] = []

    def check(step: int, before: list[torch.Tensor], optimizers) -> None:
        assert tables.nonzeros() == target  # the budget holds at every step
        after = tables.masks()
        moved = any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
        if moved:
            changed_at.append(step)
        for weight, mask, old in zip(tables.weights(), after, before, strict=True):
            state = next(o.state[weight] for o in optimizers if weight in o.state)
            for value in (weight.detach(), state["exp_avg"], state["exp_avg_sq"]):
                assert int((value[~mask] != 0).sum()) == 0  # masked: weight and moments zero
            grown = mask & ~old
            for value in (weight.detach(), state["exp_avg"], state["exp_avg_sq"]):
                assert int((value[grown] != 0).sum()) == 0  # grown: start from zero

    _train(model, _batches(12), total_steps=12, check=check)
    assert changed_at == [3, 6, 9, 12]  # prune and grow every delta_t steps, only then
    assert int(tables.steps) == 12
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[dsl]")]
    assert [line.split(":")[0] for line in lines] == [
        f"[dsl] prune-and-grow {k}/4 at step {3 * k} (delta_t 3)" for k in (1, 2, 3, 4)
    ]  # a progress line per update, naming the resolved delta_t


def test_update_until_stops_the_updates_and_ends_zetas_decay_there(capsys) -> None:
    model = _model(density=0.4, delta_t=3, update_until=0.5)
    tables = model.embeddings
    changed_at: list[int] = []

    def check(step: int, before: list[torch.Tensor], optimizers) -> None:
        if any(not torch.equal(a, b) for a, b in zip(tables.masks(), before, strict=True)):
            changed_at.append(step)

    _train(model, _batches(12), total_steps=12, check=check)
    assert changed_at == [3, 6]  # the first half of the 12 planned steps only
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[dsl]")]
    assert lines == [
        "[dsl] prune-and-grow 1/2 at step 3 (delta_t 3): zeta 0.253",  # halfway down the cosine
        "[dsl] prune-and-grow 2/2 at step 6 (delta_t 3): zeta 0.005",  # its end: zeta_end
    ]
    with pytest.raises(ConfigError, match="update_until"):
        DSLConfig(update_until=0.0)


def test_sparsify_mlp_holds_the_network_at_the_tables_density_through_prune_and_grow() -> None:
    model = _model(density=0.4, delta_t=3, sparsify_mlp=True)
    tables = model.embeddings
    pairs = tables._mlp_pairs()
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert pairs and len(pairs) == len(layers)  # every Linear weight of the network
    counts = [int(mask.sum()) for _, mask in pairs]
    for (weight, _), count in zip(pairs, counts, strict=True):
        assert abs(count / weight.numel() - 0.4) <= 1 / weight.numel() + 1e-9
    moved = []

    def check(step: int, before, optimizers) -> None:
        for k, (weight, mask) in enumerate(pairs):
            assert int(mask.sum()) == counts[k]  # constant non-zeros, network too
            state = next(o.state[weight] for o in optimizers if weight in o.state)
            for value in (weight.detach(), state["exp_avg"], state["exp_avg_sq"]):
                assert int((value[~mask] != 0).sum()) == 0
        moved.append([mask.clone() for _, mask in pairs])

    _train(model, _batches(6), total_steps=6, check=check)
    assert any(not torch.equal(a, b) for a, b in zip(moved[1], moved[2], strict=True))  # step 3
    state = model.state_dict()  # the network's masks are checkpointed with the tables
    assert any(key.startswith("embeddings.mlp_mask_") for key in state)
    fresh = _model(density=0.4, delta_t=3, sparsify_mlp=True)
    fresh.load_state_dict(state)
    for (_, a), (_, b) in zip(fresh.embeddings._mlp_pairs(), pairs, strict=True):
        assert torch.equal(a, b)


def test_masks_move_towards_the_gradient_signal_over_cycles() -> None:
    """Growth follows the batches' gradients: across cycles the masks explore new positions."""
    model = _model(density=0.3, delta_t=2, zeta_schedule="constant")
    first = [m.clone() for m in model.embeddings.masks()]
    _train(model, _batches(10), total_steps=10)
    moved = sum(int((m & ~f).sum()) for m, f in zip(model.embeddings.masks(), first, strict=True))
    assert moved > 0


def test_the_schedule_needs_the_planned_steps() -> None:
    model = _model(delta_t=1)
    with pytest.raises(ConfigError, match=r"embedding\.options\.total_steps"):
        _train(model, _batches(1), total_steps=None)
    given = _model(delta_t=1, total_steps=5)
    _train(given, _batches(2), total_steps=None)
    assert int(given.embeddings.steps) == 2


def test_a_byte_budget_sets_the_density_with_the_index_overhead() -> None:
    tables = build_embedding_tables(_config(byte_budget=0.25), sparse_features())
    dense = 4 * sum(tables.table_rows.values()) * 4
    assert tables.num_bytes() <= 0.25 * dense
    assert tables.num_parameters() == sum(tables.nonzeros()) < 0.25 * dense / 4


@pytest.mark.parametrize("base", list(BASES))
@pytest.mark.parametrize("method", ["dsl", "magnitude_pruning"])
def test_onnxruntime_serves_the_sparse_ctr_model(base: str, method: str, tmp_path) -> None:
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    model = _model(method, base, byte_budget=0.3)
    if method == "magnitude_pruning":
        _train(model, _batches(3), total_steps=3)  # the dense stage, then the pruning
        model.embeddings.begin_stage(Stage("finetune"), None)
    served = model.compact()
    assert isinstance(served.embeddings, CompactSparseTables)
    batch = batch_from_arrow(planted_table(64, seed=6), tiny_spec())
    ids, lengths = pad_sparse(batch.sparse, SPARSE, max_length=3)
    with torch.no_grad():
        expected = model.eval()(batch.dense, batch.sparse)
        torch.testing.assert_close(served(batch.dense, batch.sparse), expected)
        torch.testing.assert_close(served.forward_padded(batch.dense, ids, lengths), expected)
    out = onnxruntime_logits(served, batch.dense, ids, lengths, tmp_path / f"{method}.onnx")
    np.testing.assert_allclose(out, expected.numpy(), rtol=1e-5, atol=1e-5)


def test_magnitude_pruning_trains_dense_then_keeps_the_largest_weights_fixed() -> None:
    model = _model("magnitude_pruning", byte_budget=0.25)
    tables = model.embeddings
    assert isinstance(tables, MagnitudePruningTables)
    assert [s.name for s in tables.stages()] == ["dense", "finetune"]
    dense_bytes = tables.num_bytes()
    assert dense_bytes == 4 * sum(w.numel() for w in tables.weights())
    _train(model, _batches(4), total_steps=4)  # the dense stage: no mask in force
    assert all(bool(m.all()) for m in tables.masks())
    magnitudes = torch.cat([w.detach().abs().reshape(-1) for w in tables.weights()])
    tables.begin_stage(Stage("finetune"), None)
    kept = torch.cat([m.reshape(-1) for m in tables.masks()])
    assert magnitudes[kept].min() >= magnitudes[~kept].max()  # global magnitude ranking
    assert tables.num_bytes() <= 0.25 * dense_bytes
    masks = [m.clone() for m in tables.masks()]

    def check(step: int, before, optimizers) -> None:
        for weight, mask, fixed in zip(tables.weights(), tables.masks(), masks, strict=True):
            assert torch.equal(mask, fixed)  # fine-tuning never moves the mask
            state = next(o.state[weight] for o in optimizers if weight in o.state)
            assert int((weight.detach()[~mask] != 0).sum()) == 0
            assert int((state["exp_avg"][~mask] != 0).sum()) == 0

    _train(model, _batches(4), total_steps=4, check=check)


def test_per_table_scope_prunes_every_table_to_one_density() -> None:
    model = _model("magnitude_pruning", density=0.5, scope="table")
    tables = model.embeddings
    tables.prune()
    assert tables.nonzeros() == tables.target_nonzeros
    for weight, mask in zip(tables.weights(), tables.masks(), strict=True):
        w = weight.detach().abs()
        assert w[mask].min() >= w[~mask].max()


def test_options_are_typed_and_say_what_to_do() -> None:
    with pytest.raises(ConfigError, match="density or byte_budget"):
        _config(density=0.5, byte_budget=0.25)
    with pytest.raises(ConfigError, match=r"embedding\.options\.base"):
        from_dict(EmbeddingConfig, {"method": "dsl", "options": {"base": "optembed"}})
    with pytest.raises(ConfigError, match=r"embedding\.options\.grow"):
        _config(grow="momentum")
    with pytest.raises(ConfigError, match=r"embedding\.options\.density"):
        _config(density=1.5)
    with pytest.raises(ConfigError, match=r"embedding\.options\.scope"):
        _config("magnitude_pruning", scope="layer")
    with pytest.raises(ConfigError, match=r"embedding\.options\.delta_t"):
        _config(delta_t=0)
    config = _config(base="unified", density=0.3)
    assert config.base_method.value == "unified" and config.options.density == 0.3
    assert config.first_order_config().method.value == "unified"  # the linear part: dense


@pytest.mark.parametrize("other", [{"byte_budget": 0.1}, {"density": 0.5}])
def test_magnitude_pruning_dense_stage_is_the_same_at_every_budget(other) -> None:
    """What `Stage.ignores` promises, so that jobs at other budgets may share the stage."""
    models = [_model("magnitude_pruning", byte_budget=0.25), _model("magnitude_pruning", **other)]
    dense = models[0].embeddings.stages()[0]
    assert set(other) <= set(dense.ignores)
    for model in models:
        _train(model, _batches(4), total_steps=4)
    first, second = (m.state_dict() for m in models)
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key
    assert models[0].embeddings.stages()[1].ignores == ()  # the fine-tune prunes to its budget
