"""Time-ordered views for sequential models: leave-last-out on ml100k and the demo, the demo's drift."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hydra.utils import instantiate

from mmrec.data.demo import DemoSource
from mmrec.data.itemtable import ImageOptions
from mmrec.data.movielens import MovieLens100kSource
from mmrec.data.prepared import read_manifest
from mmrec.data.splits import TEST, TRAIN, VALID

from conftest import compose_cfg, shared_path


def assert_leave_last_out(inter: pd.DataFrame) -> None:
    """Every user with >= 3 interactions has one validation and one test interaction; the test
    one is at the user's latest time, validation no later than test and no earlier than training."""
    user, time, split = (inter[c].to_numpy() for c in ("user", "timestamp", "split"))
    num_users = int(user.max()) + 1
    count = np.bincount(user, minlength=num_users)
    n_valid = np.bincount(user[split == VALID], minlength=num_users)
    n_test = np.bincount(user[split == TEST], minlength=num_users)
    many = count >= 3
    assert (n_valid[many] == 1).all() and (n_test[many] == 1).all()
    assert (n_valid[~many] == 0).all() and (n_test[~many] <= 1).all()
    latest = np.full(num_users, -np.inf)
    np.maximum.at(latest, user, time)
    last_train = np.full(num_users, -np.inf)
    np.maximum.at(last_train, user[split == TRAIN], time[split == TRAIN])
    test_time = np.full(num_users, np.inf)
    test_time[user[split == TEST]] = time[split == TEST]
    assert (time[split == TEST] == latest[user[split == TEST]]).all()
    held = split != TRAIN
    assert (time[held] >= last_train[user[held]]).all()
    assert (time[split == VALID] <= test_time[user[split == VALID]]).all()


def by_time(inter: pd.DataFrame) -> pd.DataFrame:
    return inter.sort_values(["user", "timestamp"], kind="stable").reset_index(drop=True)


# -- ml100k ---------------------------------------------------------------------------------

def test_ml100k_leave_last_out_uses_the_real_timestamps(tmp_path):
    path = shared_path("ml100k-mm")
    src = MovieLens100kSource(str(path), progress=False, images=ImageOptions(enabled=False),
                              split="leave_last_out", split_seed=0)
    records = src.prepare(tmp_path)
    inter = pd.read_parquet(tmp_path / "work" / "interactions.parquet")
    assert len(inter) == 100000 and inter["user"].nunique() == 943  # every user has >= 20 ratings
    assert_leave_last_out(inter)
    assert (inter["split"] == VALID).sum() == (inter["split"] == TEST).sum() == 943
    rule = read_manifest(tmp_path)["split"]
    assert rule["rule"] == "leave_last_out" and "timestamps" in rule["detail"] and rule["split_seed"] == 0
    assert read_manifest(tmp_path)["source"]["split"] == "leave_last_out"
    assert [r["stage"] for r in records] == ["items", "images", "tables"]

    # ties at a user's latest second are broken by the seed: another seed, another test movie for some users
    again = MovieLens100kSource(str(path), progress=False, images=ImageOptions(enabled=False),
                                split="leave_last_out", split_seed=1)
    again.prepare(tmp_path)  # a new seed is a new items stage
    other = pd.read_parquet(tmp_path / "work" / "interactions.parquet")
    assert_leave_last_out(other)
    assert (other["split"].to_numpy() != inter["split"].to_numpy()).any()


def test_ml100k_split_options_are_checked_and_named():
    with pytest.raises(ValueError, match=r"split must be one of \('given', 'leave_last_out'\), got 'bogus'"):
        MovieLens100kSource("/nowhere", split="bogus")
    with pytest.raises(ValueError, match="leave_last_out cannot be combined with cold_items"):
        MovieLens100kSource("/nowhere", split="leave_last_out", cold_items=0.1)
    given, seq = MovieLens100kSource("/nowhere"), MovieLens100kSource("/nowhere", split="leave_last_out")
    # the given split describes itself as before the option existed (prepared folders stay valid)
    assert "split" not in given.describe() and "split" not in given.stages("/r")[0].params
    assert seq.describe()["split"] == "leave_last_out" and seq.describe()["split_seed"] == 0
    assert seq.stages("/r")[0].params["split"] == "leave_last_out"  # a change re-runs the items stage


