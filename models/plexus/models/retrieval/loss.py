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
    was two thirds of a training step. Here the scores are shifted and clamped in place; the
    backward pass needs only which pairs are active (score above the margin), and because a
    trained model pushes almost every negative below it, it gathers the few active pairs instead
    of multiplying the whole mask back when they are sparse.
    """

    SPARSE_DENSITY = 0.005  # below this fraction of active pairs, gather them (measured)

    @staticmethod
    def forward(ctx: Any, user: torch.Tensor, neg: torch.Tensor, margin: float) -> torch.Tensor:
        hinge = torch.addmm(torch.tensor(-margin, dtype=user.dtype), user, neg.T)
        hinge.clamp_(min=0.0)
        ctx.save_for_backward(user, neg, hinge)
        return hinge.sum(dim=1)

    @staticmethod
    def backward(ctx: Any, grad_rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        user, neg, hinge = ctx.saved_tensors
        rows, cols = hinge.nonzero(as_tuple=True)  # the active pairs
        if rows.numel() <= _MarginHinge.SPARSE_DENSITY * hinge.numel():
            weight = grad_rows[rows].unsqueeze(1)
            grad_user = torch.zeros_like(user).index_add_(0, rows, neg[cols] * weight)
            grad_neg = torch.zeros_like(neg).index_add_(0, cols, user[rows] * weight)
            return grad_user, grad_neg, None
        scale = (hinge > 0).to(user.dtype).mul_(grad_rows.unsqueeze(1))
        return scale @ neg, scale.T @ user, None


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
