"""Two-tower training resumes from an epoch checkpoint exactly where it stopped."""

from __future__ import annotations

import pytest
import torch
from plexus.models.retrieval import TwoTower, TwoTowerConfig
from plexus.pipelines.retrieval.synthetic import planted_interests
from plexus.pipelines.retrieval.train import RetrievalTrainConfig, train_two_tower


def _configs(epochs: int) -> tuple[TwoTowerConfig, RetrievalTrainConfig]:
    model = TwoTowerConfig(dim=8, history_len=6, project_history=True)
    train = RetrievalTrainConfig(
        epochs=epochs, batch_size=64, num_negatives=16, lr=0.02, lr_schedule="cosine", threads=1
    )
    return model, train


def _job(folder, epochs: int, **fields):
    """A retrieval job config over `_configs(epochs)` (its data section names `folder`)."""
    from plexus.pipelines.ingest import DataConfig
    from plexus.pipelines.retrieval.config import RetrievalJobConfig

    model, train = _configs(epochs)
    data = DataConfig(format="lightgcn", path=str(folder))
    return RetrievalJobConfig(data=data, model=model, train=train, **fields)


def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one() -> None:
    data, _ = planted_interests(num_users=40, num_groups=3, items_per_group=10, per_user=8)
    straight, history = train_two_tower(data, *_configs(3))
    states: list[dict] = []
    train_two_tower(data, *_configs(3), on_checkpoint=lambda s: states.append(s))
    assert [len(s["history"]) for s in states] == [1, 2, 3]
    # "Crash" after epoch 1 in a fresh process state: other random draws happen in between.
    torch.manual_seed(123)
    resumed, resumed_history = train_two_tower(data, *_configs(3), resume=states[0])
    assert [h["epoch"] for h in resumed_history] == [1.0, 2.0, 3.0]
    assert resumed_history[1]["loss"] == history[1]["loss"]
    for name, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, rtol=0, atol=0)
    key = "item_tables.ebc.embedding_bags.t_item_id.weight"
    assert not torch.equal(states[0]["model"][key], straight.state_dict()[key])


def test_the_latest_checkpoint_is_the_one_with_most_epochs(tmp_path) -> None:
    from plexus.pipelines.retrieval.train import STATE_FILE, latest_checkpoint

    assert latest_checkpoint(tmp_path / "ray") is None
    for attempt, epochs in (("a", 3), ("b", 1)):  # names sort the other way round
        folder = tmp_path / "ray" / attempt / f"checkpoint_{epochs}"
        folder.mkdir(parents=True)
        torch.save({"history": [{}] * epochs}, folder / STATE_FILE)
    assert latest_checkpoint(tmp_path / "ray") == str(tmp_path / "ray" / "a" / "checkpoint_3")


def test_in_process_training_resumes_from_its_epoch_checkpoint(tmp_path, capsys) -> None:
    """`use_ray: false` saves the training state every epoch; a run that finds one (its
    predecessor was killed) continues after that epoch and removes it once model.pt is saved."""
    from plexus.pipelines.retrieval.job import MODEL_FILE, train_model
    from plexus.pipelines.retrieval.train import STATE_FILE

    data, _ = planted_interests(num_users=40, num_groups=3, items_per_group=10, per_user=8)
    model_cfg, train_cfg = _configs(3)
    config = _job(tmp_path, 3, name="resume", use_ray=False)
    straight, _ = train_model(config, data, tmp_path / "straight")
    states: list[dict] = []
    train_two_tower(data, model_cfg, train_cfg, on_checkpoint=states.append)
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    torch.save(states[0], crashed / STATE_FILE)  # what a run killed during epoch 2 leaves
    resumed, history = train_model(config, data, crashed)
    assert "resumed after epoch 1" in capsys.readouterr().out
    assert [h["epoch"] for h in history] == [1.0, 2.0, 3.0]
    for name, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, rtol=0, atol=0)
    assert (crashed / MODEL_FILE).is_file() and not (crashed / STATE_FILE).exists()


_METHODS = {
    "full": {"method": "full", "dim": 16},
    "hashing": {"method": "hashing", "dim": 16, "budget": 0.75},
    "multiplexed": {"method": "multiplexed", "dim": 16, "budget": 0.5},
    "unified": {"method": "unified", "dim": 8, "budget": 0.5, "chunks": 2},
}


