"""Side features in the retrieval towers: a MovieLens-layout log whose item genre carries the
signal, with catalog items that were only ever rated below `min_rating` (outside the item
vocabulary): they get vectors from their genre alone and are retrieved for that genre's fans."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from plexus.models.retrieval import KnnEmbedConfig, TwoTowerConfig
from plexus.pipelines.ingest import DataConfig
from plexus.pipelines.retrieval.data import ingest_interactions
from plexus.pipelines.retrieval.train import RetrievalTrainConfig, train_two_tower
from plexus.platform.config import from_dict

GENRES, WARM, COLD, USERS = 6, 12, 2, 120


def _write_log(folder: Path) -> None:
    """Users 1..USERS each a fan of genre u % GENRES, rating 8 of its warm items 5 (and two
    random items 2); item i of genre i % GENRES; the COLD last items of each genre are rated
    only 1 (never a positive). u.user gives each user an age."""
    rng = np.random.default_rng(0)
    n_items = GENRES * (WARM + COLD)
    genre = np.arange(1, n_items + 1) % GENRES
    cold = np.arange(1, n_items + 1) > GENRES * WARM
    rows, t = [], 0
    for u in range(1, USERS + 1):
        mine = np.nonzero((genre == u % GENRES) & ~cold)[0] + 1
        for i in rng.choice(mine, 8, replace=False):
            rows.append((u, i, 5, t := t + 1))
        for i in rng.choice(np.nonzero(~cold)[0] + 1, 2, replace=False):
            rows.append((u, i, 2, t := t + 1))
        rows.append((u, int(rng.choice(np.nonzero(cold)[0] + 1)), 1, t := t + 1))
    (folder / "u.data").write_text("".join("\t".join(map(str, r)) + "\n" for r in rows))
    flags = lambda g: "|".join("1" if j == g else "0" for j in range(19))  # noqa: E731
    (folder / "u.item").write_text(
        "".join(f"{i}|Film {i} (1990)|01-Jan-1990||url|{flags(1 + genre[i - 1])}\n"
                for i in range(1, n_items + 1))
    )  # fmt: skip
    (folder / "u.user").write_text(
        "".join(f"{u}|{20 + u % 3}|M|other|{10000 + u}\n" for u in range(1, USERS + 1))
    )


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("side")
    _write_log(folder)
    config = from_dict(
        DataConfig,
        {"format": "movielens", "path": str(folder),
         "interactions": {"min_rating": 4.0, "validation_users": 0}},
    )  # fmt: skip
    _, data = ingest_interactions(config, folder / "shards", progress=False)
    return data


def _train(data, *, side: bool, epochs: int = 15):
    model_cfg = TwoTowerConfig(dim=16, history_len=8, side_features=side)
    train_cfg = RetrievalTrainConfig(
        epochs=epochs,
        batch_size=64,
        num_negatives=64,
        lr=0.02,
        margin=0.5,
        negative_weight=20.0,
        threads=1,
    )
    return train_two_tower(data, model_cfg, train_cfg)[0]


@pytest.fixture(scope="module")
def trained(log):
    return _train(log, side=True)


def test_the_log_gives_side_features_and_a_catalog_of_cold_items(log) -> None:
    data = log
    assert data.num_items == GENRES * WARM  # the split and vocabulary are the ingest's
    assert data.side is not None and data.catalog_ids is not None
    assert sorted(data.catalog_ids.tolist()) == list(
        range(GENRES * WARM + 1, GENRES * (WARM + COLD) + 1)
    )
    assert [f.name for f in data.side.item_features] == ["year", "genres"]
    assert [f.name for f in data.side.user_features] == ["gender", "age", "occupation", "zip3"]
    assert data.side.num_items == GENRES * (WARM + COLD)
    assert not data.side.item_known[data.num_items + 1 :].any()
    assert (data.side.item_lengths[1:, 1] == 1).all()  # one genre each, cold items too
    assert data.all_item_ids.size == data.side.num_items + 1


def _genre_of(data, internal: np.ndarray) -> np.ndarray:
    return (data.all_item_ids[internal] % GENRES).astype(np.int64)


def test_a_cold_item_gets_a_vector_from_its_genre_and_is_retrieved_for_its_fans(
    log, trained
) -> None:
    data, model = log, trained
    with torch.no_grad():
        items = model.all_item_vectors()
        users = torch.arange(1, data.num_users + 1)
        hist = torch.from_numpy(data.histories(8))[users]
        query = model.user_vectors(users, hist, (hist > 0).float())
    cold = np.arange(data.num_items + 1, data.side.num_items + 1)
    assert items[cold].norm(dim=1).min() > 0.99  # a unit vector, from the features alone
    best = cold[(query @ items[cold].T).argmax(dim=1).numpy()]
    fans = (data.user_ids[1:] % GENRES).astype(np.int64)
    hit = float((_genre_of(data, best) == fans).mean())
    assert hit > 0.8, hit  # 1/6 at random
    # Among all items, a fan's best cold item ranks above most of the other genres' items.
    scores = (query @ items[1:].T).numpy()
    rank = (scores > scores[np.arange(users.numel()), best - 1][:, None]).sum(1)
    assert np.median(rank) < 0.5 * data.side.num_items


def test_an_id_only_model_has_no_catalog_items(log) -> None:
    model = _train(log, side=False, epochs=1)
    assert model.num_items == log.num_items and not model.has_item_side
    assert model.all_item_vectors().shape[0] == log.num_items + 1


def test_onnx_export_keeps_parity_with_side_features(log, trained, tmp_path: Path) -> None:
    """The query graph looks the user's side features and the history items' features up
    inside (compact integer tables), with the request's inputs unchanged."""
    pytest.importorskip("onnxruntime")
    from plexus.pipelines.retrieval.compare import fit_knn_embed_query
    from plexus.pipelines.retrieval.export import export_query_model, onnx_parity

    module, _ = fit_knn_embed_query(trained, log, KnnEmbedConfig(num_clusters=4, neighbors=3))
    per_user = trained.user_side_ids.element_size() * trained.user_side_ids.shape[1]
    assert per_user == 4  # four features under 256 values: one byte each, in the graph
    path = export_query_model(module, tmp_path / "q.onnx", history_len=8)
    diff = onnx_parity(
        module, path, num_users=log.num_users, num_items=trained.num_items, history_len=8
    )
    assert diff <= 1e-5


