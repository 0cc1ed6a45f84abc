"""Beyond-accuracy metrics against hand-computed values, sanity checks on popularity and random
recommenders, and the evaluator's list collection (same hits, empty slots never shown)."""

import math

import pytest
import torch

from mmrec.core.interactions import InteractionMatrix
from mmrec.core.items import ItemSets
from mmrec.evaluation import beyond
from mmrec.evaluation.evaluator import Evaluator

# Two lists over 5 items; user 1's third slot is empty (an item it could not be shown).
TOP = torch.tensor([[0, 1, 2], [0, 3, -1]])
KS = [1, 3]
DEGREE = torch.tensor([4, 2, 1, 0, 3])  # item 3 is cold; 10 training interactions, 4 users
NUM_USERS = 4


def test_coverage_gini_entropy_by_hand():
    assert beyond.item_coverage(TOP, KS, 5).tolist() == pytest.approx([1 / 5, 4 / 5])
    # @1: counts [2,0,0,0,0] -> ascending [0,0,0,0,2], weights 2j-n-1 = [-4,-2,0,2,4]: 8 / (5 * 2)
    # @3: counts [2,1,1,1,0] -> [0,1,1,1,2]: (-2 + 0 + 2 + 8) / (5 * 5)
    assert beyond.gini_index(TOP, KS, 5).tolist() == pytest.approx([0.8, 0.32])
    h3 = -(0.4 * math.log(0.4) + 3 * 0.2 * math.log(0.2))
    assert beyond.shannon_entropy(TOP, KS, 5).tolist() == pytest.approx([0.0, h3 / math.log(5)])
    cold = DEGREE == 0
    assert beyond.item_coverage(TOP, KS, 5, cold).tolist() == pytest.approx([0.0, 1.0])


def test_popularity_novelty_long_tail_by_hand():
    # per-list means over the shown slots, then over users
    assert beyond.average_popularity(TOP, KS, DEGREE).tolist() == pytest.approx([4.0, (7 / 3 + 2) / 2])
    # short head: 0 (4), 4 (3), 1 (2) cover 9 >= 80% of 10; the tail is {2, 3}
    head = beyond.short_head(DEGREE)
    assert head.tolist() == [True, True, False, False, True]
    assert beyond.long_tail_share(TOP, KS, ~head).tolist() == pytest.approx([0.0, (1 / 3 + 1 / 2) / 2])
    # self-information -log2(|U_i| / 4): 0, 1, 2, 2 (cold: as if one user), 0.415
    assert beyond.novelty(TOP, KS, DEGREE, NUM_USERS).tolist() == pytest.approx([0.0, 1.0])
    # @3: one cold slot among five shown
    assert beyond.cold_exposure(TOP, KS, DEGREE == 0).tolist() == pytest.approx([0.0, 0.2])


def test_intra_list_diversity_by_hand():
    vectors = torch.tensor([[1.0, 0.0], [0.0, 3.0], [2.0, 2.0], [-1.0, 0.0], [0.0, 0.0]])
    # user 0: cosines (0,1)=0, (0,2)=(1,2)=1/sqrt2 -> distances 1, 1-1/sqrt2, 1-1/sqrt2
    # user 1: items 0 and 3, opposite -> distance 2; at k=1 no list has a pair: 0
    u0 = (1 + 2 * (1 - 2 ** -0.5)) / 3
    out = beyond.intra_list_diversity(TOP, KS, vectors)
    assert out.tolist() == pytest.approx([0.0, (u0 + 2.0) / 2])
    # against the definition: mean pairwise distance over random lists
    g = torch.Generator().manual_seed(0)
    vectors = torch.randn(30, 5, generator=g)
    top = torch.stack([torch.randperm(30, generator=g)[:8] for _ in range(6)])
    top[0, 5:] = -1
    unit = torch.nn.functional.normalize(vectors, dim=1)
    expected = []
    for k in (3, 8):
        per_user = []
        for row in top[:, :k]:
            row = row[row >= 0]
            d = 1 - unit[row] @ unit[row].T
            per_user.append(float((d.sum() - d.diagonal().sum()) / (len(row) * (len(row) - 1))))
        expected.append(sum(per_user) / len(per_user))
    assert beyond.intra_list_diversity(top, [3, 8], vectors).tolist() == pytest.approx(expected, abs=1e-6)


