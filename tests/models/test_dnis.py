"""DNIS's own behaviour: frequency blocks, alpha learned on validation batches only, the
pruning budget met exactly, pruned weights that stay zero, the compact forms and ONNX."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from plexus.models.backbones import Backbone, ModelConfig, build_ctr_model
from plexus.models.batch import batch_from_arrow, pad_sparse
from plexus.models.embeddings import EmbeddingConfig, build_embedding_tables, protocol
from plexus.models.embeddings.dnis import DNISConfig, DNISTables, Storage, block_bounds
from plexus.platform.config import from_dict
from plexus.platform.errors import ConfigError
from plexus.platform.feature_spec import Encoding, Feature, FeatureKind
from tiny_ctr_data import onnxruntime_logits, planted_table, random_kjt, sparse_features, tiny_spec

SPARSE = [f.name for f in tiny_spec().sparse]
BASES = {
    "full": {"dim": 4},
    "full-csr": {"dim": 4, "options": {"storage": "unstructured"}},
    "unified": {"dim": 2, "budget": 0.5, "chunks": 2, "options": {"base": "unified"}},
    "multiplexed": {"dim": 4, "budget": 0.5, "probes": 2, "options": {"base": "multiplexed"}},
    "hashing": {"dim": 4, "budget": 0.5, "options": {"base": "hashing"}},
}
SEARCH = protocol.Stage("search", freeze_rest=True)
RETRAIN = protocol.Stage("retrain")


def _config(base: str, **options) -> EmbeddingConfig:
    raw = {"method": "dnis", **BASES[base]}
    raw["options"] = {**raw.get("options", {}), **options}
    return from_dict(EmbeddingConfig, raw)


def _tables(base: str = "full", **options) -> DNISTables:
    torch.manual_seed(0)
    tables = build_embedding_tables(_config(base, **options), sparse_features())
    assert isinstance(tables, DNISTables)
    return tables


def _searched(tables: DNISTables, budget: float | None) -> DNISTables:
    """Trained-looking rows and alpha (some of it 0), pruned to `budget` of the full bytes."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in tables.parameters():
            p.add_(torch.randn_like(p) * 0.3)
        tables.alpha.uniform_(0.0, 1.0)
        tables.alpha[:, :, 0] = 0.0  # dimension 0 dropped by the search everywhere
    budget_bytes = None if budget is None else budget * tables.full_table_bytes()
    tables.prune(budget_bytes)
    return tables.eval()


def _feature(size: int, encoding: Encoding = Encoding.VOCAB) -> Feature:
    return Feature(name="f", kind=FeatureKind.CATEGORICAL, encoding=encoding, cardinality=size)


def test_blocks_cut_the_frequency_ranks_at_zipf_quantiles_or_given_boundaries() -> None:
    # Ingest numbers a vocabulary by descending training frequency (id 1 the most frequent,
    # id 0 the OOV bucket), so ids are ranks: blocks are rank ranges, most frequent first.
    options = DNISConfig(num_blocks=4)
    size = 10_000
    bounds = block_bounds(_feature(size), options)
    assert bounds == [round((size + 1) ** (k / 4)) - 1 for k in (1, 2, 3)] == [9, 99, 999]
    # Under frequency ~ 1/rank each block holds about a quarter of the occurrences.
    harmonic = np.cumsum(1.0 / np.arange(1, size + 1))
    shares = np.diff([0.0, *(harmonic[b - 1] for b in bounds), harmonic[-1]]) / harmonic[-1]
    assert np.allclose(shares, 0.25, atol=0.04)
    given = DNISConfig(blocks=(51, 126, 1763, 17057, 91265))  # the official Criteo split
    assert block_bounds(_feature(2000), given) == [51, 126, 1763]  # inside the id range only
    assert block_bounds(_feature(50, Encoding.BUCKETIZE), options) == []  # no frequency order
    assert block_bounds(_feature(3), DNISConfig(num_blocks=6)) == [1, 2]  # tiny: fewer blocks

    tables = _tables(blocks=[2, 5])
    ids = torch.arange(10)
    user = torch.zeros_like(ids)
    assert tables.block_of(user, ids).tolist() == [0, 0, 1, 1, 1, 2, 2, 2, 2, 2]
    hour = torch.full((3,), tables.feature_names.index("hour"))
    assert tables.block_of(hour, torch.arange(3)).tolist() == [0, 0, 0]  # bucketized: one block


