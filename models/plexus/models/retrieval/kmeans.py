"""Spherical k-means: clusters of unit vectors by cosine, the interests of kNN-Embed."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def spherical_kmeans(
    x: torch.Tensor, num_clusters: int, *, iters: int = 25, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster rows of x (N, D) by cosine: -> centroids (C, D) unit norm, assignment (N,) int64.

    k-means++ seeding on cosine distance; empty clusters are re-seeded with the points farthest
    from their centroid, so every cluster keeps at least one member when N >= C.
    """
    x = F.normalize(x.detach().float(), dim=1)
    n = x.shape[0]
    c = min(num_clusters, n)
    gen = torch.Generator().manual_seed(seed)
    first = int(torch.randint(n, (1,), generator=gen))
    centroids = [x[first]]
    best = 1.0 - x @ x[first]
    for _ in range(1, c):
        probs = best.clamp(min=0) + 1e-12
        pick = int(torch.multinomial(probs / probs.sum(), 1, generator=gen))
        centroids.append(x[pick])
        best = torch.minimum(best, 1.0 - x @ x[pick])
    cent = torch.stack(centroids)
    assign = torch.zeros(n, dtype=torch.long)
    for _ in range(iters):
        sims = x @ cent.T
        score, assign = sims.max(dim=1)
        sums = torch.zeros_like(cent).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=c)
        empty = torch.nonzero(counts == 0).flatten()
        if empty.numel():
            far = torch.argsort(score)[: empty.numel()]
            sums[empty] = x[far]
            assign[far] = empty
        cent = F.normalize(sums, dim=1)
    assign = (x @ cent.T).argmax(dim=1)
    return cent, assign
