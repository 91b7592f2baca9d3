"""Retrieval losses over L2-normalised vectors with shared sampled negatives."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from plexus.models.retrieval.config import LossKind


def cosine_contrastive_loss(
    user: torch.Tensor,
    pos: torch.Tensor,
    neg: torch.Tensor,
    *,
    margin: float = 0.9,
    negative_weight: float = 150.0,
) -> torch.Tensor:
    """SimpleX's cosine contrastive loss: pull positives to cosine 1, push negatives below
    `margin`. Shapes: user (B, D), pos (B, D), neg (M, D) shared by the batch -> scalar."""
    pos_term = 1.0 - (user * pos).sum(-1)
    neg_term = _MarginHinge.apply(user, neg, margin) / neg.shape[0]
    return (pos_term + negative_weight * neg_term).mean()


class _MarginHinge(torch.autograd.Function):
    """Row sums of relu(user @ neg.T - margin), (B, D) x (M, D) -> (B,), in one (B, M) buffer.

    The autograd graph of the plain expression keeps four (B, M) temporaries (scores, shifted,
    relu, mean) and allocates as many again going backward: with B = 1,024 and M = 4,096 that
    was two thirds of a training step. Here the scores are shifted and clamped in place, and the
    backward pass needs only which pairs are active (score above the margin). A trained model
    keeps all but ~1% of the negatives below it, so the backward pass multiplies a sparse
    (B, M) matrix of the active pairs, and a dense one only when many are active.
    """

    SPARSE_DENSITY = 0.1  # up to this fraction of active pairs, sparse products win (measured)

    @staticmethod
    def forward(ctx: Any, user: torch.Tensor, neg: torch.Tensor, margin: float) -> torch.Tensor:
        shift = torch.tensor(-margin, dtype=user.dtype, device=user.device)
        hinge = torch.addmm(shift, user, neg.T)
        hinge.clamp_(min=0.0)
        ctx.save_for_backward(user, neg, hinge)
        return hinge.sum(dim=1)

    @staticmethod
    def backward(ctx: Any, grad_rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        user, neg, hinge = ctx.saved_tensors
        rows, cols = hinge.nonzero(as_tuple=True)  # the active pairs, in row-major order
        if rows.numel() > _MarginHinge.SPARSE_DENSITY * hinge.numel():
            scale = (hinge > 0).to(user.dtype).mul_(grad_rows.unsqueeze(1))
            return scale @ neg, scale.T @ user, None
        weight = grad_rows[rows]
        by_user = torch.sparse_coo_tensor(
            torch.stack([rows, cols]),
            weight,
            hinge.shape,
            is_coalesced=True,
            check_invariants=False,
        )
        by_negative = torch.sparse_coo_tensor(
            torch.stack([cols, rows]), weight, hinge.shape[::-1], check_invariants=False
        )
        return torch.sparse.mm(by_user, neg), torch.sparse.mm(by_negative, user), None


def sampled_softmax_loss(
    user: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, *, temperature: float = 0.07
) -> torch.Tensor:
    """InfoNCE over in-batch positives plus shared negatives. user (B, D), pos (B, D), neg (M, D)."""
    logits = torch.cat([user @ pos.T, user @ neg.T], dim=1) / temperature
    target = torch.arange(user.shape[0], device=user.device)
    return F.cross_entropy(logits, target)


def retrieval_loss(
    kind: LossKind,
    user: torch.Tensor,
    pos: torch.Tensor,
    neg: torch.Tensor,
    *,
    margin: float,
    negative_weight: float,
    temperature: float,
) -> torch.Tensor:
    """Dispatch on `kind` so that training code names the loss only in its config."""
    if kind is LossKind.COSINE_CONTRASTIVE:
        return cosine_contrastive_loss(
            user, pos, neg, margin=margin, negative_weight=negative_weight
        )
    return sampled_softmax_loss(user, pos, neg, temperature=temperature)
