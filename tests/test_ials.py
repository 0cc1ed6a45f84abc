"""iALS through the implicit package: fitted once when the run is built, evaluated like every model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import train_demo
from mmrec.models import IALS


class _Graph:
    def __init__(self, users, items):
        self.edge_index = torch.tensor([users, items])


def test_fit_reproduces_implicit_and_ranks_a_users_own_pattern_first():
    # two groups of users who like disjoint item blocks: each user's block must score highest
    users = [u for u in range(6) for _ in range(3)]
    items = [i + (0 if u < 3 else 3) for u in range(6) for i in range(3)]
    model = IALS(num_users=6, num_items=7, factors=4, regularization=0.01, alpha=10.0, iterations=20, seed=0)
    model.fit(_Graph(users, items))
    user, item = model(None)
    scores = user @ item.T  # [6, 7]
    assert bool((scores[:3, :3].min(1).values > scores[:3, 3:6].max(1).values).all())
    assert bool((scores[3:, 3:6].min(1).values > scores[3:, :3].max(1).values).all())
    assert torch.count_nonzero(item[6]) == 0  # no interaction, no factors: a cold item

    import scipy.sparse as sp
    from implicit.cpu.als import AlternatingLeastSquares

    als = AlternatingLeastSquares(factors=4, regularization=0.01, alpha=10.0, iterations=20, random_state=0,
                                  num_threads=torch.get_num_threads(), calculate_training_loss=False)
    als.fit(sp.csr_matrix((np.ones(len(users), np.float32), (users, items)), shape=(6, 7)), show_progress=False)
    assert np.allclose(user.numpy() @ item.numpy().T, als.user_factors @ als.item_factors.T, atol=1e-5)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="alpha > 0"):
        IALS(num_users=2, num_items=2, alpha=0.0)


def test_ials_trains_evaluates_and_beats_popularity_on_the_demo(tmp_path, data_dir):
    records = {}
    for model in ("ials", "pop"):
        run, _ = train_demo(tmp_path, data_dir, model)
        records[model] = json.loads((run / "metrics.json").read_text())
    assert records["ials"]["metrics"]["val/recall@20"] > records["pop"]["metrics"]["val/recall@20"]
    assert records["ials"]["metrics"]["test/cold/recall@20"] == 0.0  # ID-only: cold items never shown


def test_ials_exports_the_factors_it_was_evaluated_with(tmp_path, data_dir):
    from mmrec.export import export_run
    from mmrec.serving.recommender import Recommender

    run, objects = train_demo(tmp_path, data_dir, "ials")
    rec = Recommender.load(export_run(run, tmp_path / "bundle"))
    # build_module refits with the run's seed: the bundle holds the evaluated factors
    assert torch.allclose(rec.item_vectors.float(), objects["module"].encoder.item, atol=1e-5)
