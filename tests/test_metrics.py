"""Metrics against values computed by hand on a tiny hit matrix."""

import math

import pytest
import torch

from mmrec.evaluation.metrics import average_precision, compute_all, hit, ndcg, precision, recall

# user 0: hits at ranks 1 and 3 (1-based), 3 relevant items in total
# user 1: hit at rank 2, 1 relevant item
# user 2: no hit in the top 4, 2 relevant items
HITS = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
NPOS = torch.tensor([3, 1, 2])
KS = [1, 2, 4]


def test_recall():
    expected = [[1 / 3, 1 / 3, 2 / 3], [0, 1, 1], [0, 0, 0]]
    assert torch.allclose(recall(HITS, NPOS, KS), torch.tensor(expected))


def test_precision():
    expected = [[1, 1 / 2, 2 / 4], [0, 1 / 2, 1 / 4], [0, 0, 0]]
    assert torch.allclose(precision(HITS, NPOS, KS), torch.tensor(expected))


def test_hit():
    assert torch.equal(hit(HITS, NPOS, KS), torch.tensor([[1.0, 1, 1], [0, 1, 1], [0, 0, 0]]))


def test_ndcg():
    d = [1 / math.log2(r + 1) for r in range(1, 5)]  # discounts of ranks 1..4
    u0 = [d[0] / d[0], d[0] / (d[0] + d[1]), (d[0] + d[2]) / (d[0] + d[1] + d[2])]
    u1 = [0.0, d[1] / d[0], d[1] / d[0]]
    expected = torch.tensor([u0, u1, [0.0, 0.0, 0.0]])
    assert torch.allclose(ndcg(HITS, NPOS, KS), expected, atol=1e-6)


def test_map():
    # user 0: precision at hit ranks: 1/1, 2/3 ; denominators min(3, k)
    u0 = [1 / 1, 1 / 2, (1 + 2 / 3) / 3]
    u1 = [0.0, (1 / 2) / 1, (1 / 2) / 1]
    expected = torch.tensor([u0, u1, [0.0, 0.0, 0.0]])
    assert torch.allclose(average_precision(HITS, NPOS, KS), expected, atol=1e-6)


def test_perfect_ranking_scores_one():
    hits = torch.tensor([[1, 1, 0, 0]], dtype=torch.bool)
    out = compute_all(hits, torch.tensor([2]), [2])
    for name in ("recall", "ndcg", "map", "hit"):
        assert out[name].item() == pytest.approx(1.0), name


def test_compute_all_checks_width():
    with pytest.raises(ValueError, match="max\\(ks\\)"):
        compute_all(HITS, NPOS, [10])