def test_alpha_scales_each_row_by_its_block() -> None:
    tables = _tables(blocks=[2, 5]).eval()
    kjt = random_kjt(batch=32, seed=3)
    before = tables(kjt).to_dict()["user"]
    with torch.no_grad():
        tables.alpha[0, 1] = 0.5  # user's block 1: ids 2, 3, 4
        tables.alpha[0, 2, 1] = 0.0  # user's block 2, dimension 1
    after = tables(kjt).to_dict()["user"]
    ids = kjt.to_dict()["user"].values()
    expected = before.clone()
    expected[(ids >= 2) & (ids < 5)] *= 0.5
    expected[ids >= 5, 1] = 0.0
    torch.testing.assert_close(after, expected)


def test_alpha_learns_on_validation_batches_only_and_the_rest_is_frozen_in_the_search() -> None:
    torch.manual_seed(0)
    model = build_ctr_model(
        ModelConfig(backbone=Backbone.DEEPFM, hidden=(8,)), _config("full"), tiny_spec()
    )
    tables = model.embeddings
    # Warm-up: alpha held at 1 (no optimiser), everything else by the loop's Adam.
    warm = protocol.build_optimizers(model, lr=1e-2, weight_decay=0.0)
    owned = {id(p) for o in warm for g in o.param_groups for p in g["params"]}
    assert id(tables.alpha) not in owned and len(warm) == 1

    tables.begin_stage(SEARCH, None)
    assert bool((tables.alpha == 1).all())
    optimizers = protocol.build_optimizers(model, lr=1e-2, weight_decay=0.0, stage=SEARCH)
    sources = [protocol.optimizer_batches(o) for o in optimizers]
    assert [type(o).__name__ for o in optimizers] == ["SGD", "Adam"]  # no optimiser of the rest
    assert sources == [protocol.BatchSource.VALID, protocol.BatchSource.TRAIN]
    assert optimizers[0].param_groups[0]["params"] == [tables.alpha]
    assert optimizers[0].param_groups[0]["lr"] == tables.options.alpha_lr

    spec = tiny_spec()
    train = batch_from_arrow(planted_table(128, seed=1), spec)
    valid = batch_from_arrow(planted_table(128, seed=2), spec)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    alpha = tables.alpha.detach().clone()
    table_weights = [w.detach().clone() for w in tables._tables()]
    rest = {n: p.detach().clone() for n, p in model.named_parameters() if "embeddings." not in n}

    def step(batch, source: protocol.BatchSource) -> None:  # what the CTR loop does per batch
        for o in optimizers:
            o.zero_grad(set_to_none=True)
        loss = loss_fn(model(batch.dense, batch.sparse), batch.labels) + protocol.extra_loss(model)
        loss.backward()
        for o in optimizers:
            if protocol.optimizer_batches(o) is source:
                o.step()
        protocol.after_step(model, optimizers)

    step(train, protocol.BatchSource.TRAIN)
    assert torch.equal(tables.alpha, alpha)  # a training batch never moves alpha
    assert all(
        not torch.equal(w, w0) for w, w0 in zip(tables._tables(), table_weights, strict=True)
    )
    table_weights = [w.detach().clone() for w in tables._tables()]

    # The validation step: SGD on loss + l1 |alpha| with the gradient normalised per block.
    for o in optimizers:
        o.zero_grad(set_to_none=True)
    loss = loss_fn(model(valid.dense, valid.sparse), valid.labels) + protocol.extra_loss(model)
    (raw,) = torch.autograd.grad(loss, [tables.alpha])  # hooks included: normalised already
    used = raw.abs().sum(-1) > 0
    torch.testing.assert_close(
        raw.abs().mean(-1)[used], torch.ones(int(used.sum())), atol=1e-2, rtol=0
    )
    expected = (alpha - tables.options.alpha_lr * raw).clamp(0, 1)
    step(valid, protocol.BatchSource.VALID)
    torch.testing.assert_close(tables.alpha.detach(), expected)
    assert not torch.equal(tables.alpha, alpha)
    assert all(torch.equal(w, w0) for w, w0 in zip(tables._tables(), table_weights, strict=True))
    for name, p in model.named_parameters():  # MLP, FM linear part: frozen in the search
        if name in rest:
            assert torch.equal(p, rest[name]), name


