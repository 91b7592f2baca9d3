"""Dynamic Sparse Learning on the retrieval towers: the sparse gradient path stays sparse (only
touched rows re-masked, growth from the coalesced gradient), the budget holds across prune and
grow cycles, the model beats the most popular items on planted interests, and the bundle's ONNX
graph reads the row-compressed tables and equals torch."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from plexus.models.embeddings import EmbeddingConfig, protocol
from plexus.models.embeddings.dsl import DSLConfig, DSLTables, prune_and_grow
from plexus.models.embeddings.sparse_storage import CompactSparseTables
from plexus.models.retrieval import TwoTower, TwoTowerConfig
from plexus.models.retrieval.sparse import retrieval_optimizers, sparse_lookups
from plexus.pipelines.retrieval.synthetic import planted_interests
from plexus.pipelines.retrieval.train import RetrievalTrainConfig, train_two_tower
from plexus.platform.config import from_dict

DIM = 16


def _masked(method: str, **options) -> EmbeddingConfig:
    return from_dict(EmbeddingConfig, {"method": method, "dim": DIM, "options": options})


def _dsl(**options) -> EmbeddingConfig:
    return _masked("dsl", **options)


def _train_config(epochs: int) -> RetrievalTrainConfig:
    return from_dict(
        RetrievalTrainConfig,
        {"epochs": epochs, "batch_size": 128, "num_negatives": 64, "lr": 0.02,
         "loss": "sampled_softmax", "temperature": 0.2, "threads": 1},
    )  # fmt: skip


@pytest.fixture(scope="module")
def planted():
    # 120 users and 80 items: the two tables have different shapes (moments found by shape).
    return planted_interests(
        num_users=120, num_groups=4, items_per_group=20, per_user=12, test_per_user=3, seed=0
    )[0]


def test_training_keeps_sparse_gradients_and_the_budget_across_cycles(planted) -> None:
    """Every epoch: the tables' gradients are sparse COO (SparseAdam's), the non-zeros are the
    target count, masked weights and SparseAdam's moments are zero, and the masks moved."""
    epochs, delta_t = 4, 5
    steps = -(-planted.train_items.size // 128)  # an epoch's steps
    # Cycles within epochs, none at an epoch's end: the moments checked there were masked by
    # the step's own rows, not by a prune-and-grow pass over the whole tables.
    assert steps > delta_t and all(steps * e % delta_t for e in range(1, epochs + 1))
    embedding = _dsl(density=0.5, delta_t=delta_t)
    seen: list[list[torch.Tensor]] = []

    def on_epoch(record: dict[str, float], model: TwoTower) -> None:
        tables = [model.user_tables, model.item_tables]
        for t in tables:
            assert isinstance(t, DSLTables)
            assert t.nonzeros() == t.target_nonzeros
            (weight,) = t.weights()
            assert weight.grad is not None and weight.grad.is_sparse  # the step stayed sparse
            assert int((weight.detach()[~t.masks()[0]] != 0).sum()) == 0
        seen.append([t.masks()[0].clone() for t in tables])

    moments: list[dict] = []
    model, _ = train_two_tower(
        planted,
        TwoTowerConfig(dim=DIM, history_len=8),
        _train_config(epochs),
        embedding=embedding,
        on_epoch=on_epoch,
        on_checkpoint=lambda state: moments.append(state["optimizers"]),
    )
    checked = 0
    for epoch_masks, optimizers in zip(seen, moments, strict=True):
        masks = {tuple(m.shape): m for m in epoch_masks}
        assert len(masks) == 2
        for saved in optimizers:
            for state in saved["state"].values():
                for key in ("exp_avg", "exp_avg_sq"):
                    value = state.get(key)
                    if value is not None and tuple(value.shape) in masks:
                        assert int((value[~masks[tuple(value.shape)]] != 0).sum()) == 0, key
                        checked += 1
    assert checked == 4 * epochs  # both tables' SparseAdam moments, every epoch
    first, last = seen[0], seen[-1]
    assert any(not torch.equal(a, b) for a, b in zip(first, last, strict=True))  # cycles ran
    assert int(model.item_tables.steps) == epochs * steps


@pytest.mark.parametrize("grow", ["gradient", "accumulated"])
def test_global_scope_pools_both_towers_tables(planted, grow) -> None:
    """`scope: global` on the towers: the user and item modules' non-zeros move between them
    while their sum holds, every masked weight stays zero in both, and the steps stay sparse."""
    embedding = _dsl(density=0.5, delta_t=3, scope="global", grow=grow)
    counts: list[tuple[int, int]] = []

    def on_epoch(record: dict[str, float], model: TwoTower) -> None:
        tables = [model.user_tables, model.item_tables]
        targets = sum(sum(t.target_nonzeros) for t in tables)
        assert sum(sum(t.nonzeros()) for t in tables) == targets
        for t in tables:
            (weight,) = t.weights()
            assert weight.grad is not None and weight.grad.is_sparse
            assert int((weight.detach()[~t.masks()[0]] != 0).sum()) == 0
        counts.append((tables[0].nonzeros()[0], tables[1].nonzeros()[0]))

    model, _ = train_two_tower(
        planted, TwoTowerConfig(dim=DIM, history_len=8), _train_config(3),
        embedding=embedding, on_epoch=on_epoch,
    )  # fmt: skip
    start = (model.user_tables.target_nonzeros[0], model.item_tables.target_nonzeros[0])
    assert any(c != start for c in counts)  # the towers' shares moved
    assert int(model.user_tables.steps) == int(model.item_tables.steps) > 0


def test_a_step_re_masks_only_the_rows_it_touched() -> None:
    """After the first step (which masks whole tables: the towers draw their weights after the
    tables did), the hook leaves rows outside the sparse gradient alone, with no pass over the
    whole table: nonzero values planted at masked positions of an untouched row survive."""
    model = TwoTower(TwoTowerConfig(dim=DIM, history_len=4), num_users=30, num_items=40,
                     embedding=_dsl(density=0.5, delta_t=1000, total_steps=1000))  # fmt: skip
    tables = model.item_tables
    (weight,), (mask,) = tables.weights(), tables.masks()
    assert int((weight.detach()[~mask] != 0).sum()) > 0  # the towers' own init: dense
    probe = sparse_lookups()
    optimizers: list[torch.optim.Optimizer] = []
    for step, items in enumerate(([1, 2], [3, 5, 5])):
        with probe:
            vectors = model.item_vectors(torch.tensor(items))
        optimizers = optimizers or retrieval_optimizers(model, probe, lr=0.01)
        for opt in optimizers:
            opt.zero_grad()
        vectors.sum().backward()
        assert weight.grad.is_sparse
        for opt in optimizers:
            opt.step()
        if step == 1:
            assert int((weight.detach()[7][~mask[7]] != 0).sum()) == 0
            with torch.no_grad():
                weight[7] = 1.0  # row 7: not in this step's batch, masked positions nonzero
        protocol.after_step(model, optimizers, total_steps=1000)
        if step == 0:
            assert int((weight.detach()[~mask] != 0).sum()) == 0  # step 1: whole tables
    state = next(o.state[weight] for o in optimizers if weight in o.state)
    for row in (3, 5):
        for value in (weight.detach()[row], state["exp_avg"][row], state["exp_avg_sq"][row]):
            assert int((value[~mask[row]] != 0).sum()) == 0
        assert int((state["exp_avg"][row][mask[row]] != 0).sum()) > 0  # updated where active
    assert bool((weight.detach()[7] == 1.0).all())  # untouched: not re-masked, not stepped


def test_sparse_growth_equals_the_dense_rule_on_the_touched_rows() -> None:
    """With a sparse gradient, prune and grow picks what the dense gradient would (growth among
    the touched rows' largest |g|), and tops up with zero-gradient positions when those rows run
    out of inactive ones, keeping the count."""
    torch.manual_seed(0)
    rows, dim = 12, 4
    weight = torch.randn(rows, dim)
    mask = torch.rand(rows, dim) < 0.5
    weight = weight * mask
    touched = torch.tensor([1, 4, 9, 4])  # uncoalesced: row 4 twice
    values = torch.randn(4, dim)
    sparse = torch.sparse_coo_tensor(touched.unsqueeze(0), values, (rows, dim))
    for prune in ("magnitude", "taylor"):
        options = DSLConfig(prune=prune)
        by_dense, by_sparse = mask.clone(), mask.clone()
        prune_and_grow(weight, sparse.to_dense(), by_dense, 0.2, options)
        prune_and_grow(weight, sparse, by_sparse, 0.2, options)
        assert torch.equal(by_sparse, by_dense), prune
        assert int(by_sparse.sum()) == int(mask.sum())
        assert not torch.equal(by_sparse, mask)
    # More to grow than the touched row has free: all of its inactive positions, then others.
    one = torch.sparse_coo_tensor(torch.tensor([[2]]), torch.ones(1, dim), (rows, dim))
    wide = mask.clone()
    moved = prune_and_grow(weight, one, wide, 0.9, DSLConfig())
    assert moved > dim and int(wide.sum()) == int(mask.sum())
    assert bool(wide[2].all())


@pytest.mark.parametrize(("grow", "expected_row"), [("gradient", 5), ("accumulated", 3)])
def test_accumulated_growth_ranks_the_window_not_the_last_batch(grow, expected_row) -> None:
    """Row 3 gets a large gradient at step 1 and row 5 a small one at step 2, the update step:
    the current-batch rule grows in row 5 (the only row it sees), `grow: accumulated` in row 3
    (the largest sum over the window of `delta_t` steps)."""
    model = TwoTower(TwoTowerConfig(dim=DIM, history_len=4), num_users=30, num_items=40,
                     embedding=_dsl(density=0.5, delta_t=2, total_steps=100, grow=grow))  # fmt: skip
    tables = model.item_tables
    (weight,), (mask,) = tables.weights(), tables.masks()
    # Two positions move: fewer than either row has free (density 0.5 of 16 columns).
    share = 1.5 / tables.target_nonzeros[0]
    tables.options = dataclasses.replace(tables.options, zeta_start=share, zeta_schedule="constant")
    assert int((~mask[3]).sum()) >= 2 and int((~mask[5]).sum()) >= 2
    for row, value in ((3, 10.0), (5, 0.1)):
        weight.grad = torch.sparse_coo_tensor(
            torch.tensor([[row]]), torch.full((1, DIM), value), tuple(weight.shape)
        )
        before = mask.clone()
        protocol.after_step(model, (), total_steps=100)
    grown = mask & ~before
    assert int(grown.sum()) == 2 and int(mask.sum()) == int(before.sum())
    assert torch.nonzero(grown)[:, 0].unique().tolist() == [expected_row]


def test_dsl_towers_beat_the_most_popular_items(planted) -> None:
    from plexus.pipelines.retrieval.compare import most_popular
    from plexus.pipelines.retrieval.evaluate import evaluate_tower, ranking_metrics, test_users

    model, history = train_two_tower(
        planted, TwoTowerConfig(dim=DIM, history_len=8), _train_config(8), embedding=_dsl()
    )
    tables = (model.user_tables, model.item_tables)
    dense = sum(4 * w.numel() for t in tables for w in t.weights())
    assert sum(t.num_bytes() for t in tables) < 0.7 * dense  # density 0.5, indices included
    recall = evaluate_tower(model, planted, ks=(20,))["recall@20"]
    users = test_users(planted)
    by_popularity = np.argsort(-planted.item_popularity()[1:], kind="stable") + 1
    top = most_popular(by_popularity, planted, users, 20)
    popular = float(ranking_metrics(top, planted, users, (20,))["recall@20"].mean())
    assert history[-1]["loss"] < history[0]["loss"]
    assert recall > popular + 0.05, (recall, popular)


@pytest.mark.slow  # ~30 s each: training, the dynamo export and the bundle's index
@pytest.mark.parametrize("method", ["dsl", "magnitude_pruning"])
def test_the_bundle_serves_the_compact_tables_and_equals_torch(tmp_path, method: str) -> None:
    """Either masked method (DSL, or magnitude pruning's fine-tuned stage) exports its
    row-compressed tables, and the graph equals the trained model."""
    pytest.importorskip("onnxscript")
    import onnx
    from plexus.pipelines.retrieval.export import onnx_parity, served_query
    from plexus.pipelines.retrieval.synthetic import planted_bundle
    from plexus.serving.bundle import Bundle

    folder, data, _, module, _ = planted_bundle(
        tmp_path / "bundle", seed=3, epochs=6, embedding=_masked(method, density=0.5)
    )
    served = served_query(module)
    for tables in (served.model.user_tables, served.model.item_tables):
        assert isinstance(tables, CompactSparseTables)
        # 121 x 16 at density 0.5: the bitmap (0.59 of dense) is smaller than CSR (0.64).
        assert [t.form for t in tables.tables] == ["bitmap"]
    bundle = Bundle.load(folder)
    assert bundle.manifest["export"]["onnx_max_abs_diff"] <= 1e-5
    dense = 4 * DIM * (data.num_users + 1 + data.num_items + 1)
    assert bundle.manifest["export"]["embedding_bytes"] == protocol.embedding_bytes(served.model)
    assert bundle.manifest["export"]["embedding_bytes"] < 0.7 * dense
    graph = onnx.load(str(folder / "query.onnx"))
    shapes = {tuple(t.dims) for t in graph.graph.initializer}
    for rows in (data.num_users + 1, data.num_items + 1):
        assert (rows, DIM) not in shapes  # no dense table in the graph
    sizes = sum(int(np.prod(t.dims)) * 4 for t in graph.graph.initializer if t.data_type == 1)
    assert sizes < 0.7 * dense  # the float arrays: values (and centroids), not whole tables
    # The trained (masked) module against onnxruntime on the graph of the compact form.
    with torch.no_grad():
        user, hist = torch.arange(1, 9), torch.from_numpy(data.histories(12)[1:9])
        for got, want in zip(served(user, hist, (hist > 0).float()),
                             module(user, hist, (hist > 0).float()), strict=True):  # fmt: skip
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    diff = onnx_parity(
        module, folder / "query.onnx", num_users=data.num_users, num_items=data.num_items,
        history_len=12,
    )  # fmt: skip
    assert diff <= 1e-5
