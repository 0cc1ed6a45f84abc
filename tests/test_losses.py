import math

import torch

from mmrec.losses import bpr_loss, l2_batch


def test_bpr_matches_naive_reference():
    torch.manual_seed(0)
    pos, neg = torch.randn(7), torch.randn(7, 3)
    naive = 0.0
    for b in range(7):
        for k in range(3):
            naive += -math.log(1 / (1 + math.exp(-(pos[b] - neg[b, k]).item())))
    assert torch.isclose(bpr_loss(pos, neg), torch.tensor(naive / 21), atol=1e-6)


def test_bpr_is_stable_for_large_margins():
    assert torch.isfinite(bpr_loss(torch.tensor([-100.0]), torch.tensor([[100.0]])))


def test_l2_batch_scaling():
    u, p, n = torch.ones(4, 2), 2 * torch.ones(4, 2), torch.ones(4, 3, 2)
    # (4*2*1 + 4*2*4 + 4*3*2*1/3) / 2 / 4
    assert l2_batch(u, p, n).item() == (8 + 32 + 8) / 2 / 4