@pytest.mark.slow
def test_the_served_bundle_keeps_onnx_parity_and_serves_cold_items(
    log, trained, tmp_path: Path
) -> None:
    """The bundle's ONNX query graph (user side features looked up inside it) matches torch,
    its index holds the catalog items under their external ids, and the service recommends a
    fan the cold items of its genre (the HTTP request is unchanged: user id and k)."""
    pytest.importorskip("onnxruntime")
    from plexus.pipelines.retrieval.compare import fit_knn_embed_query
    from plexus.pipelines.retrieval.export import write_retrieval_bundle
    from plexus.pipelines.retrieval.user_state import build_user_state
    from plexus.serving.bundle import Bundle
    from plexus.serving.knn_embed import AllocationConfig
    from plexus.serving.user_state import UserStateConfig

    data, model = log, trained
    module, state = fit_knn_embed_query(model, data, KnnEmbedConfig(num_clusters=6, neighbors=3))
    users = build_user_state(module, state, data, UserStateConfig())
    folder, info = write_retrieval_bundle(
        tmp_path / "bundle", name="side", module=module, state=state, data=data, users=users,
        history_len=8, allocation=AllocationConfig(),
    )  # fmt: skip
    assert info["onnx_max_abs_diff"] <= 1e-5
    bundle = Bundle.load(folder)
    assert bundle.num_items == data.side.num_items
    catalog = set(data.catalog_ids.tolist())
    assert catalog <= set(bundle.item_ids.tolist())
    external = [int(u) for u in data.user_ids[1:]]
    served = bundle.recommend_batch(external, k=10, diversify=False)
    cold_hits = [
        [i for i in answer.item_ids.tolist() if i in catalog and i % GENRES == u % GENRES]
        for u, answer in zip(external, served, strict=True)
    ]
    assert np.mean([len(h) > 0 for h in cold_hits]) > 0.8


def test_the_cold_item_task_holds_out_every_interaction_of_its_items(log) -> None:
    from plexus.pipelines.retrieval.side_bench import cold_item_task

    task, held = cold_item_task(log, fraction=0.25, seed=1)
    assert held.size == log.num_items // 4
    assert not np.isin(task.train_items, held).any()
    assert np.isin(held, task.test_items).all()  # each held item had a positive
    assert not task.side.item_known[torch.from_numpy(held)].any()
    assert task.side.item_known[1 : log.num_items + 1].sum() == log.num_items - held.size
    removed = int(np.isin(log.train_items, held).sum())
    assert task.train_items.size == log.train_items.size - removed
    assert task.test_items.size == removed + int(np.isin(log.test_items, held).sum())
