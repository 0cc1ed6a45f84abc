"""MMR and DPP re-ranking against hand-worked small cases and a brute-force greedy DPP."""

import itertools

import pytest
import torch

from mmrec.serving.rerank import cap_per_group, dpp, mmr

# Items 0 and 1 are the same product (similarity 1), item 2 is unlike both.
REL = torch.tensor([1.0, 0.9, 0.1])
SIM = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])


def test_mmr_by_hand():
    assert mmr(REL, SIM, 3, 0.0).tolist() == [0, 1, 2]  # no diversity: the ranking
    # lambda = 0.5, relevance scaled to [1, 0.889, 0]: after item 0, item 1 gains
    # 0.5 * 0.889 - 0.5 * 1 = -0.056 and item 2 gains 0.5 * 0 - 0.5 * 0 = 0
    assert mmr(REL, SIM, 3, 0.5).tolist() == [0, 2, 1]
    # lambda = 0.95: 0.95 * 0.889 - 0.05 = 0.794 > 0: relevance still wins
    assert mmr(REL, SIM, 3, 0.05).tolist() == [0, 1, 2]
    assert mmr(REL, SIM, 2, 0.5).tolist() == [0, 2]


def test_dpp_by_hand():
    assert dpp(REL, SIM, 3, 0.0).tolist() == [0, 1, 2]
    # after item 0, item 1 adds no volume (identical): item 2 next, item 1 filled in last
    assert dpp(REL, SIM, 3, 0.5).tolist() == [0, 2, 1]
    assert dpp(REL, SIM, 2, 0.5).tolist() == [0, 2]


def _brute_force_greedy(kernel: torch.Tensor, k: int) -> list[int]:
    chosen: list[int] = []
    for _ in range(k):
        best, best_det = None, -1.0
        for i in range(kernel.shape[0]):
            if i in chosen:
                continue
            idx = chosen + [i]
            det = float(torch.linalg.det(kernel[idx][:, idx]))
            if det > best_det + 1e-12:
                best, best_det = i, det
        chosen.append(best)
    return chosen


@pytest.mark.parametrize("seed", range(5))
def test_dpp_equals_brute_force_greedy_log_det(seed):
    g = torch.Generator().manual_seed(seed)
    n, k, diversity = 8, 5, 0.4
    vectors = torch.nn.functional.normalize(torch.randn(n, 6, generator=g, dtype=torch.float64), dim=1)
    sim = vectors @ vectors.T
    rel = torch.rand(n, generator=g, dtype=torch.float64)
    theta = 1 - diversity
    alpha = theta / (2 * (1 - theta))
    unit = (rel - rel.min()) / (rel.max() - rel.min())
    q = torch.exp(alpha * unit)
    kernel = q.unsqueeze(1) * sim * q.unsqueeze(0)
    assert dpp(rel, sim, k, diversity).tolist() == _brute_force_greedy(kernel, k)


def test_more_diversity_means_less_similar_lists():
    g = torch.Generator().manual_seed(0)
    vectors = torch.nn.functional.normalize(torch.randn(200, 16, generator=g), dim=1)
    sim = vectors @ vectors.T
    rel = vectors @ vectors[0] + 0.01 * torch.rand(200, generator=g)  # relevance favours look-alikes

    def mean_pair_sim(order):
        s = sim[order][:, order]
        return float((s.sum() - s.diagonal().sum()) / (len(order) * (len(order) - 1)))

    for rerank in (mmr, dpp):
        sims = [mean_pair_sim(rerank(rel, sim, 10, d)) for d in (0.0, 0.3, 0.7)]
        assert sims[0] > sims[1] > sims[2], (rerank.__name__, sims)


def test_bad_arguments_and_category_cap():
    with pytest.raises(ValueError, match="diversity"):
        mmr(REL, SIM, 2, 1.5)
    with pytest.raises(ValueError, match="similarity"):
        dpp(REL, SIM[:2], 2, 0.5)
    order = torch.tensor([0, 1, 2, 3, 4])
    groups = ["a", "a", "a", "b", None]
    assert cap_per_group(order, groups, 2, 4).tolist() == [0, 1, 3, 4]
    assert cap_per_group(order, groups, 1, 5).tolist() == [0, 3, 4]  # fewer than k when the rule says so
    assert list(itertools.islice(cap_per_group(order, groups, 5, 2).tolist(), 2)) == [0, 1]


def test_configured_rerankers_are_built_once_and_rank_as_the_functions():
    """conf/rerank builds a plain object at load: a Hydra ``_partial_`` re-checks Hydra's target
    policy (a SHA-256 of it) on every request, which cost the service a share of its CPU."""
    import functools
    from importlib.resources import files

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    g = torch.Generator().manual_seed(3)
    vectors = torch.nn.functional.normalize(torch.randn(40, 8, generator=g), dim=1)
    rel, sim = torch.rand(40, generator=g), vectors @ vectors.T
    for name, function in (("mmr", mmr), ("dpp", dpp)):
        reranker = instantiate(OmegaConf.load(files("mmrec") / "conf" / "rerank" / f"{name}.yaml"))
        assert not isinstance(reranker, functools.partial), name
        for d in (0.0, 0.4):
            assert torch.equal(reranker(rel, sim, 10, d), function(rel, sim, 10, d)), (name, d)
