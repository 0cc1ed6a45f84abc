"""k-core, dedupe and split invariants (no leakage, latest really last, cold items never in training)."""

from __future__ import annotations

import numpy as np
import pytest

from mmrec.data.amazon2023 import dedupe_earliest, image_candidates
from mmrec.data.splits import (TEST, TRAIN, VALID, SplitRule, hold_out_cold_items, kcore, split_global_time,
                               split_leave_last_out, split_random)


def _random_log(n=6000, users=300, items=200, seed=0):
    rng = np.random.default_rng(seed)
    pu, pi = 1 / np.arange(1, users + 1) ** 0.7, 1 / np.arange(1, items + 1) ** 0.7
    u = rng.choice(users, size=n, p=pu / pu.sum())
    i = rng.choice(items, size=n, p=pi / pi.sum())
    ts = rng.integers(0, 10**9, size=n)
    keep = dedupe_earliest(u, i, ts)
    return u[keep], i[keep], ts[keep]


def test_dedupe_keeps_earliest_of_each_pair():
    u = np.array([0, 0, 1, 0, 1])
    i = np.array([5, 5, 5, 6, 5])
    ts = np.array([30, 10, 7, 1, 7])
    keep = dedupe_earliest(u, i, ts)
    assert keep.tolist() == [1, 2, 3]  # (0,5)@10, (1,5)@7 first of the tie, (0,6)


@pytest.mark.parametrize("k", [2, 5, 10])
def test_kcore_fixed_point_and_maximal(k):
    u, i, _ = _random_log()
    keep, rounds = kcore(u, i, k)
    uk, ik = u[keep], i[keep]
    assert 0 < keep.sum() < len(u)
    # every remaining user and item has >= k interactions
    assert np.bincount(uk)[np.unique(uk)].min() >= k
    assert np.bincount(ik)[np.unique(ik)].min() >= k
    # maximal: nothing dropped could have stayed (adding back any dropped row's user+item fails)
    assert len(rounds) >= 1
    again, more = kcore(uk, ik, k)
    assert again.all() and more == []


def test_kcore_iterates_beyond_one_pass():
    # item 2 has 2 interactions, but one of them belongs to user 2 who has only 1 -> cascade
    u = np.array([0, 0, 1, 1, 2, 0, 1])
    i = np.array([0, 1, 0, 1, 2, 2, 2])
    keep, rounds = kcore(u, i, 2)
    # round 1 drops user 2's row; item 2 is then left with users 0 and 1 -> stays (2 interactions)
    assert keep.tolist() == [True, True, True, True, False, True, True]
    keep3, _ = kcore(u, i, 3)
    assert not keep3.any()  # cascades to empty


def test_random_split_per_user_ratios_and_no_overlap():
    u, i, ts = _random_log()
    split = split_random(u, 0.1, 0.1, seed=3)
    assert set(np.unique(split)) <= {TRAIN, VALID, TEST}
    n = np.bincount(u)
    for user in np.flatnonzero(n >= 3)[:50]:
        s = split[u == user]
        assert (s == TRAIN).sum() >= 1
        assert (s == TEST).sum() == int(np.ceil(n[user] * 0.1))
    # each interaction in exactly one split: pairs unique overall
    pairs = u.astype(np.int64) * 1000 + i
    assert len(np.unique(pairs)) == len(pairs)
    # seeded: same seed same split, other seed differs
    assert np.array_equal(split, split_random(u, 0.1, 0.1, seed=3))
    assert not np.array_equal(split, split_random(u, 0.1, 0.1, seed=4))


def test_leave_last_out_takes_the_latest():
    u, i, ts = _random_log()
    split = split_leave_last_out(u, ts, seed=0)
    for user in np.unique(u):
        sel = u == user
        s, t = split[sel], ts[sel]
        if sel.sum() >= 3:
            assert (s == TEST).sum() == 1 and (s == VALID).sum() == 1
            assert t[s == TEST][0] == t.max()
            assert t[s == VALID][0] >= t[s == TRAIN].max()
            assert t[s == VALID][0] <= t[s == TEST][0]
        elif sel.sum() == 2:
            assert sorted(s.tolist()) == [TRAIN, TEST]
        else:
            assert s.tolist() == [TRAIN]


def test_global_time_no_future_in_training():
    u, i, ts = _random_log()
    t1, t2 = np.quantile(ts, [0.8, 0.9]).astype(np.int64)
    split = split_global_time(ts, t1, t2)
    assert ts[split == TRAIN].max() < t1 <= ts[split == VALID].min()
    assert ts[split == VALID].max() < t2 <= ts[split == TEST].min()
    with pytest.raises(ValueError, match="t1"):
        split_global_time(ts, 5, 1)


@pytest.mark.parametrize("rule", ["random", "leave_last_out", "global_time"])
def test_cold_items_never_in_training(rule):
    u, i, ts = _random_log()
    t = np.quantile(ts, [0.8, 0.9]).astype(np.int64)
    split_rule = SplitRule(rule=rule, t1=int(t[0]), t2=int(t[1]), cold_items=0.2, seed=1)
    split, cold = split_rule.apply(u, i, ts, num_items=200)
    assert cold.sum() == 40
    assert not np.isin(i[split == TRAIN], np.flatnonzero(cold)).any()
    assert np.isin(i[split != TRAIN], np.flatnonzero(cold)).any()


def test_hold_out_rejects_bad_share_and_rule():
    with pytest.raises(ValueError, match="cold_items"):
        hold_out_cold_items(np.array([0]), np.array([0], dtype=np.int8), 1.0, 1)
    with pytest.raises(ValueError, match="unknown split rule"):
        SplitRule(rule="by_magic")
    with pytest.raises(ValueError, match="t1 and t2"):
        SplitRule(rule="global_time")


def test_image_candidates_prefer_main_large():
    imgs = [{"thumb": "t1", "large": "l1", "variant": "PT01", "hi_res": None},
            {"thumb": "t0", "large": "l0", "variant": "MAIN", "hi_res": "h0"}]
    assert image_candidates(imgs) == ["l0", "h0", "t0"]
    assert image_candidates(imgs[:1]) == ["l1", "t1"]
    assert image_candidates(None) == [] and image_candidates([]) == []
