"""Spherical k-means: clusters of unit vectors by cosine, the interests of kNN-Embed."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _seed(x: torch.Tensor, c: int, gen: torch.Generator) -> torch.Tensor:
    """k-means++ seeding on cosine distance."""
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=gen))
    centroids = [x[first]]
    best = 1.0 - x @ x[first]
    for _ in range(1, c):
        probs = best.clamp(min=0) + 1e-12
        pick = int(torch.multinomial(probs / probs.sum(), 1, generator=gen))
        centroids.append(x[pick])
        best = torch.minimum(best, 1.0 - x @ x[pick])
    return torch.stack(centroids)


def _lloyd(
    x: torch.Tensor, cent: torch.Tensor, iters: int
) -> tuple[torch.Tensor, torch.Tensor, float]:
    c = cent.shape[0]
    for _ in range(iters):
        score, assign = (x @ cent.T).max(dim=1)
        sums = torch.zeros_like(cent).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=c)
        empty = torch.nonzero(counts == 0).flatten()
        if empty.numel():  # re-seed empty clusters with the worst-fitting points
            far = torch.argsort(score)[: empty.numel()]
            sums[empty] = x[far]
        cent = F.normalize(sums, dim=1)
    score, assign = (x @ cent.T).max(dim=1)
    return cent, assign, float(score.sum())


def spherical_kmeans(
    x: torch.Tensor, num_clusters: int, *, iters: int = 25, restarts: int = 3, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster rows of x (N, D) by cosine: -> centroids (C, D) unit norm, assignment (N,) int64.

    k-means++ seeding, `restarts` runs keeping the one with the highest total cosine to its
    centroid; empty clusters are re-seeded with the worst-fitting points.
    """
    x = F.normalize(x.detach().float(), dim=1)
    c = min(num_clusters, x.shape[0])
    gen = torch.Generator().manual_seed(seed)
    best: tuple[torch.Tensor, torch.Tensor, float] | None = None
    for _ in range(max(1, restarts)):
        run = _lloyd(x, _seed(x, c, gen), iters)
        if best is None or run[2] > best[2]:
            best = run
    assert best is not None
    return best[0], best[1]
