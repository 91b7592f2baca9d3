"""Two-tower / matrix-factorisation retrieval model with a history-aware user tower, on the
platform's embedding tables.

Ids follow the platform convention: internal ids 1..U / 1..N (the feature spec's vocabulary
ids), 0 = unknown user / padding item. Each tower takes its sparse features through an
`EmbeddingTables` built by `build_embedding_tables(embedding, features)`, so `embedding.method`
(full, hashing, multiplexed, unified, or a learned method) chooses the retrieval tables as it
does the CTR ones. The user tower mixes the user-id vector with a projected mean of the history
items' vectors (SimpleX-style aggregation), so a new user with only a history can be served.
Lookups go through `EmbeddingTables.forward_padded` (plain gathers, hashing in the graph), which
is also what exports to ONNX; `sparse_lookups` gives them sparse gradients in training.

Example:
    >>> model = TwoTower(TwoTowerConfig(dim=8, history_len=4), num_users=10, num_items=20)
    >>> u = model.user_vectors(torch.tensor([3]), torch.tensor([[1, 2, 0, 0]]),
    ...                        torch.tensor([[1.0, 1.0, 0.0, 0.0]]))
    >>> tuple(u.shape)
    (1, 8)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from plexus.models.embeddings import EmbeddingConfig, EmbeddingTables, build_embedding_tables
from plexus.models.retrieval.config import TwoTowerConfig
from plexus.platform.errors import ConfigError
from plexus.platform.feature_spec import Encoding, Feature, FeatureKind
from torch import nn

USER_ID = "user_id"
ITEM_ID = "item_id"


def id_feature(name: str, count: int) -> Feature:
    """The id feature of `count` entities: vocabulary ids 1..count, 0 = OOV."""
    return Feature(
        name=name, kind=FeatureKind.CATEGORICAL, encoding=Encoding.VOCAB, cardinality=count + 1
    )


class TwoTower(nn.Module):
    """User tower (user id + padded history) and item tower (item id), both L2-normalised.

    `embedding` None: full tables of width `config.dim` (the model before the platform's tables).
    Each tower has its own `EmbeddingTables` (a shared method shares rows within a tower).
    """

    def __init__(
        self,
        config: TwoTowerConfig,
        *,
        num_users: int,
        num_items: int,
        embedding: EmbeddingConfig | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.num_users = num_users
        self.num_items = num_items
        self.embedding = embedding or EmbeddingConfig(dim=config.dim)
        self.user_tables = self._tables([id_feature(USER_ID, num_users)])
        self.item_tables = self._tables([id_feature(ITEM_ID, num_items)])
        self.history_proj: nn.Module = (
            nn.Linear(config.dim, config.dim, bias=False)
            if config.project_history
            else nn.Identity()
        )
        with torch.no_grad():
            # The tables' own N(0, 0.01^2) suits CTR logits; cosine towers train from init_std.
            for tables in (self.user_tables, self.item_tables):
                for param in tables.parameters():
                    if param.dim() == 2 and param.is_floating_point():
                        nn.init.normal_(param, std=config.init_std)
            if isinstance(self.history_proj, nn.Linear):
                self.history_proj.weight.copy_(torch.eye(config.dim))

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
        e_user = self.lookup(self.user_tables, user)
        with torch.set_grad_enabled(cfg.history_grad and torch.is_grad_enabled()):
            total = self.history_sum(history, mask)
        mean = self.history_proj(total / count.clamp(min=1.0).unsqueeze(-1))
        mixed = (a.unsqueeze(-1) * e_user + b.unsqueeze(-1) * mean) / (a + b).clamp(
            min=1e-6
        ).unsqueeze(-1)
        return F.normalize(mixed, dim=-1)

    def history_sum(self, history: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, L) item ids, (B, L) 0/1 mask -> (B, D) sum of the kept items' raw vectors.

        The kept ids are moved to the front of each row, so the history is one sum-pooled bag
        per user for the tables (one gather and one reduction, as `nn.EmbeddingBag` would do):
        looking each item up alone and masking after cost three more passes over (B, L, D).
        """
        keep = mask > 0
        positions = torch.arange(history.shape[1], device=history.device)
        # Distinct keys, kept positions first in their order: a plain sort (TopK in ONNX).
        key = keep.to(torch.int64) * (history.shape[1] + 1) - positions
        front = torch.sort(key, dim=1, descending=True).indices
        ids = torch.gather(history * keep.to(history.dtype), 1, front).unsqueeze(1)  # (B, 1, L)
        lengths = keep.sum(dim=1, keepdim=True).to(torch.int64)  # (B, 1)
        summed = self.item_tables.forward_padded(ids, lengths)
        if self.embedding.pooling == "mean":  # the tables averaged the bag: undo it
            summed = summed * lengths.clamp(min=1).to(summed.dtype)
        return summed

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        """(...) item ids -> (..., D) unit item vectors (zeros for the padding id 0)."""
        return F.normalize(self.lookup(self.item_tables, items), dim=-1)

    def all_item_vectors(self) -> torch.Tensor:
        """(N + 1, D) unit vectors of every item; row 0 (padding) is zero."""
        device = next(self.parameters()).device
        return self.item_vectors(torch.arange(self.num_items + 1, device=device))
