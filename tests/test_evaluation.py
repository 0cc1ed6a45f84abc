"""Full-ranking evaluation: masking, oracle and random models, chunking."""

import warnings

import pytest
import torch

from mmrec.core.interactions import InteractionMatrix
from mmrec.core.items import ItemSets
from mmrec.evaluation.evaluator import Evaluator
from mmrec.core.ranking import top_items

U, I = 60, 100


@pytest.fixture
def splits():
    g = torch.Generator().manual_seed(0)
    keys = torch.randperm(U * I, generator=g)[:900]  # distinct (user, item) pairs
    users, items = keys // I, keys % I
    parts = [slice(0, 600), slice(600, 750), slice(750, 900)]
    return [InteractionMatrix(users[p], items[p], U, I) for p in parts]


def _evaluate(score_fn, splits, ks=(10, 20, 50), chunk_size=1024, history=None):
    """The test split's metrics through the :class:`Evaluator` (``history``: its exclusions)."""
    train, valid, test = splits
    evaluator = Evaluator({"train": train, "valid": valid, "test": test},
                          ItemSets.from_training(train.pairs()[1], I), ks=ks,
                          history=None if history is None else {"test": history})
    return evaluator.evaluate(lambda users, out=None: score_fn(users), "test", batch_size=chunk_size)


def _rank_top(scores, users, exclude, k):
    """Top-k ids of ready-made ``scores`` of ``users`` (masked in place)."""
    return top_items(lambda _: scores, users, exclude, k)[0]


def _dense(m: InteractionMatrix) -> torch.Tensor:
    out = torch.zeros(U, I)
    u, i = m.pairs()
    out[u, i] = 1.0
    return out


def test_oracle_scores_one(splits):
    train, valid, test = splits
    truth = _dense(test)
    # The oracle also scores training items highest: masking must remove them.
    scores = truth + 2.0 * _dense(train)
    out = _evaluate(lambda users: scores[users].clone(), splits, ks=[10, 20])
    assert out["recall@20"] == pytest.approx(1.0)
    assert out["ndcg@20"] == pytest.approx(1.0)
    assert out["hit@10"] == pytest.approx(1.0)


def test_unmasked_history_would_hurt(splits):
    train, valid, test = splits
    scores = _dense(test) + 2.0 * _dense(train)
    unmasked = _evaluate(lambda users: scores[users].clone(), splits, ks=[5], history=())
    assert unmasked["recall@5"] < 1.0


def test_random_model_near_expected_value(splits):
    train, valid, test = splits
    torch.manual_seed(0)
    out = _evaluate(lambda users: torch.rand(len(users), I), splits, ks=[20])
    # Each test item lands in the top 20 of the ~(I - |history|) candidates at random.
    hist = train.counts() + valid.counts()
    users = test.users_with_items()
    expected = (20.0 / (I - hist[users]).float()).mean().item()
    assert out["recall@20"] == pytest.approx(expected, abs=0.05)


def test_masked_items_never_ranked(splits):
    train, valid, test = splits
    users = test.users_with_items()
    scores = torch.randn(len(users), I) + 10 * _dense(train)[users]
    _rank_top(scores, users, [train], 20)
    top = torch.topk(scores, 20, dim=1).indices  # scores were masked in place
    assert not train.contains(users.unsqueeze(1).expand_as(top), top).any()


def test_chunk_size_does_not_change_results(splits):
    train, valid, test = splits
    scores = torch.randn(U, I)
    a = _evaluate(lambda u: scores[u].clone(), splits, chunk_size=7)
    b = _evaluate(lambda u: scores[u].clone(), splits, chunk_size=1000)
    assert a == pytest.approx(b)


def test_group_hits_count_only_the_groups_items(splits):
    from mmrec.evaluation.ranking import hits_of

    train, valid, test = splits
    users = test.users_with_items()
    scores = torch.randn(len(users), I)
    top = _rank_top(scores, users, [train], 20)
    cold = torch.zeros(I, dtype=torch.bool)
    cold[::3] = True
    out = hits_of(top, users, test, {"": None, "cold/": cold, "warm/": ~cold})
    all_hits, all_pos = out[""]
    assert torch.equal(out["cold/"][0] | out["warm/"][0], all_hits)
    assert torch.equal(out["cold/"][1] + out["warm/"][1], all_pos)
    row, col = test.gather(users)
    assert out["cold/"][1].sum() == cold[col].sum()
    assert not (out["cold/"][0] & ~cold[top]).any()


