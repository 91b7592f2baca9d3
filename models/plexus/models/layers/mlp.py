"""The deep part of CTR models: a stack of Linear -> (BatchNorm) -> ReLU -> (Dropout) blocks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class MLP(nn.Module):
    """(B, in_dim) -> (B, hidden[-1]), or (B, out_dim) with a final plain Linear if `out_dim`.

    With no hidden layers and no `out_dim` it is the identity, so backbones can treat an empty
    `hidden` uniformly.
    """

    def __init__(
        self,
        in_dim: int,
        hidden: Sequence[int],
        *,
        dropout: float = 0.0,
        batch_norm: bool = False,
        out_dim: int | None = None,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for h in hidden:
            layers.append(nn.Linear(width, h))
            if batch_norm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        if out_dim is not None:
            layers.append(nn.Linear(width, out_dim))
            width = out_dim
        self.net = nn.Sequential(*layers)
        self.out_dim = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