@pytest.fixture(scope="module")
def planted():
    return planted_interests(
        num_users=120, num_groups=4, items_per_group=20, per_user=12, test_per_user=3, seed=0
    )[0]


@pytest.mark.parametrize("method", list(_METHODS))
def test_a_retrieval_model_trains_with_each_embedding_method(planted, method: str) -> None:
    """The towers' tables are the platform's: `embedding.method` picks them, training finds the
    planted interests with each, and the budget bounds the tables' parameters."""
    from plexus.models.embeddings import EmbeddingConfig
    from plexus.models.embeddings.registry import method_class
    from plexus.pipelines.retrieval.evaluate import evaluate_tower
    from plexus.platform.config import from_dict

    embedding = from_dict(EmbeddingConfig, _METHODS[method])
    model_cfg = TwoTowerConfig(dim=16, history_len=8)
    train_cfg = RetrievalTrainConfig(
        epochs=8, batch_size=128, num_negatives=64, lr=0.02, loss="sampled_softmax",
        temperature=0.2, threads=1,
    )  # fmt: skip
    model, history = train_two_tower(planted, model_cfg, train_cfg, embedding=embedding)
    assert type(model.item_tables) is method_class(embedding.method)
    full_rows = planted.num_users + planted.num_items + 2
    params = sum(t.num_parameters() for t in (model.user_tables, model.item_tables))
    assert params <= full_rows * 16 * embedding.budget + 16
    recall = evaluate_tower(model, planted, ks=(10,))["recall@10"]
    untrained = evaluate_tower(
        TwoTower(model_cfg, num_users=planted.num_users, num_items=planted.num_items,
                 embedding=embedding),
        planted, ks=(10,),
    )["recall@10"]  # fmt: skip
    assert history[-1]["loss"] < history[0]["loss"]
    # Measured: full 0.33, hashing (3/4) 0.21, multiplexed 0.19, unified 0.21, untrained
    # 0.13-0.16; collisions cost more on these 81-row tables than on CTR fields.
    assert recall > untrained + (0.15 if method == "full" else 0.03), (recall, untrained)


_SEARCHED = {  # each method's fastest faithful setting; DNIS prunes to half the tables' bytes
    "optembed": {"method": "optembed", "dim": 16, "options": {"search": {"generations": 2}}},
    "dnis": {
        "method": "dnis", "dim": 16, "options": {"search_budget": 0.5, "search_epochs": 3},
    },
}  # fmt: skip


def _searched(method: str, epochs: int = 6) -> tuple[TwoTowerConfig, RetrievalTrainConfig, object]:
    from plexus.models.embeddings import EmbeddingConfig
    from plexus.platform.config import from_dict

    train = RetrievalTrainConfig(
        epochs=epochs, batch_size=128, num_negatives=64, lr=0.02, loss="sampled_softmax",
        temperature=0.2, threads=1,
    )  # fmt: skip
    embedding = from_dict(EmbeddingConfig, _SEARCHED[method])
    return TwoTowerConfig(dim=16, history_len=8), train, embedding


