import pytest
import torch

from mmrec.core.interactions import InteractionMatrix
from mmrec.sampling import (DynamicNegativeSampler, InBatchSampler, MixingHardNegativeSampler,
                            PopularitySampler, UniformSampler)


@pytest.fixture
def dense_positives():
    torch.manual_seed(0)
    # Users with many positives, so that collisions are frequent and must be resampled.
    users, items = torch.nonzero(torch.rand(20, 12) < 0.7, as_tuple=True)
    return InteractionMatrix(users, items, 20, 12)


@pytest.mark.parametrize("sampler", [UniformSampler(num_negatives=4),
                                     DynamicNegativeSampler(num_negatives=3, num_candidates=6),
                                     PopularitySampler(num_negatives=3), InBatchSampler(num_negatives=2),
                                     MixingHardNegativeSampler(num_negatives=2, num_candidates=5)])
def test_negatives_are_never_training_positives(sampler, dense_positives):
    users, pos = dense_positives.pairs()
    users, pos = users.repeat(20), pos.repeat(20)
    score_fn = lambda u, items: torch.randn(items.shape)  # noqa: E731
    if sampler.synthesizes:
        _, neg = sampler.synthesize(users, pos, dense_positives, torch.randn(len(users), 3), torch.randn(12, 3))
    else:
        neg = sampler.sample(users, pos, dense_positives, score_fn)
    assert neg.shape == (len(users), sampler.num_negatives)
    assert not dense_positives.contains(users.unsqueeze(1).expand_as(neg), neg).any()
    assert neg.min() >= 0 and neg.max() < 12


def test_dns_keeps_the_hardest_candidates(dense_positives):
    # Score = item id: the hardest negatives are the largest non-positive ids.
    sampler = DynamicNegativeSampler(num_negatives=1, num_candidates=64)
    users, pos = dense_positives.pairs()
    neg = sampler.sample(users, pos, dense_positives, lambda u, items: items.float())
    for u, n in zip(users.tolist(), neg[:, 0].tolist()):
        negatives = [i for i in range(12) if not dense_positives.contains(torch.tensor(u), torch.tensor(i))]
        assert n == max(negatives)  # 64 candidates over <= 12 items: the max is drawn


def test_user_with_every_item_fails_clearly():
    m = InteractionMatrix([0, 0, 0], [0, 1, 2], 1, 3)
    with pytest.raises(ValueError, match="every item"):
        UniformSampler().sample(torch.tensor([0]), torch.tensor([0]), m)


def test_dns_needs_scores():
    with pytest.raises(ValueError):
        DynamicNegativeSampler(num_negatives=4, num_candidates=2)


def test_uniform_sampler_is_uniform_over_negatives():
    m = InteractionMatrix([0, 0, 0], [1, 4, 5], 1, 8)  # negatives of user 0: 0, 2, 3, 6, 7
    torch.manual_seed(0)
    neg = UniformSampler(num_negatives=1).sample(torch.zeros(20000, dtype=torch.long), None, m)
    freq = torch.bincount(neg[:, 0], minlength=8).float() / 20000
    assert freq[[1, 4, 5]].sum() == 0
    assert torch.allclose(freq[[0, 2, 3, 6, 7]], torch.full((5,), 0.2), atol=0.015)


def test_popularity_sampler_prefers_popular_items():
    # Items 0..9; user 0 interacted with item 9 only; item 0 is very popular among others.
    users = torch.tensor([0] + [1] * 1 + list(range(2, 40)))
    items = torch.tensor([9, 8] + [0] * 38)
    m = InteractionMatrix(users, items, 40, 10)
    torch.manual_seed(0)
    neg = PopularitySampler(num_negatives=1, alpha=1.0).sample(torch.zeros(5000, dtype=torch.long), None, m)
    freq = torch.bincount(neg[:, 0], minlength=10).float() / 5000
    assert freq[9] == 0  # never the user's positive
    # weights (deg + 1): item 0 -> 39, item 8 -> 2, others -> 1 (item 9 excluded, replaced uniformly)
    assert freq[0] > 0.6 and freq[0] > 10 * freq[3]


def test_in_batch_negatives_are_other_rows_positives():
    m = InteractionMatrix([0, 1, 2, 3], [0, 1, 2, 3], 4, 50)
    users, pos = torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 2, 3])
    neg = InBatchSampler(num_negatives=2).sample(users, pos, m)
    assert neg.tolist() == [[1, 2], [2, 3], [3, 0], [0, 1]]


def test_mixing_sampler_blends_positive_into_hardest_candidates():
    torch.manual_seed(0)
    m = InteractionMatrix([0, 1], [0, 1], 2, 30)
    item_emb = torch.randn(30, 4, requires_grad=True)
    user_rows = torch.randn(2, 4)
    sampler = MixingHardNegativeSampler(num_negatives=2, num_candidates=8)
    users, pos = torch.tensor([0, 1]), torch.tensor([0, 1])
    rows, ids = sampler.synthesize(users, pos, m, user_rows, item_emb)
    assert rows.shape == (2, 2, 4) and ids.shape == (2, 2)
    assert not m.contains(users.unsqueeze(1).expand_as(ids), ids).any()
    # Each synthetic row lies on the segment between the positive and its candidate.
    for b in range(2):
        for k in range(2):
            e_p, e_n, r = item_emb[pos[b]].detach(), item_emb[ids[b, k]].detach(), rows[b, k].detach()
            a = ((r - e_n) @ (e_p - e_n)) / ((e_p - e_n) @ (e_p - e_n))
            assert 0 <= a <= 1 and torch.allclose(a * e_p + (1 - a) * e_n, r, atol=1e-5)
    rows.sum().backward()  # gradients reach the item embeddings through the mixing
    assert item_emb.grad[pos].abs().sum() > 0


def test_negatives_never_leave_the_catalogue():
    # items 4..7 have no training interaction (cold): no sampler may return them
    users = torch.tensor([0, 0, 1, 1, 2, 3])
    items = torch.tensor([0, 1, 1, 2, 3, 0])
    train = InteractionMatrix(users, items, 4, 8, catalogue=torch.unique(items))
    assert train.num_negatives(torch.tensor([0, 2])).tolist() == [2, 3]
    batch_u = torch.tensor([0, 1, 2, 3] * 50)
    for sampler in (UniformSampler(3), PopularitySampler(3), InBatchSampler(3)):
        neg = sampler.sample(batch_u, items[torch.tensor([0, 2, 4, 5] * 50)], train)
        assert neg.max() <= 3, type(sampler).__name__
        assert not train.contains(batch_u.unsqueeze(1).expand_as(neg), neg).any()
    # uniform over the user's catalogue negatives: user 0 -> {2, 3}
    neg = UniformSampler(1).sample(torch.zeros(4000, dtype=torch.long), torch.zeros(4000, dtype=torch.long), train)
    counts = torch.bincount(neg.flatten(), minlength=8)
    assert counts[[0, 1, 4, 5, 6, 7]].sum() == 0 and abs(counts[2] - counts[3]) < 300
    with pytest.raises(ValueError, match="catalogue"):
        InteractionMatrix(users, items, 4, 8, catalogue=torch.tensor([0, 1, 2]))
