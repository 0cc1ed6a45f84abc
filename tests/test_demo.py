"""The demo dataset: deterministic, cold items held out, content carries the styles."""

import numpy as np
import torch

from mmrec.data.demo import DemoSource
from mmrec.data.prepared import load_prepared


def test_generation_is_deterministic():
    a = DemoSource(num_users=50, num_items=40, num_styles=4, seed=3).generate()
    b = DemoSource(num_users=50, num_items=40, num_styles=4, seed=3).generate()
    assert a[0].equals(b[0]) and a[1].equals(b[1])
    assert np.array_equal(np.asarray(a[3][5]), np.asarray(b[3][5]))


def test_cold_items_and_splits():
    inter, items, users, _, _ = DemoSource(num_users=300, num_items=200, cold_item_share=0.2).generate()
    train_items = set(inter.loc[inter.split == 0, "item"])
    held = set(inter.loc[inter.split > 0, "item"]) - train_items
    assert len(held) >= 30  # most of the 40 cold items get valid/test interactions
    valid_cold = set(inter.loc[inter.split == 1, "item"]) - train_items
    test_cold = set(inter.loc[inter.split == 2, "item"]) - train_items
    assert not valid_cold & test_cold  # a cold item is either a validation or a test item
    assert (inter.groupby("user").split.apply(lambda s: (s == 0).sum()) > 0).all()
    counts = inter[inter.item.isin(train_items)].split.value_counts(normalize=True)
    assert 0.7 < counts[0] < 0.9


def test_prepared_features_reveal_styles(tmp_path):
    src = DemoSource(num_users=100, num_items=120, num_styles=6, seed=1)
    style = src.generate()[4]
    src.prepare(tmp_path)
    ds = load_prepared(tmp_path)
    for name in ("image", "text"):
        values, mask = ds.feature_store(name).bulk()
        assert mask.all()
        sim = values @ values.T
        sim.fill_diagonal_(-2)
        nn_style = style[sim.argmax(1).numpy()]
        agreement = (nn_style == style).mean()
        assert agreement > 0.6, (name, agreement)  # chance is ~1/6


def test_prepared_folder_from_other_settings_is_refused(tmp_path):
    import pytest

    from mmrec.data.prepared import DatasetError
    from mmrec.data.dataset import DatasetSpec

    DatasetSpec(str(tmp_path), DemoSource(num_users=60, num_items=40, num_styles=4)).ready()
    again = DatasetSpec(str(tmp_path), DemoSource(num_users=60, num_items=40, num_styles=4))
    again.ready()  # same settings: reused
    other = DatasetSpec(str(tmp_path), DemoSource(num_users=70, num_items=40, num_styles=4))
    with pytest.raises(DatasetError, match="num_users: prepared 60, configured 70"):
        other.ready()