@pytest.mark.parametrize("method", list(_SEARCHED))
def test_a_searching_method_finds_its_architecture_on_the_validation_holdout(
    planted, method: str, monkeypatch
) -> None:
    """OptEmbed and DNIS train the towers: every stage up to the search trains on the lists
    without the validation hold-out and the search scores on it (OptEmbed's candidates, each
    tower in turn; DNIS's alpha steps on its pairs); the stages after it train on the whole
    lists. The search's metrics land on the record of the epoch before it."""
    import plexus.pipelines.retrieval.train as train_module
    from plexus.models.embeddings import protocol
    from plexus.pipelines.retrieval.evaluate import evaluate_tower

    scored: list[tuple[object, list]] = []  # (task, candidates) of every fitness call
    fitness = train_module.recall_fitness

    def spy(model, task):
        evaluate = fitness(model, task)
        return lambda candidates: scored.append((task, candidates)) or evaluate(candidates)

    monkeypatch.setattr(train_module, "recall_fitness", spy)
    trained_on: list[object] = []
    train_stage = train_module._train_stage
    monkeypatch.setattr(
        train_module,
        "_train_stage",
        lambda model, data, *a, **k: trained_on.append(data) or train_stage(model, data, *a, **k),
    )
    model_cfg, train_cfg, embedding = _searched(method)
    model, history = train_two_tower(planted, model_cfg, train_cfg, embedding=embedding)

    stages = protocol.model_stages(model)
    assert [d.validation_task for d in trained_on] == [
        i < train_module.last_search(stages)
        for i, s in enumerate(stages)
        if s.kind is protocol.StageKind.TRAIN
    ]  # (the hold-out pairs are not in the validation task's lists: `Interactions.validation`)
    assert trained_on[-1] is planted
    search = stages[train_module.last_search(stages)].name
    searched = next(h for h in history if any(k.startswith(f"{search}.") for k in h))
    if method == "optembed":  # every candidate scored on the hold-out, in its own tower's turn
        assert {c.module for _, cs in scored for c in cs} == {0, 1}
        assert all(task.validation_task for task, _ in scored)
        assert "search.item_tables.search_fitness" in searched
    else:  # alpha moved on the held-out pairs, then the prune met the budget
        assert not scored
        assert searched["prune.user_tables.alpha_mean"] < 1.0
        tables = (model.user_tables, model.item_tables)
        full = sum(t.full_table_bytes() for t in tables)
        assert sum(t.compact().num_bytes() for t in tables) <= 0.5 * full
    recall = evaluate_tower(model, planted, ks=(10,))["recall@10"]
    # Measured: OptEmbed 0.38, DNIS at half the bytes 0.33, full tables 0.35; untrained 0.13-0.16.
    assert recall > 0.25, recall


def test_a_search_without_a_holdout_is_refused_naming_the_key(planted) -> None:
    """A searching method needs the validation hold-out, and a tuning run (already trained and
    scored on it) cannot give it one: both are a `ConfigError` before any training."""
    import dataclasses

    from plexus.platform.errors import ConfigError

    model_cfg, train_cfg, embedding = _searched("optembed", epochs=1)
    bare = dataclasses.replace(planted, valid_indptr=None, valid_items=None)
    with pytest.raises(ConfigError, match="data.interactions.validation_users > 0"):
        train_two_tower(bare, model_cfg, train_cfg, embedding=embedding)
    with pytest.raises(ConfigError, match="already trains and scores on"):
        train_two_tower(planted.validation(), model_cfg, train_cfg, embedding=embedding)


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("method", list(_SEARCHED))
def test_a_run_resumed_around_the_search_ends_as_the_uninterrupted_one(
    planted, method: str, when: str
) -> None:
    """Killed after the last epoch before the search, a run searches again from that checkpoint;
    killed in the retrain after it, it goes on with the found architecture (the optimisers of
    its stage, which depend on it, restored). Either ends bit for bit as the run that never
    stopped."""
    from plexus.models.embeddings import protocol
    from plexus.pipelines.retrieval.train import last_search

    model_cfg, train_cfg, embedding = _searched(method, epochs=2)
    straight, history = train_two_tower(planted, model_cfg, train_cfg, embedding=embedding)
    states: list[dict] = []
    train_two_tower(planted, model_cfg, train_cfg, embedding=embedding, on_checkpoint=states.append)
    search = last_search(protocol.model_stages(straight))
    before = [s for s in states if s["stage"] < search]
    after = [s for s in states if s["stage"] > search and len(s["history"]) < len(history)]
    resume = before[-1] if when == "before" else after[0]
    torch.manual_seed(123)
    resumed, resumed_history = train_two_tower(
        planted, model_cfg, train_cfg, embedding=embedding, resume=resume
    )

    def timeless(records: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if not k.endswith(("seconds", "_ms"))} for r in records]

    assert timeless(resumed_history) == timeless(history)
    for name, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, rtol=0, atol=0)


