"""Two-tower / matrix-factorisation retrieval model with a history-aware user tower.

Ids follow the platform convention: internal ids 1..U / 1..N, 0 = unknown user / padding item.
The user tower mixes the user-id embedding with a projected mean of the history items
(SimpleX-style aggregation), so a new user with only a history can be served. Uses plain
`nn.Embedding` gathers (sparse gradients), which also export to ONNX as Gather ops.

Example:
    >>> model = TwoTower(TwoTowerConfig(dim=8, history_len=4), num_users=10, num_items=20)
    >>> u = model.user_vectors(torch.tensor([3]), torch.tensor([[1, 2, 0, 0]]),
    ...                        torch.tensor([[1.0, 1.0, 0.0, 0.0]]))
    >>> tuple(u.shape)
    (1, 8)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from plexus.models.retrieval.config import TwoTowerConfig
from torch import nn


class TwoTower(nn.Module):
    """User tower (user id + padded history) and item tower (item id), both L2-normalised."""

    def __init__(self, config: TwoTowerConfig, *, num_users: int, num_items: int) -> None:
        super().__init__()
        self.config = config
        self.num_users = num_users
        self.num_items = num_items
        self.user_embedding = nn.Embedding(num_users + 1, config.dim, sparse=True)
        self.item_embedding = nn.Embedding(num_items + 1, config.dim, sparse=True, padding_idx=0)
        self.history_proj: nn.Module = (
            nn.Linear(config.dim, config.dim, bias=False)
            if config.project_history
            else nn.Identity()
        )
        with torch.no_grad():
            nn.init.normal_(self.user_embedding.weight, std=config.init_std)
            nn.init.normal_(self.item_embedding.weight, std=config.init_std)
            self.item_embedding.weight[0].zero_()
            self.user_embedding.weight[0].zero_()
            if isinstance(self.history_proj, nn.Linear):
                self.history_proj.weight.copy_(torch.eye(config.dim))

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
        e_user = self.user_embedding(user)
        items = self.item_embedding(history)
        if not cfg.history_grad:
            items = items.detach()
        mean = (items * mask.unsqueeze(-1)).sum(dim=1)
        mean = self.history_proj(mean / count.clamp(min=1.0).unsqueeze(-1))
        mixed = (a.unsqueeze(-1) * e_user + b.unsqueeze(-1) * mean) / (a + b).clamp(
            min=1e-6
        ).unsqueeze(-1)
        return F.normalize(mixed, dim=-1)

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        """(...) item ids -> (..., D) unit item vectors."""
        return F.normalize(self.item_embedding(items), dim=-1)

    def all_item_vectors(self) -> torch.Tensor:
        """(N + 1, D) unit vectors of every item; row 0 (padding) is zero."""
        return F.normalize(self.item_embedding.weight, dim=-1)
