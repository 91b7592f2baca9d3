"""Centred side features: a tower's side vectors are measured from their mean over the trained
entities, so no offset shared by all of a feature's rows can move an entity's vector (the
shared direction that collapsed MovieLens' item space into a narrow cone)."""

from __future__ import annotations

import pytest
import torch
from plexus.models.embeddings import EmbeddingConfig
from plexus.models.retrieval import TwoTowerConfig
from plexus.models.retrieval.side import SideFeatures, mean_bag_weights
from plexus.models.retrieval.two_tower import TwoTower
from plexus.platform.feature_spec import Encoding, Feature, FeatureKind

USERS, ITEMS, CATALOG, WIDTH = 7, 9, 2, 3


def _feature(name: str, cardinality: int, *, bag: bool = False) -> Feature:
    return Feature(
        name=name,
        kind=FeatureKind.MULTI_CATEGORICAL if bag else FeatureKind.CATEGORICAL,
        encoding=Encoding.VOCAB,
        cardinality=cardinality,
        max_length=WIDTH if bag else 1,
    )


def _side() -> SideFeatures:
    """Two user features, an item year and a genre bag of 1-3 values; the last CATALOG items
    were never trained."""
    gen = torch.Generator().manual_seed(0)
    total = ITEMS + CATALOG
    user_ids = torch.randint(0, 4, (USERS + 1, 2), generator=gen)
    item_ids = torch.randint(1, 6, (total + 1, 2, WIDTH), generator=gen)
    lengths = torch.randint(1, WIDTH + 1, (total + 1, 2), generator=gen)
    lengths[:, 0] = 1  # the year is single-valued
    lengths[0] = 0  # the padding item
    known = torch.arange(total + 1) <= ITEMS
    known[0] = False
    return SideFeatures(
        user_features=(_feature("age", 4), _feature("gender", 4)),
        item_features=(_feature("year", 6), _feature("genres", 6, bag=True)),
        user_ids=user_ids,
        item_ids=item_ids,
        item_lengths=lengths,
        item_known=known,
    )


@pytest.mark.parametrize("pooling", ["sum", "mean"])
def test_bag_weights_give_the_mean_of_the_pooled_bags(pooling: str) -> None:
    side = _side()
    ids, lengths = side.item_ids[1 : ITEMS + 1], side.item_lengths[1 : ITEMS + 1]
    rows = torch.randn(6, 2, 4)  # feature f's row of value v: rows[v, f]
    values, weights = mean_bag_weights(ids, lengths, pooling=pooling)
    from_weights = (rows[values, torch.arange(2)] * weights.unsqueeze(-1)).sum(dim=0)
    pooled = torch.zeros(ITEMS, 2, 4)
    for e in range(ITEMS):
        for f in range(2):
            bag = rows[ids[e, f, : lengths[e, f]], f]
            pooled[e, f] = bag.mean(0) if pooling == "mean" else bag.sum(0)
    torch.testing.assert_close(from_weights, pooled.mean(dim=0))


def _model(*, center: bool, method: str = "full") -> TwoTower:
    torch.manual_seed(0)
    config = TwoTowerConfig(dim=8, history_len=4, side_center=center, item_id_dropout=0.0)
    embedding = EmbeddingConfig(method=method, dim=8, budget=0.5) if method != "full" else None
    return TwoTower(
        config, num_users=USERS, num_items=ITEMS, embedding=embedding, side=_side()
    ).eval()


def _side_part(model: TwoTower, items: torch.Tensor) -> torch.Tensor:
    known = model.item_known.clone()
    model.item_known.zero_()  # the id bags left empty: the side features' part alone
    try:
        return model.item_raw(items)
    finally:
        model.item_known.copy_(known)


@pytest.mark.parametrize("method", ["full", "hashing"])
def test_centred_side_parts_average_to_zero_over_the_trained_items(method: str) -> None:
    model = _model(center=True, method=method)
    with torch.no_grad():
        trained = _side_part(model, torch.arange(1, ITEMS + 1))
        users = torch.arange(1, USERS + 1)
        ids = torch.nn.functional.pad(model.user_side_ids[users].long(), (1, 0))
        ids[:, 0] = users
        only_id = torch.tensor([[1, 0, 0]]).expand(USERS, -1)
        user_id_rows = model.user_tables.forward_padded(ids.unsqueeze(-1), only_id)[:, :8]
        user_side = model.user_raw(users) - user_id_rows
    assert trained.norm(dim=1).min() > 0  # the items still differ by their features
    torch.testing.assert_close(trained.mean(dim=0), torch.zeros(8), atol=1e-6, rtol=0)
    torch.testing.assert_close(user_side.mean(dim=0), torch.zeros(8), atol=1e-6, rtol=0)


@pytest.mark.parametrize("center", [True, False])
def test_an_offset_shared_by_a_features_rows_moves_no_item_only_when_centred(
    center: bool,
) -> None:
    """(Exactly so for a single-valued feature, and for a bag under mean pooling; a sum-pooled
    bag keeps the offset times its length's difference from the mean length.)"""
    model = _model(center=center)
    every = torch.arange(1, ITEMS + CATALOG + 1)  # catalog items too, from features alone
    with torch.no_grad():
        before = model.all_item_vectors()[every]
        table = model.item_tables.ebc.embedding_bags["t_year"].weight
        table += torch.randn(8) * 3.0
        after = model.all_item_vectors()[every]
    moved = (before - after).norm(dim=1).max()
    assert (moved < 1e-5) if center else (moved > 0.1), float(moved)


def test_the_padding_item_and_the_unknown_user_stay_zero() -> None:
    model = _model(center=True)
    with torch.no_grad():
        assert model.item_raw(torch.tensor([0])).abs().max() == 0
        assert model.user_raw(torch.tensor([0])).abs().max() == 0


def _tower_loss(model: TwoTower) -> torch.Tensor:
    users = torch.arange(1, USERS + 1)
    history = torch.randint(1, ITEMS + 1, (USERS, 4), generator=torch.Generator().manual_seed(1))
    u = model.user_vectors(users, history, torch.ones(USERS, 4))
    return (u @ model.item_vectors(torch.arange(1, ITEMS + 1)).T).square().sum()


def test_a_step_shares_the_side_means_with_the_same_gradients() -> None:
    model = _model(center=True).train()
    plain = torch.autograd.grad(_tower_loss(model), list(model.parameters()))
    calls = []
    original = model._side_mean
    model._side_mean = lambda tables, tower: calls.append(tower) or original(tables, tower)  # type: ignore[method-assign]
    with model.shared_side_means():
        loss = _tower_loss(model)
    shared = torch.autograd.grad(loss, list(model.parameters()))
    assert sorted(calls) == ["item", "user"]  # once each, though the items are called twice
    for a, b in zip(plain, shared, strict=True):
        torch.testing.assert_close(a, b)
    with torch.no_grad():  # outside the context, a changed table is seen again
        model.item_tables.ebc.embedding_bags["t_year"].weight.add_(1.0)
    _tower_loss(model)
    assert calls.count("item") > 1
