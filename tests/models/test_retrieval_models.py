"""Retrieval models at tiny sizes: two-tower shapes and cold paths, k-means, kNN-Embed tables."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from plexus.models.retrieval import (
    KnnEmbedConfig,
    KnnEmbedQuery,
    TwoTower,
    TwoTowerConfig,
    cosine_contrastive_loss,
    fit_knn_embed,
    sampled_softmax_loss,
    spherical_kmeans,
)
from plexus.platform.errors import ConfigError


def _model(**kw) -> TwoTower:
    torch.manual_seed(0)
    return TwoTower(TwoTowerConfig(dim=4, history_len=3, **kw), num_users=5, num_items=10)


def test_user_vectors_mix_id_and_history_and_drop_missing_parts() -> None:
    model = _model()
    user = torch.tensor([2, 0, 2, 0])
    hist = torch.tensor([[1, 2, 0], [1, 2, 0], [0, 0, 0], [0, 0, 0]])
    vecs = model.user_vectors(user, hist, (hist > 0).float())
    assert vecs.shape == (4, 4)
    torch.testing.assert_close(vecs[:3].norm(dim=1), torch.ones(3))
    # History only = normalised history mean; id only = normalised id embedding; neither = 0.
    mean = TwoTower.lookup(model.item_tables, torch.tensor([1, 2])).mean(0)
    torch.testing.assert_close(vecs[1], F.normalize(mean, dim=0))
    user_row = model.user_tables.ebc.embedding_bags["t_user_id"].weight[2]
    torch.testing.assert_close(vecs[2], F.normalize(user_row, dim=0))
    assert vecs[3].abs().sum() == 0
    assert model.all_item_vectors().shape == (11, 4)


def test_user_dropout_acts_in_training_only() -> None:
    model = _model(user_dropout=0.5)
    user = torch.arange(1, 6).repeat(40)
    hist = torch.zeros(user.shape[0], 3, dtype=torch.int64)
    model.eval()
    served = model.user_vectors(user, hist, hist.float())
    torch.testing.assert_close(served.norm(dim=1), torch.ones(user.shape[0]))
    model.train()
    dropped = model.user_vectors(user, hist, hist.float())
    zeroed = dropped == 0
    assert 0.3 < zeroed.float().mean() < 0.7  # about half of the entries, each draw its own
    torch.testing.assert_close(dropped[~zeroed], 2.0 * served[~zeroed])  # kept ones scaled 1/(1-p)


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match="model.user_weight"):
        TwoTowerConfig(user_weight=2.0)
    with pytest.raises(ConfigError, match="model.user_dropout"):
        TwoTowerConfig(user_dropout=1.0)
    with pytest.raises(ConfigError, match="use_user_id or use_history"):
        TwoTowerConfig(use_user_id=False, use_history=False)
    with pytest.raises(ConfigError, match="knn_embed.smoothing"):
        KnnEmbedConfig(smoothing=-0.1)


def test_losses_prefer_the_positive() -> None:
    user = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=1)
    good, bad = user.clone(), user.flip(0)
    neg = F.normalize(torch.tensor([[1.0, 1.0], [-1.0, 0.2]]), dim=1)
    assert cosine_contrastive_loss(user, good, neg) < cosine_contrastive_loss(user, bad, neg)
    assert sampled_softmax_loss(user, good, neg) < sampled_softmax_loss(user, bad, neg)


@pytest.mark.parametrize("margin", [0.9, 0.5, 0.1, -1.0])  # 0.1%, 3%, 35%, all pairs active
def test_cosine_contrastive_loss_matches_the_plain_expression(margin: float) -> None:
    """The fused hinge (sparse or dense backward, by density) has the plain formula's value and
    gradients."""
    torch.manual_seed(0)
    user = F.normalize(torch.randn(64, 16), dim=1)
    neg = F.normalize(torch.randn(200, 16), dim=1)
    neg[:3] = user[:3] * 0.99 + 0.01  # a few pairs above even the 0.9 margin
    pos = F.normalize(torch.randn(64, 16), dim=1)
    grads = []
    for fused in (True, False):
        u, n = user.clone().requires_grad_(), neg.clone().requires_grad_()
        if fused:
            loss = cosine_contrastive_loss(u, pos, n, margin=margin, negative_weight=7.0)
        else:
            hinge = F.relu(u @ n.T - margin).mean(-1)
            loss = (1.0 - (u * pos).sum(-1) + 7.0 * hinge).mean()
        loss.backward()
        grads.append((loss.detach(), u.grad, n.grad))
    for fused, plain in zip(*grads, strict=True):
        torch.testing.assert_close(fused, plain)
    assert grads[0][2].abs().sum() > 0  # negatives above the margin were pushed


def test_spherical_kmeans_recovers_planted_directions() -> None:
    torch.manual_seed(0)
    centres = torch.linalg.qr(torch.randn(8, 8))[0][:5]  # orthonormal directions
    truth = torch.arange(100) % 5
    x = centres[truth] + 0.15 * torch.randn(100, 8)
    cent, assign = spherical_kmeans(x, 5, seed=0)
    assert cent.shape == (5, 8)
    torch.testing.assert_close(cent.norm(dim=1), torch.ones(5))
    for c in range(5):  # every found cluster is pure
        assert truth[assign == c].unique().numel() == 1


def _fitted(smoothing: float):
    model = _model()
    histories = torch.tensor([[0, 0, 0], [1, 2, 0], [3, 4, 5], [1, 6, 0], [7, 8, 9], [2, 10, 0]])
    counts = (histories > 0).sum(1)
    indptr = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
    indptr = torch.cat([indptr, indptr[-1:]])[: histories.shape[0] + 1]
    items = histories[histories > 0]
    config = KnnEmbedConfig(num_clusters=3, neighbors=2, smoothing=smoothing)
    state = fit_knn_embed(model, histories, indptr, items, config)
    return model, state, KnnEmbedQuery(model, state, config).eval(), histories


def test_knn_embed_tables_and_query_outputs() -> None:
    _, state, query, histories = _fitted(0.3)
    assert state.item_clusters[0] == -1 and state.item_clusters.shape == (11,)
    assert state.user_table.shape == (6, 4) and state.user_table[0].abs().sum() == 0
    torch.testing.assert_close(state.user_dist[1:].sum(1), torch.ones(5))
    user = torch.tensor([1, 0, 0])
    hist = torch.tensor([[1, 2, 0], [3, 0, 0], [0, 0, 0]])
    with torch.no_grad():
        q, own, components = query(user, hist, (hist > 0).float())
    assert q.shape == (3, 4) and own.shape == (3, 3) and components.shape == (3, 3, 4)
    torch.testing.assert_close(own.sum(1), torch.tensor([1.0, 1.0, 0.0]))  # no history: 0
    torch.testing.assert_close(components.norm(dim=-1), torch.ones(3, 3))
    mixture = query.smoothed_mixture(user, q, own, state)
    torch.testing.assert_close(mixture.sum(1), torch.ones(3))
    # The query graph holds no user table of its own beyond the model's, nor distributions.
    names = {name for name, _ in query.named_buffers()}
    assert not names & {"user_table", "user_dist", "user_ids"}, names


def test_without_smoothing_the_mixture_is_the_history_histogram() -> None:
    _, state, query, _ = _fitted(0.0)
    hist = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        q, own, _ = query(torch.tensor([0]), hist, torch.ones(1, 4))
    mixture = query.smoothed_mixture(torch.tensor([0]), q, own, state)
    torch.testing.assert_close(own[0], mixture[0])
    expected = torch.bincount(state.item_clusters[hist[0]], minlength=3).float() / 4
    torch.testing.assert_close(mixture[0], expected)


def test_neighbours_never_include_the_user_itself() -> None:
    _, state, query, histories = _fitted(1.0)
    # With smoothing 1 the mixture is the mean of the 2 neighbours' distributions; user 1's
    # own distribution must not be among them even though it is its own nearest neighbour.
    with torch.no_grad():
        q, own, _ = query(torch.tensor([1]), histories[1:2], (histories[1:2] > 0).float())
    mixture = query.smoothed_mixture(torch.tensor([1]), q, own, state)
    sims = q @ state.user_table.T
    sims[0, 0] = sims[0, 1] = -10.0
    top = torch.topk(sims, 2, dim=1).indices[0]
    torch.testing.assert_close(mixture[0], state.user_dist[top].mean(0))


def test_the_history_mean_skips_masked_items_anywhere_in_the_row() -> None:
    model = _model()
    hist = torch.tensor([[1, 2, 3]])
    vecs = model.user_vectors(torch.tensor([0]), hist, torch.tensor([[1.0, 0.0, 1.0]]))
    mean = TwoTower.lookup(model.item_tables, torch.tensor([1, 3])).mean(0)
    torch.testing.assert_close(vecs[0], F.normalize(mean, dim=0))


def test_an_own_history_table_feeds_the_user_tower_and_learns_through_it() -> None:
    model = _model(history_table=True)
    hist = torch.tensor([[1, 3, 0]])
    vecs = model.user_vectors(torch.tensor([0]), hist, (hist > 0).float())
    own = TwoTower.lookup(model.history_tables, torch.tensor([1, 3])).mean(0)
    torch.testing.assert_close(vecs[0], F.normalize(own, dim=0))  # not the item tower's rows
    vecs.sum().backward()
    history_rows = model.history_tables.ebc.embedding_bags["t_history_item_id"].weight.grad
    assert set(history_rows.abs().sum(1).nonzero().flatten().tolist()) == {1, 3}
    assert model.compact().history_tables is not None
    with pytest.raises(ConfigError, match="model.history_table"):
        TwoTowerConfig(history_table=True, history_grad=False)


def test_history_attention_weighs_items_by_the_user_and_is_the_mean_for_new_users() -> None:
    model = _model(history_attention=True)
    hist = torch.tensor([[1, 3, 4], [1, 3, 4]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    items = TwoTower.lookup(model.item_tables, hist)
    e_user = model.user_raw(torch.tensor([2, 0]))
    pooled = model.history_attention(e_user, hist, mask)
    scores = (model.history_key(items[0, :2]) * e_user[0]).sum(-1)
    expected = (torch.softmax(scores, 0).unsqueeze(-1) * items[0, :2]).sum(0)
    torch.testing.assert_close(pooled[0], expected)  # the masked third item takes no weight
    torch.testing.assert_close(pooled[1], items[1, :2].mean(0))  # no user vector: the mean
    vecs = model.user_vectors(torch.tensor([2, 0]), hist, mask)
    vecs[0].sum().backward()
    assert model.history_key[0].weight.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="model.history_attention"):
        TwoTowerConfig(history_attention=True, use_user_id=False)
    with pytest.raises(ConfigError, match="model.history_attention"):
        TwoTowerConfig(history_attention=True, history_grad=False)


_EMBEDDINGS = {
    "full": {"method": "full", "dim": 4},
    "hashing": {"method": "hashing", "dim": 4, "budget": 0.5},
    "unified": {"method": "unified", "dim": 2, "budget": 0.5, "chunks": 2},
}


@pytest.mark.parametrize("method", list(_EMBEDDINGS))
def test_table_lookups_get_sparse_gradients_equal_to_the_dense_ones(method: str) -> None:
    """Inside `sparse_lookups` every method's table weights get sparse gradients (what keeps a
    retrieval step cheap), equal to the dense gradients of the same computation."""
    from plexus.models.embeddings import EmbeddingConfig
    from plexus.models.retrieval.sparse import retrieval_optimizers, sparse_lookups
    from plexus.platform.config import from_dict

    embedding = from_dict(EmbeddingConfig, _EMBEDDINGS[method])
    torch.manual_seed(0)
    model = TwoTower(
        TwoTowerConfig(dim=4, history_len=3, user_weight=0.3), num_users=5, num_items=10,
        embedding=embedding,
    )  # fmt: skip

    def loss() -> torch.Tensor:
        hist = torch.tensor([[1, 2, 0], [4, 0, 5]])
        users = model.user_vectors(torch.tensor([1, 3]), hist, (hist > 0).float())
        return (users @ model.item_vectors(torch.tensor([2, 7, 9])).T).square().sum()

    loss().backward()
    dense = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    lookups = sparse_lookups()
    with lookups:
        loss().backward()
    looked_up = [(n, p) for n, p in model.named_parameters() if id(p) in lookups.weights]
    assert len(looked_up) >= 2  # a user table and an item table at least
    for name, param in looked_up:
        assert param.grad.is_sparse, name
        torch.testing.assert_close(param.grad.to_dense(), dense[name])
    kinds = [type(o).__name__ for o in retrieval_optimizers(model, lookups, lr=0.1)]
    assert kinds == ["SparseAdam"]


def test_a_parameter_group_over_sparsely_looked_up_weights_is_refused_naming_it() -> None:
    """A method's own optimiser (Adam, SGD) cannot step sparse gradients: a parameter group
    holding weights that the towers look up with `F.embedding` is a `ConfigError` naming the
    group, not an optimiser error at the first step."""
    from plexus.models.embeddings import EmbeddingConfig
    from plexus.models.embeddings.protocol import ParameterGroup
    from plexus.models.retrieval.sparse import retrieval_optimizers, sparse_lookups

    model = TwoTower(
        TwoTowerConfig(dim=4, history_len=3), num_users=5, num_items=10,
        embedding=EmbeddingConfig(method="full", dim=4),
    )  # fmt: skip
    lookups = sparse_lookups()
    with lookups, torch.no_grad():
        model.item_vectors(torch.tensor([1]))
    weight = next(p for p in model.item_tables.parameters() if id(p) in lookups.weights)
    model.item_tables.parameter_groups = lambda: (ParameterGroup("own", (weight,), "adam"),)
    with pytest.raises(ConfigError, match="parameter group 'own' holds weights looked up"):
        retrieval_optimizers(model, lookups, lr=0.1)
    assert retrieval_optimizers(model, lookups, lr=0.1, dense_tables=True)  # dense: allowed