@pytest.mark.slow  # ~20 s each: training with the search, the dynamo export and the index
@pytest.mark.parametrize("method", list(_SEARCHED))
def test_the_bundle_serves_the_searched_tables_in_their_compact_form(tmp_path, method) -> None:
    """Searched to half the bytes, the towers' tables go into the bundle's graph in their
    compact form (OptEmbed's kept rows at the found widths, DNIS's pruned entries), and the
    graph equals the trained model."""
    pytest.importorskip("onnxscript")
    from plexus.models.embeddings import EmbeddingConfig, protocol
    from plexus.pipelines.retrieval.export import served_query
    from plexus.pipelines.retrieval.synthetic import planted_bundle
    from plexus.platform.config import from_dict
    from plexus.serving.bundle import Bundle

    raw = _SEARCHED[method]
    embedding = from_dict(
        EmbeddingConfig, {**raw, "options": {**raw["options"], "search_budget": 0.5}}
    )
    folder, data, _, module, _ = planted_bundle(tmp_path / "b", epochs=4, embedding=embedding)
    served = served_query(module)
    dense = 4 * 16 * (data.num_users + 1 + data.num_items + 1)
    export = Bundle.load(folder).manifest["export"]
    assert export["embedding_bytes"] == protocol.embedding_bytes(served.model) <= 0.5 * dense
    assert export["onnx_max_abs_diff"] <= 1e-5


def _pruning(epochs: int) -> tuple[TwoTowerConfig, RetrievalTrainConfig, object]:
    from plexus.models.embeddings import EmbeddingConfig
    from plexus.platform.config import from_dict

    embedding = from_dict(
        EmbeddingConfig,
        {"method": "magnitude_pruning", "dim": 16, "options": {"density": 0.25}},
    )
    train = RetrievalTrainConfig(
        epochs=epochs, batch_size=128, num_negatives=64, lr=0.02, loss="sampled_softmax",
        temperature=0.2, threads=1,
    )  # fmt: skip
    return TwoTowerConfig(dim=16, history_len=8), train, embedding


def test_magnitude_pruning_trains_dense_then_fine_tunes_both_towers_pruned(planted) -> None:
    """The towers run the method's two stages in turn: the dense stage's epochs, then its
    fine-tune with each tower's table pruned to the density by magnitude (the largest
    weights of the dense model kept), the masked weights still zero after training on sparse
    gradients, and the planted interests found."""
    from plexus.pipelines.retrieval.evaluate import evaluate_tower

    model_cfg, train_cfg, embedding = _pruning(4)
    states: list[dict] = []
    model, history = train_two_tower(
        planted, model_cfg, train_cfg, embedding=embedding, on_checkpoint=states.append
    )
    assert [(h["epoch"], h["stage"]) for h in history] == [(e, int(e > 4)) for e in range(1, 9)]
    dense = states[3]["model"]  # the dense stage's last epoch
    for tower in ("user_tables", "item_tables"):
        tables = getattr(model, tower)
        assert bool(tables.pruned)
        (weight,), (mask,) = tables.weights(), tables.masks()
        assert int(mask.sum()) == tables.target_nonzeros[0] == round(0.25 * weight.numel())
        assert torch.count_nonzero(weight[~mask]) == 0 and torch.count_nonzero(weight[mask]) > 0
        before = next(v for k, v in dense.items() if k.startswith(tower) and k.endswith("weight"))
        kept = before.abs()[mask].min()
        assert kept >= before.abs()[~mask].max()  # the dense model's largest magnitudes
    assert history[-1]["loss"] < history[0]["loss"]
    recall = evaluate_tower(model, planted, ks=(10,))["recall@10"]
    assert recall > 0.25, recall  # measured 0.31 (full tables, 8 epochs: 0.35; untrained: 0.16)


def test_a_run_resumed_in_its_fine_tune_ends_as_an_uninterrupted_one(planted) -> None:
    """A checkpoint records its stage: resumed after the first fine-tune epoch (a fresh
    process state in between), training ends with the weights of the run that never stopped;
    resumed at the end of the dense stage, it prunes and fine-tunes as that run did."""
    model_cfg, train_cfg, embedding = _pruning(2)
    states: list[dict] = []
    straight, history = train_two_tower(
        planted, model_cfg, train_cfg, embedding=embedding, on_checkpoint=states.append
    )
    assert [s["stage"] for s in states] == [0, 0, 1, 1]
    for saved in (states[2], states[1]):
        torch.manual_seed(123)
        resumed, again = train_two_tower(
            planted, model_cfg, train_cfg, embedding=embedding, resume=saved
        )
        assert [h["loss"] for h in again] == [h["loss"] for h in history]
        for name, value in straight.state_dict().items():
            torch.testing.assert_close(resumed.state_dict()[name], value, rtol=0, atol=0)


