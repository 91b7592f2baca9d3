"""Explicit feature interactions: FM's pairwise term (Rendle, 2010) and DCN-v2's cross network
(Wang et al., 2021)."""

from __future__ import annotations

import torch
from torch import nn


def fm_pairwise(fields: torch.Tensor) -> torch.Tensor:
    """sum_{i<j} <v_i, v_j> over F field vectors in O(F D): (B, F, D) -> (B,).

    Rendle's identity: 0.5 * sum_d [(sum_i v_id)^2 - sum_i v_id^2].
    """
    square_of_sum = fields.sum(dim=1).pow(2)
    sum_of_square = fields.pow(2).sum(dim=1)
    return 0.5 * (square_of_sum - sum_of_square).sum(dim=1)


class CrossNetV2(nn.Module):
    """`num_layers` full-rank cross layers x_{l+1} = x0 * (W_l x_l + b_l) + x_l: (B, D) -> (B, D).

    Each layer adds one degree of explicit interaction; W_l is D x D (the paper's full-rank
    "DCN-V2", not the low-rank mixture).
    """

    def __init__(self, dim: int, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(dim, dim) for _ in range(num_layers))
        for layer in self.layers:
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for layer in self.layers:
            x = x0 * layer(x) + x
        return x