@pytest.mark.parametrize("storage", ["structured", "unstructured"])
def test_the_pruning_threshold_meets_the_budget_exactly(storage: str) -> None:
    # Wider tables than the contract's, so that the budget, not the index arrays, binds.
    features = [
        Feature(name=f"f{i}", kind=FeatureKind.CATEGORICAL, encoding=Encoding.VOCAB, cardinality=c)
        for i, c in enumerate((400, 250, 90))
    ]
    config = from_dict(
        EmbeddingConfig, {"method": "dnis", "dim": 16, "options": {"storage": storage}}
    )
    for budget in (0.5, 0.25, 0.15):
        torch.manual_seed(0)
        tables = build_embedding_tables(config, features)
        with torch.no_grad():
            tables.alpha.uniform_(0.2, 1.0)
            weight = tables._weight(next(iter(tables.table_rows)))
            weight[:50] = 0.3  # many tied scores: the count is still met exactly
        budget_bytes = budget * tables.full_table_bytes()
        summary = tables.prune(budget_bytes)
        fits = (budget_bytes - tables.fixed_bytes()) // tables.value_bytes()
        assert summary["kept_values"] == fits == tables.num_parameters()
        # The most values that fit: the compact form's real bytes within the budget, and one
        # value more would not fit its index arrays' bound.
        assert tables.num_bytes() <= budget_bytes
        assert tables.fixed_bytes() + tables.value_bytes() * (fits + 1) > budget_bytes
        scores = [
            tables._weight(t).abs() * tables.reach_alpha(k) for k, t in enumerate(tables.table_rows)
        ]
        kept = torch.cat([s[tables._mask(k)] for k, s in enumerate(scores)])
        dropped = torch.cat([s[~tables._mask(k)] for k, s in enumerate(scores)])
        if storage == "unstructured":  # the threshold separates kept and pruned entries
            assert kept.min() >= summary["threshold"] >= dropped.max()


def test_structured_pruning_keeps_whole_block_columns_and_frequent_rows_first() -> None:
    tables = _searched(_tables("full", blocks=[2, 5]), budget=0.7)
    for k, table in enumerate(tables.table_rows):
        mask = tables._mask(k)
        assert not mask[:, 0].any()  # alpha 0 in dimension 0: never kept
        for lo, hi in ((0, 2), (2, 5), (5, 10)):
            block = mask[lo : min(hi, tables.table_rows[table])]
            # Within a block a dimension is kept for a prefix of the rows (most frequent first).
            kept = block.sum(0)
            for d in range(block.shape[1]):
                assert torch.equal(block[: kept[d], d], torch.ones(kept[d], dtype=torch.bool))
    split = sum(int(((m.sum(0) > 0) & (m.sum(0) < m.shape[0])).sum()) for m in _block_masks(tables))
    assert split <= 1  # at most one column is cut at a row to meet the budget


def _block_masks(tables: DNISTables) -> list[torch.Tensor]:
    out = []
    for k, table in enumerate(tables.table_rows):
        rows = tables.table_rows[table]
        for lo, hi in ((0, 2), (2, 5), (5, rows)):
            if lo < rows:
                out.append(tables._mask(k)[lo : min(hi, rows)])
    return out


@pytest.mark.parametrize("base", list(BASES))
def test_the_compact_forms_equal_the_masked_model(base: str) -> None:
    tables = _searched(_tables(base), budget=0.9 if base == "full" else None)
    assert tables.storage is (Storage.STRUCTURED if base == "full" else Storage.UNSTRUCTURED)
    compact = tables.compact()
    kjt = random_kjt(batch=64, seed=5)
    with torch.no_grad():
        expected = tables(kjt).values()
        torch.testing.assert_close(compact(kjt).values(), expected)
        ids, lengths = pad_sparse(kjt, tables.feature_names)
        torch.testing.assert_close(compact.forward_padded(ids, lengths), expected)
        torch.testing.assert_close(tables.forward_padded(ids, lengths), expected)
    assert compact.num_bytes() == tables.num_bytes()
    assert compact.num_parameters() == tables.num_parameters()
    kept = sum(int(tables._mask(k).sum()) for k in range(len(tables.table_rows)))
    stored = sum(b.numel() for n, b in compact.named_buffers() if n.startswith("store_values"))
    assert stored == kept < sum(r * tables.config.dim for r in tables.table_rows.values())
    if tables.storage is Storage.UNSTRUCTURED:  # values + uint8 columns + int32 row pointers
        rowptr = sum(4 * (r + 1) for r in tables.table_rows.values())
        alpha = 0 if tables.merged else 4 * (tables.alpha.numel() + tables._bounds.numel())
        assert compact.num_bytes() == 5 * kept + rowptr + alpha