def test_dense_adam_trains_the_tables_with_dense_gradients(planted) -> None:
    """`train.optimizer=adam` (SimpleX's): the tables get dense gradients and plain Adam, not
    `SparseAdam`; it trains, gives other weights than the sparse run, and leaves the padding
    row where it was."""
    model_cfg = TwoTowerConfig(dim=8, history_len=4)
    weights = {}
    key = "user_tables.ebc.embedding_bags.t_user_id.weight"
    for optimizer in ("sparse_adam", "adam"):
        train_cfg = RetrievalTrainConfig(
            epochs=2, batch_size=64, num_negatives=8, lr=0.02, threads=1, optimizer=optimizer
        )
        states: list[dict] = []
        model, history = train_two_tower(planted, model_cfg, train_cfg, on_checkpoint=states.append)
        assert history[-1]["loss"] < history[0]["loss"]
        # Plain Adam's groups have `amsgrad`, SparseAdam's do not; the towers are tables only.
        kinds = ["amsgrad" in o["param_groups"][0] for o in states[-1]["optimizers"]]
        assert kinds == [optimizer == "adam"], kinds
        weights[optimizer] = model.state_dict()[key]
        assert torch.equal(states[0]["model"][key][0], weights[optimizer][0])
    assert not torch.allclose(weights["adam"], weights["sparse_adam"])


def test_the_rate_drops_after_the_given_epochs(planted) -> None:
    model_cfg = TwoTowerConfig(dim=8, history_len=4)
    train_cfg = RetrievalTrainConfig(
        epochs=4, batch_size=256, num_negatives=8, lr=0.01, threads=1,
        lr_drops=(1, 3), lr_drop_factor=0.5,
    )  # fmt: skip
    _, history = train_two_tower(planted, model_cfg, train_cfg)
    # `lr` is the rate after the epoch's last step: the drop after epoch 1 shows from then on.
    assert [h["lr"] for h in history] == pytest.approx([0.005, 0.005, 0.0025, 0.0025])


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"lr_drops": (5,)}, r"train.lr_drops: each must be an epoch in \[1, train.epochs=5\)"),
        ({"lr_drops": (0,)}, r"train.lr_drops: each must be an epoch"),
        ({"lr_drops": (2,), "lr_drop_factor": 1.0}, "train.lr_drop_factor: must be in"),
        ({"optimizer": "sgd"}, "train.optimizer"),
    ],
)
def test_schedule_and_optimizer_mistakes_name_the_key(options: dict, match: str) -> None:
    from plexus.platform.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        RetrievalTrainConfig(epochs=5, **options)


def test_towers_share_their_stages_and_different_stages_are_refused() -> None:
    """Both towers of one method define the same stages: the model has them once. Modules that
    define different ones cannot run as one job, and the error names both lists."""
    from plexus.models.embeddings import EmbeddingConfig, protocol
    from plexus.platform.config import from_dict
    from torch import nn

    def tower(method: str) -> TwoTower:
        embedding = from_dict(EmbeddingConfig, {"method": method, "dim": 8})
        return TwoTower(TwoTowerConfig(dim=8, history_len=4), num_users=10, num_items=12,
                        embedding=embedding)  # fmt: skip

    pruned = tower("magnitude_pruning")
    assert [s.name for s in protocol.model_stages(pruned)] == ["dense", "finetune"]
    mixed = nn.ModuleList([pruned, tower("optembed")])
    with pytest.raises(ValueError, match=r"different stages: .*'dense', 'finetune'.*'supernet'"):
        protocol.model_stages(mixed)
    assert protocol.model_stages(tower("full")) == protocol.SINGLE_STAGE


def test_a_refused_config_fails_before_ray_starts_a_worker(planted, tmp_path) -> None:
    """With `use_ray: true` the towers are built once in the driver first: a refused method
    is a `ConfigError` naming the key, not a Ray worker error after `train.max_failures`
    restarts on the same config."""
    from plexus.models.embeddings import EmbeddingConfig
    from plexus.pipelines.retrieval.job import train_model
    from plexus.platform.errors import ConfigError

    optembed = EmbeddingConfig(method="optembed", dim=8)
    config = _job(tmp_path, 1, name="refused", embedding=optembed, use_ray=True)
    tuning = planted.validation()  # a search needs the hold-out this run trains on
    with pytest.raises(ConfigError, match="embedding.method=optembed searches on the validation"):
        train_model(config, tuning, tmp_path / "out")