def test_seq_configs_compose(tmp_path):
    cfg = compose_cfg(["dataset=ml100k_seq", f"paths.data_dir={tmp_path}"])
    assert cfg.dataset.root == f"{tmp_path}/ml100k_seq"
    src = instantiate(cfg.dataset.source)
    assert (src.split, src.split_seed, src.cold_items) == ("leave_last_out", 0, 0.0)
    cfg = compose_cfg(["dataset=demo_seq", f"paths.data_dir={tmp_path}"])
    assert cfg.dataset.root == f"{tmp_path}/demo_seq-s0"
    src = instantiate(cfg.dataset.source)
    assert src.split == "leave_last_out" and src.cold_item_share > 0


# -- demo -----------------------------------------------------------------------------------

def test_demo_leave_last_out_split_and_cold_items():
    src = DemoSource(split="leave_last_out", cold_item_share=0.1)
    inter, items, users, _, _ = src.generate()
    assert_leave_last_out(inter)
    assert inter["user"].max() + 1 == len(users)
    train_items = set(inter.loc[inter["split"] == TRAIN, "item"])
    cold = set(inter["item"]) - train_items
    assert len(cold) >= 40  # most of the 80 cold items reach a user's last two steps
    assert len(inter[inter["item"].isin(cold)]) > 100  # enough cold evaluation interactions to measure
    with pytest.raises(ValueError, match=r"split must be one of \('random', 'leave_last_out'\)"):
        DemoSource(split="bogus")


def style_agreement(user: np.ndarray, style: np.ndarray) -> tuple[float, float]:
    """Rows sorted by user, then time: how often an item's style is the previous item's, and the
    mean share of the user's earlier items with that style (a random item of the history)."""
    same_user = user[1:] == user[:-1]
    prev_agrees = (style[1:] == style[:-1])[same_user].mean()
    onehot = np.eye(int(style.max()) + 1)[style]  # [N, S]
    before = np.cumsum(onehot, 0) - onehot  # [N, S] per-style counts over all earlier rows
    start = np.searchsorted(user, user)  # first row of each row's user
    before = before - before[start]  # only this user's earlier rows
    position = np.arange(len(user)) - start
    later = position > 0
    history_agrees = (before[np.arange(len(user)), style][later] / position[later]).mean()
    return float(prev_agrees), float(history_agrees)


def test_demo_order_is_meaningful():
    """The next item's style agrees with the previous item's far more often than with a random
    item of the history before it: interests drift, so recent items predict the next one."""
    inter, _, _, _, item_style = DemoSource().generate()
    inter = by_time(inter)
    user, time = inter["user"].to_numpy(), inter["timestamp"].to_numpy()
    style = item_style[inter["item"].to_numpy()]
    assert (np.diff(time)[user[1:] == user[:-1]] > 0).all()  # strictly increasing within a user
    prev_agrees, history_agrees = style_agreement(user, style)
    assert prev_agrees > history_agrees + 0.15, (prev_agrees, history_agrees)  # about 0.75 against 0.55

    # control: the same items in a random order within each user show no such margin
    rng = np.random.default_rng(0)
    prev_agrees, history_agrees = style_agreement(user, style[np.lexsort((rng.random(len(user)), user))])
    assert abs(prev_agrees - history_agrees) < 0.03, (prev_agrees, history_agrees)


def test_demo_time_order_is_deterministic_and_keeps_the_random_split():
    def generate(seed: int, split: str) -> pd.DataFrame:
        inter, _, users, _, _ = DemoSource(num_users=80, num_items=60, num_styles=4, seed=seed,
                                           split=split).generate()
        return inter.assign(raw_user=users["raw_id"].to_numpy()[inter["user"].to_numpy()])

    a, b, c = generate(5, "leave_last_out"), generate(5, "leave_last_out"), generate(6, "leave_last_out")
    assert a.equals(b) and not a.equals(c)
    rand = generate(5, "random")
    assert (by_time(rand).groupby("user")["timestamp"].diff().dropna() > 0).all()
    # one time order for both splits (leave_last_out only drops cold items' early interactions)
    both = rand.merge(a, on=["raw_user", "item"], suffixes=("_random", "_seq"))
    assert len(both) == len(a) and (both["timestamp_random"] == both["timestamp_seq"]).all()


def test_demo_prepare_records_the_split(tmp_path):
    src = DemoSource(num_users=60, num_items=50, num_styles=4, feature_dim=8, split="leave_last_out")
    src.prepare(tmp_path)
    manifest = read_manifest(tmp_path)
    assert manifest["split"]["rule"] == "leave_last_out" and manifest["source"]["split"] == "leave_last_out"
    assert DemoSource().describe()["split"] == "random"
