"""The Amazon-shaped synthetic source (dataset=synthetic): its counts are its settings."""

from __future__ import annotations

import numpy as np
import pytest

from mmrec.data.prepared import DatasetError
from mmrec.data.synthetic import SyntheticSource, bipartite_with_degrees


def test_the_counts_match_the_settings():
    src = SyntheticSource(num_users=600, num_items=250, num_interactions=9000, kcore=5, seed=3)
    users, items, timestamps, split = src.generate()
    assert len(users) == len(items) == len(timestamps) == len(split) == 9000
    assert np.bincount(users).size == 600 and np.bincount(items).size == 250
    assert np.bincount(users).min() >= 5 and np.bincount(items).min() >= 5  # already a 5-core
    assert len(np.unique(users * 250 + items)) == 9000  # no pair twice
    shares = np.bincount(split, minlength=3) / 9000
    # per user ceil(0.1 n) validation and test: a little over a tenth each at ~15 per user
    assert 0.10 <= shares[1] <= 0.16 and shares[1] == shares[2]
    # heavy-tailed: the most popular 1% of items hold several times their share
    top = np.sort(np.bincount(items))[::-1][:3].sum() / 9000
    assert top > 3 * 3 / 250


def test_the_same_seed_gives_the_same_data_and_another_seed_other_data():
    a = SyntheticSource(num_users=300, num_items=120, num_interactions=3000, seed=0).generate()
    b = SyntheticSource(num_users=300, num_items=120, num_interactions=3000, seed=0).generate()
    c = SyntheticSource(num_users=300, num_items=120, num_interactions=3000, seed=1).generate()
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[1], c[1])


def test_the_bipartite_graph_has_exactly_the_degrees_asked_even_when_dense():
    rng = np.random.default_rng(0)
    user_deg = np.array([9, 9, 8, 1, 3])  # users 0 and 1 take 9 of the 10 items: many repeats to fix
    item_deg = np.array([5, 4, 3, 3, 3, 3, 3, 3, 2, 1])
    users, items = bipartite_with_degrees(user_deg, item_deg, rng)
    assert np.array_equal(np.bincount(users, minlength=5), user_deg)
    assert np.array_equal(np.bincount(items, minlength=10), item_deg)
    assert len(np.unique(users * 10 + items)) == len(users)


def test_too_few_interactions_for_the_core_names_the_key():
    with pytest.raises(DatasetError, match=r"dataset.source.num_interactions=100: a 5-core of 50 users"):
        SyntheticSource(num_users=50, num_items=20, num_interactions=100)


def test_prepared_features_are_the_seeded_chunks(tmp_path):
    from mmrec.data.prepared import load_prepared

    src = SyntheticSource(num_users=200, num_items=90, num_interactions=2000, features={"image": 16, "text": 8},
                          chunk_items=32, seed=5)
    src.prepare(tmp_path / "syn")
    data = load_prepared(tmp_path / "syn")
    assert data.manifest["num_interactions"] == {"train": int((data.interactions["split"] == 0).sum()),
                                                 "valid": int((data.interactions["split"] == 1).sum()),
                                                 "test": int((data.interactions["split"] == 2).sum())}
    assert sum(data.manifest["num_interactions"].values()) == 2000
    assert {k: v["dim"] for k, v in data.manifest["features"].items()} == {"image": 16, "text": 8}
    store = data.feature_store("text")
    vectors, present = store.get_many(np.arange(90))
    assert bool(present.all())
    # items 64..89 are the third chunk of 32, drawn from the stream (seed, modality 1 = text, 64)
    expected = np.random.default_rng([5, 1, 64]).standard_normal((26, 8), dtype=np.float32)
    np.testing.assert_array_equal(vectors[64:].float().numpy(), expected.astype(np.float16).astype(np.float32))


def test_a_model_trains_on_it(make_cfg):
    from mmrec.train import train

    cfg = make_cfg(["dataset=synthetic", "dataset.source.num_users=300", "dataset.source.num_items=120",
                    "dataset.source.num_interactions=3000", "dataset.source.features={image: 24, text: 12}",
                    "model=freedom", "logger=none"], small=False)
    metrics, _ = train(cfg)
    assert 0.0 <= metrics["test/recall@20"] <= 1.0
