"""`pooled_lookup` computes exactly what `embedding_bag` does, gradient included."""

from __future__ import annotations

import pytest
import torch
from plexus.models.layers.lookup import pooled_lookup
from torch.nn import functional


def _bags(single: bool) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    if single:
        lengths = torch.ones(64, dtype=torch.int64)
    else:  # empty bags, long bags and repeated ids
        lengths = torch.randint(0, 6, (64,), generator=gen)
        lengths[:3] = torch.tensor([0, 9, 0])
    ids = torch.randint(0, 11, (int(lengths.sum()),), generator=gen)  # 11 rows: many repeats
    return ids, torch.cat([lengths.new_zeros(1), torch.cumsum(lengths, 0)])


@pytest.mark.parametrize("mode", ["sum", "mean"])
@pytest.mark.parametrize("single", [True, False])
def test_values_and_table_gradient_match_embedding_bag(mode: str, single: bool) -> None:
    ids, offsets = _bags(single)
    weight = torch.randn(11, 3, requires_grad=True)
    upstream = torch.randn(offsets.numel() - 1, 3)
    ours = pooled_lookup(ids, weight, offsets, mode)
    (ours * upstream).sum().backward()
    ours_grad, weight.grad = weight.grad, None
    theirs = functional.embedding_bag(ids, weight, offsets, mode=mode, include_last_offset=True)
    (theirs * upstream).sum().backward()
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(ours_grad, weight.grad)
    assert ours_grad.abs().sum() > 0


def test_rejects_an_unknown_mode() -> None:
    with pytest.raises(ValueError, match="pooling mode"):
        pooled_lookup(torch.tensor([0]), torch.zeros(1, 1), torch.tensor([0, 1]), "max")