def test_top_items_blocks_unknown_and_exclusions(splits):

    train, valid, test = splits
    users = test.users_with_items()
    scores = torch.randn(len(users), I)
    unknown = torch.zeros(I, dtype=torch.bool)
    unknown[:5] = True
    ref = scores.clone()
    ref[:, unknown] = -torch.inf
    ref_top = _rank_top(ref, users, [train, valid], 20)  # masks ``ref`` in place
    for block in (None, 1, 7, 1000):
        top, top_scores = top_items(lambda us: scores[torch.searchsorted(users, us)].clone(),
                                    users, [train, valid], 20, unknown, block)
        assert torch.equal(top, ref_top)
        assert torch.equal(top_scores, ref.gather(1, ref_top))
        assert not unknown[top].any()
        assert not train.contains(users.unsqueeze(1), top).any()
        assert not valid.contains(users.unsqueeze(1), top).any()


def test_top_items_ranks_nan_scores_last_and_warns():
    from mmrec.core.ranking import top_items

    scores = torch.randn(4, 30, generator=torch.Generator().manual_seed(2))
    scores[2, 3] = scores[2, 7] = torch.nan
    history = InteractionMatrix([2, 2], [5, 9], 4, 30)
    with pytest.warns(RuntimeWarning, match="2 NaN scores among 4 ranked users"):
        top, values = top_items(lambda us: scores[us].clone(), torch.arange(4), [history], 30)
    # torch.topk alone would put items 3 and 7 first
    assert set(top[2, :26].tolist()) == set(range(30)) - {3, 5, 7, 9}
    assert torch.isfinite(values[2, :26]).all() and torch.isneginf(values[2, 26:]).all()
    ref = top_items(lambda us: scores[us].clone(), torch.tensor([0, 1, 3]), [history], 30)[0]
    assert torch.equal(top[[0, 1, 3]], ref)  # rows without NaN untouched


def _stable_hits(scores: torch.Tensor, users: torch.Tensor, exclude, truth, k: int,
                 unknown: torch.Tensor | None = None) -> torch.Tensor:
    """Reference hit matrix: mask, NaN -> -inf, stable descending sort (ties by item id)."""
    s = scores.clone()
    if unknown is not None:
        s[:, unknown] = -torch.inf
    for matrix in exclude:
        row, col = matrix.gather(users)
        s[row, col] = -torch.inf
    s = s.masked_fill(s.isnan(), -torch.inf)
    order = torch.sort(s, dim=1, descending=True, stable=True).indices[:, :k]  # [B, k]
    row, col = truth.gather(users)
    relevant = torch.zeros_like(s, dtype=torch.bool)
    relevant[row, col] = True
    return relevant.gather(1, order)


def test_ranked_hits_equal_top_k_hits(splits):
    from mmrec.core.ranking import top_items
    from mmrec.evaluation.ranking import hits_of, ranked_hits

    train, valid, test = splits
    users = test.users_with_items()
    scores = torch.randn(len(users), I, generator=torch.Generator().manual_seed(3))
    unknown = torch.zeros(I, dtype=torch.bool)
    unknown[[4, 50]] = True
    cold = torch.zeros(I, dtype=torch.bool)
    cold[::4] = True
    groups = {"": None, "cold/": cold, "warm/": ~cold}
    fn = lambda us: scores[torch.searchsorted(users, us)].clone()  # noqa: E731
    top, _ = top_items(fn, users, [train, valid], 20, unknown)
    expected = hits_of(top, users, test, groups)
    assert expected[""][0].any()  # the comparison is not between empty matrices
    for block in (None, 1, 7):
        out = ranked_hits(fn, users, [train, valid], test, 20, unknown, block, groups)
        for g in groups:
            assert torch.equal(out[g][0], expected[g][0]), (block, g)
            assert torch.equal(out[g][1], expected[g][1]), (block, g)


