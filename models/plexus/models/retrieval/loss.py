"""Retrieval losses over L2-normalised vectors with shared sampled negatives."""

from __future__ import annotations

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
    neg_term = F.relu(user @ neg.T - margin).mean(-1)
    return (pos_term + negative_weight * neg_term).mean()


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