def test_pruned_weights_stay_zero_while_retraining() -> None:
    torch.manual_seed(0)
    model = build_ctr_model(
        ModelConfig(backbone=Backbone.DEEPFM, hidden=(8,)), _config("full-csr"), tiny_spec()
    )
    _searched(model.embeddings, budget=0.5)
    retrained = build_ctr_model(
        ModelConfig(backbone=Backbone.DEEPFM, hidden=(8,)), _config("full-csr"), tiny_spec()
    )
    retrained.load_state_dict(model.state_dict())  # the prune stage's output, continued
    tables = retrained.embeddings
    tables.begin_stage(RETRAIN, model.embeddings)
    assert tables.pruned
    optimizers = protocol.build_optimizers(retrained, lr=0.05, weight_decay=1e-3)
    owned = {id(p) for o in optimizers for g in o.param_groups for p in g["params"]}
    assert id(tables.alpha) not in owned  # alpha is fixed once pruned
    before = [w.detach().clone() for w in tables._tables()]
    loss_fn = torch.nn.BCEWithLogitsLoss()
    for seed in range(5):
        batch = batch_from_arrow(planted_table(64, seed=seed), tiny_spec())
        for o in optimizers:
            o.zero_grad(set_to_none=True)
        loss_fn(retrained(batch.dense, batch.sparse), batch.labels).backward()
        for o in optimizers:
            o.step()
        protocol.after_step(retrained, optimizers)
    for k, (w, w0) in enumerate(zip(tables._tables(), before, strict=True)):
        mask = tables._mask(k)
        assert bool((w[~mask] == 0).all())  # never grow back
        assert not torch.equal(w[mask], w0[mask])  # the kept ones train


@pytest.mark.parametrize(
    "base",
    ["full", pytest.param("unified", marks=pytest.mark.slow)],  # ~15 s each export
)
def test_onnxruntime_serves_the_compact_ctr_model(base: str, tmp_path) -> None:
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = build_ctr_model(
        ModelConfig(backbone=Backbone.DEEPFM, hidden=(8,)), _config(base), tiny_spec()
    )
    _searched(model.embeddings, budget=0.9 if base == "full" else None)
    _assert_served_as_masked(model, tmp_path / "dnis.onnx")


def _assert_served_as_masked(model: torch.nn.Module, onnx_path) -> None:
    """The compact model gives the masked model's logits in torch and in onnxruntime."""
    served = model.compact()
    batch = batch_from_arrow(planted_table(64, seed=6), tiny_spec())
    ids, lengths = pad_sparse(batch.sparse, SPARSE, max_length=3)
    with torch.no_grad():
        expected = model.eval()(batch.dense, batch.sparse)
        torch.testing.assert_close(served(batch.dense, batch.sparse), expected)
    out = onnxruntime_logits(served, batch.dense, ids, lengths, onnx_path)
    np.testing.assert_allclose(out, expected.numpy(), rtol=1e-5, atol=1e-5)


def test_the_linear_part_is_searched_and_pruned_with_the_tables(tmp_path) -> None:
    torch.manual_seed(0)
    spec, head = tiny_spec(), ModelConfig(backbone=Backbone.DEEPFM, hidden=(8,))
    assert not isinstance(build_ctr_model(head, _config("full"), spec).first_order, DNISTables)
    model = build_ctr_model(head, _config("full", prune_first_order=True), spec)
    linear = model.first_order
    assert isinstance(linear, DNISTables) and set(linear.output_dims().values()) == {1}
    assert protocol.model_stages(model) == model.embeddings.stages()  # one protocol, both run it
    groups = [g.name for t in protocol.embedding_tables(model) for g in t.parameter_groups()]
    assert groups.count("dnis.alpha") == 2  # each table module searches its own alpha
    _searched(model.embeddings, budget=0.5)
    with torch.no_grad():  # trained-looking biases; the search dropped the first feature's
        for p in linear.parameters():
            p.add_(torch.randn_like(p) * 0.3)
        linear.alpha.fill_(1.0)
        linear.alpha[0] = 0.0
    linear.prune(None)
    kept = [bool(linear._mask(k).any()) for k in range(len(linear.table_rows))]
    assert kept == [False] + [True] * (len(kept) - 1)
    assert not linear._tables()[0].any()  # the dropped feature's weights are zeros
    _assert_served_as_masked(model, tmp_path / "linear.onnx")


