"""Two-tower / matrix-factorisation retrieval model with a history-aware user tower, on the
platform's embedding tables.

Ids follow the platform convention: internal ids 1..U / 1..N (the feature spec's vocabulary
ids), 0 = unknown user / padding item. Each tower takes its sparse features through an
`EmbeddingTables` built by `build_embedding_tables(embedding, features)`, so `embedding.method`
(full, hashing, multiplexed, unified, or a learned method) chooses the retrieval tables as it
does the CTR ones. The user tower mixes the user-id vector with a projected mean of the history
items' vectors (SimpleX-style aggregation), so a new user with only a history can be served;
with `history_table` the history items have rows of their own (a third `EmbeddingTables`,
`history_tables`, of the same method), as SimpleX's user-history feature has.
Lookups go through `EmbeddingTables.forward_padded` (plain gathers, hashing in the graph), which
is also what exports to ONNX; `sparse_lookups` gives them sparse gradients in training.

Side features (`SideFeatures`, with `config.side_features`): each tower's tables then hold the
id feature and the entity's side features (MovieLens: user gender, age, occupation, zip3; item
year and the genres as one multi-valued bag), looked up from per-entity id tables inside the
model (a served request still sends only the user id and history). The feature vectors are
*summed* into the entity's raw vector: a sum adds no parameters, keeps every method's tables
(and their compressed forms) as they are, keeps an item vector linear in its features (the
history sum is still a sum of item vectors), and puts a catalog item that was never trained
(`SideFeatures.item_known` False: its id bag is left empty) in the same space as trained ones,
with its features' vector. A learned projection of the concatenation was not needed for that.

The side features' sum is *centred* (`config.side_center`, on by default): the tower subtracts
its mean over the trained users or items (`side_mean`, a fixed weighting of each feature's
rows), so the features say how an entity differs from the others, never where all of them are.
Uncentred, rows shared by every item (a year, a genre) are stepped by every batch and grew to
6x an id's norm along one common direction: every MovieLens item vector sat in a cone of mean
pairwise cosine 0.96, and validation Recall@200 fell from 0.63 (ids only) to 0.53 (centred, no
item ids dropped: 0.62, with Recall@20 0.157 against 0.155). The mean is exact for single-valued
features and mean-pooled bags; a sum-pooled bag keeps an offset times its length's deviation.
Centring every pooled row on its feature's mean row instead (exact for any bag length) was
measured too: validation mean recall over K = 20-200 0.3854 against this one's 0.3930, test
within noise (one seed each), so the entity mean stays.

Example:
    >>> model = TwoTower(TwoTowerConfig(dim=8, history_len=4), num_users=10, num_items=20)
    >>> u = model.user_vectors(torch.tensor([3]), torch.tensor([[1, 2, 0, 0]]),
    ...                        torch.tensor([[1.0, 1.0, 0.0, 0.0]]))
    >>> tuple(u.shape)
    (1, 8)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from plexus.models.embeddings import (
    EmbeddingConfig,
    EmbeddingTables,
    build_embedding_tables,
    protocol,
)
from plexus.models.retrieval.config import TwoTowerConfig
from plexus.models.retrieval.side import SideFeatures, compact_ids, mean_bag_weights
from plexus.platform.errors import ConfigError, DataError
from plexus.platform.feature_spec import Encoding, Feature, FeatureKind
from torch import nn

USER_ID = "user_id"
ITEM_ID = "item_id"
HISTORY_ITEM_ID = "history_item_id"


def id_feature(name: str, count: int) -> Feature:
    """The id feature of `count` entities: vocabulary ids 1..count, 0 = OOV."""
    return Feature(
        name=name, kind=FeatureKind.CATEGORICAL, encoding=Encoding.VOCAB, cardinality=count + 1
    )


class TwoTower(nn.Module):
    """User tower (user id + padded history) and item tower (item id), both L2-normalised.

    `embedding` None: full tables of width `config.dim` (the model before the platform's tables).
    Each tower has its own `EmbeddingTables` (a shared method shares rows within a tower).
    `side`: the side features of every user and item (used when `config.side_features`; its
    item count may exceed the trained vocabulary by catalog items never trained on).
    """

    def __init__(
        self,
        config: TwoTowerConfig,
        *,
        num_users: int,
        num_items: int,
        embedding: EmbeddingConfig | None = None,
        side: SideFeatures | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        if not config.side_features:
            side = None
        if side is not None and (side.num_users < num_users or side.num_items < num_items):
            raise DataError(
                f"side features of {side.num_users} users / {side.num_items} items for a model "
                f"of {num_users} / {num_items}"
            )
        self.num_users = num_users
        self.num_items = side.num_items if side is not None else num_items
        self.embedding = embedding or EmbeddingConfig(dim=config.dim)
        user_side = side.user_features if side is not None else ()
        item_side = side.item_features if side is not None else ()
        self.user_tables = self._tables([id_feature(USER_ID, num_users), *user_side])
        self.item_tables = self._tables([id_feature(ITEM_ID, self.num_items), *item_side])
        # SimpleX's user_history feature (SVD++'s implicit factors): the history's items
        # looked up by id in a table of their own instead of the item tower's rows.
        self.history_tables = (
            self._tables([id_feature(HISTORY_ITEM_ID, self.num_items)])
            if config.history_table
            else None
        )
        self._side_means: dict[str, torch.Tensor] | None = None  # see `shared_side_means`
        self.has_user_side = bool(user_side)
        self.has_item_side = bool(item_side)
        if side is not None and user_side:
            self.register_buffer("user_side_ids", compact_ids(side.user_ids[: num_users + 1]))
        if side is not None and item_side:
            self.register_buffer("item_side_ids", compact_ids(side.item_ids))
            self.register_buffer("item_side_lengths", compact_ids(side.item_lengths))
            self.register_buffer("item_known", side.item_known.to(torch.bool).clone())
        if side is not None and config.side_center:
            pooling = self.embedding.pooling
            trained = side.item_known.to(torch.bool)
            users = side.user_ids[1 : num_users + 1]
            bags = {  # a user's features are single-valued: bags of one value each
                "user": (users.unsqueeze(-1), torch.ones_like(users, dtype=torch.int64)),
                "item": (side.item_ids[trained], side.item_lengths[trained]),
            }
            for tower, (ids, lengths) in bags.items():
                if ids.shape[1] == 0:
                    continue
                values, weights = mean_bag_weights(ids, lengths, pooling=pooling)
                # Derived from the side features, not learned: out of the state dict, so a
                # checkpoint from before the centring still loads.
                self.register_buffer(f"{tower}_mean_values", compact_ids(values), persistent=False)
                self.register_buffer(f"{tower}_mean_weights", weights, persistent=False)
        self.history_key = (  # SimpleX's W_k of user attention
            nn.Sequential(nn.Linear(config.dim, config.dim), nn.Tanh())
            if config.history_attention
            else None
        )
        self.history_proj: nn.Module = (
            nn.Linear(config.dim, config.dim, bias=False)
            if config.project_history
            else nn.Identity()
        )
        with torch.no_grad():
            # The tables' own N(0, 0.01^2) suits CTR logits; cosine towers train from init_std.
            for tables in (self.user_tables, self.item_tables, self.history_tables):
                if tables is None:
                    continue
                for param in tables.parameters():
                    if param.dim() == 2 and param.is_floating_point():
                        nn.init.normal_(param, std=config.init_std)
            if isinstance(self.history_proj, nn.Linear):
                self.history_proj.weight.copy_(torch.eye(config.dim))
        protocol.bind_model(self)

    def _tables(self, features: Sequence[Feature]) -> EmbeddingTables:
        tables = build_embedding_tables(self.embedding, features)
        widths = set(tables.output_dims().values())
        if widths != {self.config.dim}:
            raise ConfigError(
                f"embedding: the {self.embedding.method.value} tables give features of width "
                f"{sorted(widths)}, but model.dim is {self.config.dim}; set embedding.dim "
                "(times embedding.chunks for unified) to model.dim"
            )
        return tables

    @staticmethod
    def lookup(tables: EmbeddingTables, ids: torch.Tensor) -> torch.Tensor:
        """(...) ids of a one-feature tower -> (..., D) raw vectors; id 0 gives zeros."""
        flat = ids.reshape(-1, 1, 1)
        present = (flat[:, :, 0] > 0).to(torch.int64)  # (B, 1): id 0 is an empty bag
        vectors = tables.forward_padded(flat, present)
        return vectors.reshape(*ids.shape, -1)

    def user_raw(self, user: torch.Tensor) -> torch.Tensor:
        """(B,) user ids -> (B, D) raw user vectors: the id's plus its side features' (zeros for
        the unknown user 0)."""
        if not self.has_user_side:
            return self.lookup(self.user_tables, user)
        known = (user > 0).to(torch.int64)  # (B,)
        side = self.user_side_ids[user].to(torch.int64)  # (B, Fu)
        ids = torch.cat([user.unsqueeze(1), side], dim=1).unsqueeze(-1)  # (B, 1 + Fu, 1)
        lengths = known.unsqueeze(1).expand(-1, ids.shape[1])  # (B, 1 + Fu)
        out = self.user_tables.forward_padded(ids, lengths)
        raw = out.reshape(user.shape[0], ids.shape[1], -1).sum(dim=1)
        if self.config.side_center:
            raw = raw - known.unsqueeze(1) * self.side_mean(self.user_tables, "user")
        return raw

    def item_raw(self, items: torch.Tensor) -> torch.Tensor:
        """(...) item ids -> (..., D) raw item vectors: the id's (trained items only) plus the
        side features' (zeros for the padding id 0)."""
        if not self.has_item_side:
            return self.lookup(self.item_tables, items)
        flat = items.reshape(-1)
        side = self.item_side_ids[flat].to(torch.int64)  # (B, Fi, L)
        present = (flat > 0).to(torch.int64).unsqueeze(1)
        side_lengths = self.item_side_lengths[flat].to(torch.int64) * present  # (B, Fi)
        known = self.item_known[flat] & (flat > 0)
        rate = self.config.item_id_dropout
        if self.training and rate > 0:
            known = known & (torch.rand(flat.shape, device=flat.device) >= rate)
        id_bag = F.pad(flat.unsqueeze(1), (0, side.shape[2] - 1))
        ids = torch.cat([id_bag.unsqueeze(1), side], dim=1)  # (B, 1 + Fi, L)
        lengths = torch.cat([known.to(torch.int64).unsqueeze(1), side_lengths], dim=1)
        out = self.item_tables.forward_padded(ids, lengths)
        raw = out.reshape(flat.shape[0], ids.shape[1], -1).sum(dim=1)
        if self.config.side_center:
            raw = raw - present * self.side_mean(self.item_tables, "item")
        return raw.reshape(*items.shape, -1)

    @contextlib.contextmanager
    def shared_side_means(self) -> Iterator[None]:
        """Within it, each tower's side mean is looked up once and reused: one training step's
        tower calls (history, positives, negatives, user) share it, and its gradient."""
        self._side_means = {}
        try:
            yield
        finally:
            self._side_means = None

    def side_mean(self, tables: EmbeddingTables, tower: str) -> torch.Tensor:
        """(D,) the mean over the tower's trained entities of their side features' summed
        vectors: the tower's `{tower}_mean_values` rows weighted by `{tower}_mean_weights`
        (`mean_bag_weights`), one padded lookup of each feature's distinct values."""
        shared = self._side_means
        if shared is not None and tower in shared:
            return shared[tower]
        mean = self._side_mean(tables, tower)
        if shared is not None:
            shared[tower] = mean
        return mean

    def _side_mean(self, tables: EmbeddingTables, tower: str) -> torch.Tensor:
        values = getattr(self, f"{tower}_mean_values").to(torch.int64)  # (R, F)
        weights = getattr(self, f"{tower}_mean_weights")  # (R, F)
        ids = F.pad(values, (1, 0)).unsqueeze(-1)  # (R, 1 + F, 1): the id column is empty
        lengths = F.pad((weights > 0).to(torch.int64), (1, 0))
        rows = tables.forward_padded(ids, lengths).reshape(values.shape[0], ids.shape[1], -1)
        return (rows[:, 1:] * weights.unsqueeze(-1)).sum(dim=(0, 1))

    def user_vectors(
        self, user: torch.Tensor, history: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """(B,) user ids, (B, L) history ids, (B, L) float mask -> (B, D) unit user vectors.

        Parts that are absent (user id 0, empty history, or disabled in the config) drop out of
        the mix instead of contributing zeros.
        """
        cfg = self.config
        mask = mask.to(torch.float32)
        has_user = (
            (user > 0).to(torch.float32)
            if cfg.use_user_id
            else torch.zeros_like(user, dtype=torch.float32)
        )
        count = mask.sum(dim=1)
        has_hist = (count > 0).to(torch.float32) if cfg.use_history else torch.zeros_like(count)
        a = (cfg.user_weight if cfg.use_history else 1.0) * has_user
        b = (1.0 - cfg.user_weight if cfg.use_user_id else 1.0) * has_hist
        e_user = self.user_raw(user)
        with torch.set_grad_enabled(cfg.history_grad and torch.is_grad_enabled()):
            if self.history_key is None:
                pooled = self.history_sum(history, mask) / count.clamp(min=1.0).unsqueeze(-1)
            else:
                pooled = self.history_attention(e_user, history, mask)
        aggregated = self.history_proj(pooled)
        mixed = (a.unsqueeze(-1) * e_user + b.unsqueeze(-1) * aggregated) / (a + b).clamp(
            min=1e-6
        ).unsqueeze(-1)
        return F.dropout(F.normalize(mixed, dim=-1), cfg.user_dropout, self.training)

    def history_attention(
        self, e_user: torch.Tensor, history: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """(B, D) user id vectors, (B, L) item ids, (B, L) 0/1 mask -> (B, D) the kept items'
        raw vectors weighted by softmax_i(tanh(W_k h_i + b_k) . e_user), SimpleX's user
        attention; a row without kept items gives zeros."""
        if self.history_key is None:
            raise ConfigError("history_attention: the model was built with it off")
        items = self.history_items(history)
        scores = (self.history_key(items) * e_user.unsqueeze(1)).sum(dim=-1)  # (B, L)
        weights = torch.softmax(scores.masked_fill(mask <= 0, -1e9), dim=1) * mask
        return (weights.unsqueeze(-1) * items).sum(dim=1)

    def history_items(self, history: torch.Tensor) -> torch.Tensor:
        """(B, L) item ids -> (B, L, D) the raw vectors the user tower reads for them: rows of
        the history's own table (`history_table`), else the item tower's raw vectors (id plus
        side features; in training the batch's distinct items are looked up once each)."""
        if self.history_tables is not None:
            return self.lookup(self.history_tables, history)
        if not self.has_item_side:
            return self.lookup(self.item_tables, history)
        if self.training:
            distinct, inverse = torch.unique(history, return_inverse=True)
            return self.item_raw(distinct)[inverse]
        return self.item_raw(history)

    def history_sum(self, history: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, L) item ids, (B, L) 0/1 mask -> (B, D) sum of the kept items' raw vectors.

        The kept ids are moved to the front of each row, so the history is one sum-pooled bag
        per user for the tables (one gather and one reduction, as `nn.EmbeddingBag` would do):
        looking each item up alone and masking after cost three more passes over (B, L, D).
        With item side features each item's raw vector (id + features) is summed instead; in
        training the batch's distinct items are looked up once each (a user's history repeats
        the catalog's popular items: on MovieLens ~1.4k distinct items against 25k history
        slots a batch), the export path looks every slot up (no data-dependent shapes).
        """
        if self.has_item_side and self.history_tables is None:
            return (self.history_items(history) * mask.unsqueeze(-1)).sum(dim=1)
        keep = mask > 0
        positions = torch.arange(history.shape[1], device=history.device)
        # Distinct keys, kept positions first in their order: a plain sort (TopK in ONNX).
        key = keep.to(torch.int64) * (history.shape[1] + 1) - positions
        front = torch.sort(key, dim=1, descending=True).indices
        ids = torch.gather(history * keep.to(history.dtype), 1, front).unsqueeze(1)  # (B, 1, L)
        lengths = keep.sum(dim=1, keepdim=True).to(torch.int64)  # (B, 1)
        tables = self.item_tables if self.history_tables is None else self.history_tables
        summed = tables.forward_padded(ids, lengths)
        if self.embedding.pooling == "mean":  # the tables averaged the bag: undo it
            summed = summed * lengths.clamp(min=1).to(summed.dtype)
        return summed

    def compact(self) -> TwoTower:
        """A copy whose towers' tables are in their serving form (`EmbeddingTables.compact`:
        DSL's row-compressed arrays, OptEmbed's kept rows): the model to export. Same vectors
        as this model in eval mode."""
        import copy

        served = copy.deepcopy(self).eval()
        served.user_tables = served.user_tables.compact()
        served.item_tables = served.item_tables.compact()
        if served.history_tables is not None:
            served.history_tables = served.history_tables.compact()
        return served

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        """(...) item ids -> (..., D) unit item vectors (zeros for the padding id 0)."""
        return F.normalize(self.item_raw(items), dim=-1)

    def all_item_vectors(self) -> torch.Tensor:
        """(N + 1, D) unit vectors of every item; row 0 (padding) is zero."""
        device = next(self.parameters()).device
        return self.item_vectors(torch.arange(self.num_items + 1, device=device))