def test_a_popularity_recommender_concentrates_and_a_random_one_covers():
    num_items, k, users = 200, 10, 3000
    same = torch.arange(k).repeat(users, 1)  # everybody gets the same k items
    assert beyond.item_coverage(same, [k], num_items).item() == pytest.approx(k / num_items)
    assert beyond.gini_index(same, [k], num_items).item() == pytest.approx(1 - k / num_items)
    assert beyond.gini_index(same, [k], num_items).item() > 0.9
    g = torch.Generator().manual_seed(0)
    random = torch.stack([torch.randperm(num_items, generator=g)[:k] for _ in range(users)])
    assert beyond.item_coverage(random, [k], num_items).item() > 0.99
    assert beyond.gini_index(random, [k], num_items).item() < 0.1
    assert beyond.shannon_entropy(random, [k], num_items).item() > 0.98


def _splits(U=40, I=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    keys = torch.randperm(U * I, generator=g)[:600]
    users, items = keys // I, keys % I
    train_mask = items % 10 != 0  # items 0, 10, ... are cold: only in valid / test
    parts = {"train": train_mask & (torch.arange(600) < 400)}
    parts["valid"] = ~parts["train"] & (torch.arange(600) % 2 == 0)
    parts["test"] = ~parts["train"] & ~parts["valid"]
    splits = {name: InteractionMatrix(users[m], items[m], U, I) for name, m in parts.items()}
    return splits, ItemSets.from_training(splits["train"].pairs()[1], I)


@pytest.mark.parametrize("block", [None, 7])
def test_lists_give_the_rank_count_figures_and_never_show_unrankable_items(block):
    splits, items = _splits()
    assert items.num_cold > 0
    scores = torch.randn(40, 60)
    content = torch.randn(60, 8)
    evaluator = Evaluator(splits, items, ks=[5, 20], block=block, content=content)
    fn = lambda users, out=None: scores[users].clone()  # noqa: E731
    unrankable = items.unrankable(uses_content=False)
    counted = evaluator.evaluate(fn, "test", unrankable)
    listed = evaluator.evaluate(fn, "test", unrankable, lists=True)
    assert {k: v for k, v in listed.items() if k in counted} == pytest.approx(counted)
    assert listed["cold_exposure@20"] == 0.0 and listed["cold/coverage@20"] == 0.0  # ID-only: never shown
    assert "ild_content@20" in listed and 0.0 <= listed["coverage@5"] <= listed["coverage@20"] <= 1.0
    # the lists themselves: no history item, no unrankable item
    run = evaluator.start("test", fn, unrankable, lists=True)
    users = evaluator.users("test")
    run.update(users)
    top = run.top_lists()
    assert not unrankable[top.clamp_min(0)][top >= 0].any()
    for split in ("train", "valid"):
        assert not splits[split].contains(users.unsqueeze(1), top.clamp_min(0))[top >= 0].any()
    # a content model may show cold items, and the figures say so
    shown = evaluator.evaluate(fn, "test", None, lists=True)
    assert shown["cold_exposure@20"] > 0 and shown["cold/coverage@20"] > 0
    # without content vectors, diversity is measured in the model's item space and named so
    plain = Evaluator(splits, items, ks=[5, 20])
    assert "ild_emb@20" in plain.evaluate(fn, "test", lists=True, item_emb=content)


def test_evaluator_rejects_bad_settings():
    splits, items = _splits()
    with pytest.raises(ValueError, match="cut-offs"):
        Evaluator(splits, items, ks=[0])
    with pytest.raises(ValueError, match="lists"):
        Evaluator(splits, items, lists="sometimes")
    with pytest.raises(ValueError, match="train"):
        Evaluator({"valid": splits["valid"]}, items)