def test_a_kept_linear_part_counts_in_the_budget_and_the_tables_get_the_rest() -> None:
    spec, head = tiny_spec(), ModelConfig(backbone=Backbone.DEEPFM, hidden=(8,))
    torch.manual_seed(0)
    options = {"keep_first_order": True, "search_budget": 0.8}
    model = build_ctr_model(head, _config("full", **options), spec)
    tables, linear = model.embeddings, model.first_order
    assert isinstance(tables, DNISTables) and not isinstance(linear, DNISTables)
    prune = next(s for s in tables.stages() if s.name == "prune")
    _searched(tables, budget=None)  # trained-looking rows; the prune stage then cuts them
    dense = [p.detach().clone() for p in linear.parameters()]
    summary = protocol.search(model, prune, lambda candidates: [])
    full, kept = tables.full_table_bytes(), linear.num_bytes()
    assert summary["first_order_bytes"] == kept > 0
    # The tables got what the whole linear part leaves of 0.8 of both, to the value.
    fits = (0.8 * (full + kept) - kept - tables.fixed_bytes()) // tables.value_bytes()
    assert summary["kept_values"] == fits
    assert tables.num_bytes() + kept <= 0.8 * (full + kept)
    assert summary["model_compact_fraction"] == pytest.approx(
        (tables.num_bytes() + kept) / (full + kept)
    )
    assert all(torch.equal(a, b) for a, b in zip(dense, linear.parameters(), strict=True))


def test_stages_and_state_carried_between_them() -> None:
    tables = _tables("unified", search_epochs=3, retrain_init="rewind")
    assert [
        (s.name, s.kind.value, s.init.value, s.freeze_rest, s.epochs) for s in tables.stages()
    ] == [
        ("warmup", "train", "continue", False, None),
        ("search", "train", "continue", True, 3),
        ("prune", "search", "continue", False, None),
        ("retrain", "train", "rewind", False, None),
    ]
    fine_tune = _tables("unified").stages()[-1]  # continue: the pruned model is its epoch 0
    assert fine_tune.init.value == "continue" and fine_tune.keep_start
    assert not tables.stages()[-1].keep_start
    searched = _searched(_tables("unified"), budget=None)
    fresh = _tables("unified")
    fresh.begin_stage(RETRAIN, searched)
    assert fresh.pruned and torch.equal(fresh.alpha, searched.alpha)
    assert fresh.num_bytes() == searched.num_bytes()
    for k in range(len(fresh.table_rows)):
        assert bool((fresh._tables()[k][~fresh._mask(k)] == 0).all())
    figure = searched.figures()["dnis_alpha"]
    assert len(figure.axes) >= 2


def test_options_are_typed_and_name_their_key() -> None:
    with pytest.raises(ConfigError, match=r"embedding\.options\.alpah"):
        from_dict(EmbeddingConfig, {"method": "dnis", "options": {"alpah": 1.0}})
    with pytest.raises(ConfigError, match=r"embedding\.options\.storage=structured needs full"):
        _tables("unified", storage="structured")
    with pytest.raises(ConfigError, match=r"embedding\.options\.blocks"):
        from_dict(EmbeddingConfig, {"method": "dnis", "options": {"blocks": [5, 2]}})
    with pytest.raises(ConfigError, match=r"prune_first_order and keep_first_order"):
        from_dict(
            EmbeddingConfig,
            {"method": "dnis", "options": {"prune_first_order": True, "keep_first_order": True}},
        )
    with pytest.raises(ConfigError, match=r"embedding\.options\.search_budget"):
        from_dict(EmbeddingConfig, {"method": "dnis", "options": {"search_budget": 2}})
    with pytest.raises(ValueError, match="only a pruned DNIS model"):
        _tables().compact()
