"""Planted multi-interest interactions: the fixture that tests (and smoke runs) assert on.

Items fall into `num_groups` interest groups; each user has 2-3 interests with unequal weights
and draws its items from them, so a good retriever must cover a user's minor interests too.
"""

from __future__ import annotations

import numpy as np

from plexus.pipelines.retrieval.data import Interactions, from_pairs


def planted_interests(
    *,
    num_users: int = 300,
    num_groups: int = 8,
    items_per_group: int = 25,
    per_user: int = 24,
    test_per_user: int = 6,
    seed: int = 0,
) -> tuple[Interactions, dict[int, np.ndarray]]:
    """-> (interactions, {external user id: its planted interest groups}); item g*P + j is in
    group g. Test items are drawn from the same interests as the training ones."""
    rng = np.random.default_rng(seed)
    train_u: list[int] = []
    train_i: list[int] = []
    test_u: list[int] = []
    test_i: list[int] = []
    planted: dict[int, np.ndarray] = {}
    for user in range(num_users):
        groups = rng.choice(num_groups, size=int(rng.integers(2, 4)), replace=False)
        weights = np.sort(rng.dirichlet(np.full(groups.size, 2.0)))[::-1]
        weights = np.maximum(weights, 0.15)
        weights /= weights.sum()
        planted[user] = groups
        total = per_user + test_per_user
        counts = np.maximum(1, np.round(weights * total).astype(int))
        items = np.concatenate(
            [
                g * items_per_group + rng.choice(items_per_group, size=min(c, items_per_group), replace=False)
                for g, c in zip(groups, counts, strict=True)
            ]
        )
        rng.shuffle(items)
        split = max(1, items.size - test_per_user)
        train_u += [user] * split
        train_i += items[:split].tolist()
        test_u += [user] * (items.size - split)
        test_i += items[split:].tolist()
    data = from_pairs(
        "planted",
        (np.array(train_u), np.array(train_i)),
        (np.array(test_u), np.array(test_i)),
    )
    return data, planted
