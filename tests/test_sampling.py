import pytest
import torch

from mmrec.data.interactions import InteractionMatrix
from mmrec.sampling import DynamicNegativeSampler, UniformSampler


@pytest.fixture
def dense_positives():
    torch.manual_seed(0)
    # Users with many positives, so that collisions are frequent and must be resampled.
    users, items = torch.nonzero(torch.rand(20, 12) < 0.7, as_tuple=True)
    return InteractionMatrix(users, items, 20, 12)


@pytest.mark.parametrize("sampler", [UniformSampler(num_negatives=4),
                                     DynamicNegativeSampler(num_negatives=3, num_candidates=6)])
def test_negatives_are_never_training_positives(sampler, dense_positives):
    users, pos = dense_positives.pairs()
    users, pos = users.repeat(20), pos.repeat(20)
    score_fn = lambda u, items: torch.randn(items.shape)  # noqa: E731
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