@pytest.mark.parametrize("case", ["ties", "constant", "tiny_catalogue", "infinite"])
def test_ranked_hits_break_ties_by_item_id(case):
    from mmrec.evaluation.ranking import ranked_hits

    g = torch.Generator().manual_seed(4)
    n_users, n_items, k = 12, 30, 10
    if case == "tiny_catalogue":
        n_items, k = 6, 10  # fewer items than the cut-off: masked items fill the tail
    keys = torch.randperm(n_users * n_items, generator=g)[: n_users * n_items // 3]
    users_, items_ = keys // n_items, keys % n_items
    half = len(keys) // 2
    history = InteractionMatrix(users_[:half], items_[:half], n_users, n_items)
    truth = InteractionMatrix(users_[half:], items_[half:], n_users, n_items)
    users = truth.users_with_items()
    scores = torch.randint(0, 3, (len(users), n_items), generator=g).float()  # many ties
    if case == "constant":
        scores = torch.zeros(len(users), n_items)
    if case == "infinite":
        scores[scores == 2] = torch.inf
        scores[scores == 0] = -torch.inf
    expected = _stable_hits(scores, users, [history], truth, k)
    out = ranked_hits(lambda us: scores[torch.searchsorted(users, us)].clone(), users, [history], truth, k,
                      block=5)[""][0]
    assert torch.equal(out[:, :n_items], expected)
    assert not out[:, n_items:].any()  # a list longer than the catalogue has no hit past its end
    if case == "constant":  # equal scores are not all hits: ranked by item id
        assert out.sum() < truth.nnz


@pytest.mark.parametrize("case", ["ties", "constant", "infinite", "nan"])
def test_top_items_order_ties_by_item_id_as_the_rank_count_does(case):
    """The lists shown (top_items) and the hits counted (ranked_hits) agree also where scores are
    equal (popularity, content kNN): the stable descending sort's order, lower ids first."""
    g = torch.Generator().manual_seed(6)
    n_users, n_items, k = 40, 50, 10
    scores = torch.randint(0, 4, (n_users, n_items), generator=g).float()  # many ties, at the cut too
    if case == "constant":
        scores = torch.zeros(n_users, n_items)
    if case == "infinite":
        scores[scores == 3] = torch.inf
        scores[scores == 0] = -torch.inf
    if case == "nan":
        scores[scores == 1] = torch.nan
    keys = torch.randperm(n_users * n_items, generator=g)[: n_users * n_items // 5]
    history = InteractionMatrix(keys // n_items, keys % n_items, n_users, n_items)
    users = torch.arange(n_users)
    masked = scores.clone()
    row, col = history.gather(users)
    masked[row, col] = -torch.inf
    masked = masked.masked_fill(masked.isnan(), -torch.inf)
    expected = torch.sort(masked, dim=1, descending=True, stable=True).indices[:, :k]  # [B, k]
    for block in (None, 7):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the NaN warning, tested elsewhere
            ids, values = top_items(lambda us: scores[us].clone(), users, [history], k, block=block)
        assert torch.equal(ids, expected), block
        assert torch.equal(values, masked.gather(1, expected)), block


def test_ranked_hits_rank_nan_last_and_warn():
    from mmrec.evaluation.ranking import ranked_hits

    scores = torch.randn(4, 30, generator=torch.Generator().manual_seed(5))
    truth = InteractionMatrix([0, 1, 2, 2, 3], [3, 8, 3, 12, 0], 4, 30)
    scores[2, 3] = scores[2, 7] = torch.nan  # a relevant item and another item of user 2
    scores[1, :] = torch.nan  # a diverged row
    history = InteractionMatrix([2], [5], 4, 30)
    with pytest.warns(RuntimeWarning, match="2 of 5 relevant items have a NaN score"):
        hits, num_pos = ranked_hits(lambda us: scores[us].clone(), torch.arange(4), [history], truth, 30)[""]
    assert torch.equal(hits, _stable_hits(scores, torch.arange(4), [history], truth, 30))
    assert not hits[1, :8].any() and hits[1, 8]  # all NaN: ranked by item id
    assert hits[2].sum() == 2 and hits[2, 27]  # NaN item 3: after the 27 finite items, first of the -inf ties
    assert num_pos.tolist() == [1, 1, 2, 1]


def test_metric_accumulator_flushes_give_the_mean_over_users():
    from mmrec.evaluation.metrics import compute_all
    from mmrec.evaluation.ranking import MetricAccumulator

    g = torch.Generator().manual_seed(6)
    hits = torch.rand(50, 20, generator=g) < 0.2
    num_pos = torch.randint(0, 4, (50,), generator=g)  # some users have no relevant item
    num_pos = torch.maximum(num_pos, hits.sum(1) * (num_pos > 0))
    keep = num_pos > 0
    expected = {f"{name}@{k}": float(v[:, j].mean()) for name, v in
                compute_all(hits[keep], num_pos[keep], [5, 20]).items() for j, k in enumerate([5, 20])}
    for flush_users in (1, 7, 1000):
        acc = MetricAccumulator([5, 20], flush_users=flush_users)
        for start in range(0, 50, 9):
            acc.update(hits[start:start + 9], num_pos[start:start + 9])
        assert acc.num_users == int(keep.sum())
        assert acc.compute() == pytest.approx(expected)
    assert MetricAccumulator([5]).compute() == {}
