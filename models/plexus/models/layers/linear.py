"""First-order terms: w0 + sum_i w_{f_i} + <w_dense, x_dense> (logistic regression's logit)."""

from __future__ import annotations

import torch
from torch import nn


class FirstOrder(nn.Module):
    """(dense (B, Dn), pooled per-id weights (B, K)) -> (B,) logit of a linear model.

    The per-id weights w_f come from 1-wide embedding tables of the configured method (owned by
    the backbone, built with `dim=1`), so they obey the same budget as the other tables; all K
    pooled columns (one per feature, or one per unified chunk) are summed.
    """

    def __init__(self, num_dense: int) -> None:
        super().__init__()
        self.dense = nn.Linear(num_dense, 1, bias=False) if num_dense else None
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, dense: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        logit = weights.sum(dim=1) + self.bias
        if self.dense is not None:
            logit = logit + self.dense(dense).squeeze(1)
        return logit
