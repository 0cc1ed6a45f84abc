import math

import pytest
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


def test_info_nce_against_a_hand_computation():
    from mmrec.losses import info_nce

    a = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    b = torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.0, -1.0]])
    tau = 0.5
    an = a / a.norm(dim=1, keepdim=True)
    bn = b / b.norm(dim=1, keepdim=True)
    expected = 0.0
    for n in range(3):  # -log softmax of the matching pair, row by row
        sims = [float(an[n] @ bn[m]) / tau for m in range(3)]
        expected += -(sims[n] - math.log(sum(math.exp(x) for x in sims)))
    assert info_nce(a, b, tau).item() == pytest.approx(expected / 3, rel=1e-6)
    # identical, well-separated views: a lower loss than shuffled ones
    x = torch.eye(3) * 5
    assert info_nce(x, x, 0.2) < info_nce(x, x[[1, 2, 0]], 0.2)


def test_cosine_alignment_is_one_minus_the_mean_cosine_and_stops_the_target_gradient():
    from mmrec.losses import cosine_alignment

    online = torch.tensor([[1.0, 0.0], [1.0, 1.0]], requires_grad=True)
    target = torch.tensor([[0.0, 3.0], [2.0, 2.0]], requires_grad=True)
    loss = cosine_alignment(online, target)
    assert loss.item() == pytest.approx(1 - (0.0 + 1.0) / 2)
    loss.backward()
    assert online.grad is not None and target.grad is None
