"""The learned ranking stage: candidate sources, features, the LightGBM ranker trained without
leakage, and the served list equal to the evaluated one."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mmrec.export import export_run
from mmrec.run import assemble, saved_config
from mmrec.serving.bundle import BundleError, load_bundle
from mmrec.serving.recommender import Recommender
from mmrec.serving.two_stage import SOURCES, StageData, TwoStage, content_projection, cooccurrence, load_two_stage
from mmrec.two_stage import RankerSettings, _two_stage_scorer, csr_with_times, evaluate_bundle, train_view, view

QUICK = RankerSettings(grid={"num_leaves": [7], "learning_rate": [0.1], "min_child_samples": [5]}, max_rounds=30, folds=3,
                       early_stopping=10)


def test_cooccurrence_by_hand():
    # users: {0, 1}, {0, 1, 2}, {1, 2}; n = [2, 3, 2]; n01 = 2, n02 = 1, n12 = 2
    indptr, indices = np.array([0, 2, 5, 7]), np.array([0, 1, 0, 1, 2, 1, 2])
    c = cooccurrence(indptr, indices, 3, neighbours=5).toarray()
    expected = np.array([[0, 2 / np.sqrt(6), 1 / 2], [2 / np.sqrt(6), 0, 2 / np.sqrt(6)], [1 / 2, 2 / np.sqrt(6), 0]])
    assert np.allclose(c, expected, atol=1e-6)
    top1 = cooccurrence(indptr, indices, 3, neighbours=1).toarray()  # each row keeps its strongest (ties: lower id)
    assert (top1 > 0).sum(1).tolist() == [1, 1, 1]
    assert top1[1, 0] > 0 and top1[1, 2] == 0  # item 1: n10 = n12, the lower id wins


def _stage(num_items=6, dim=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    histories = [np.array([0, 1, 2]), np.array([1, 3]), np.array([4])]
    indptr = np.cumsum([0] + [len(h) for h in histories])
    indices = np.concatenate(histories)
    data = StageData.build(torch.randn(num_items, dim, generator=g), torch.randn(num_items, 3, generator=g),
                           {"image": 2, "text": 1}, indptr, indices, np.arange(len(indices), dtype=float) * 86400,
                           torch.ones(num_items, dtype=torch.bool))
    return data, histories


def test_candidates_exclude_history_and_rank_each_source():
    data, histories = _stage()
    stage = TwoStage(data, {"model": 2, "content": 1, "cooccurrence": 2, "popular": 1}, recent=2)
    queries = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    c = stage.candidates(queries, histories)
    for b, h in enumerate(histories):  # nothing known is proposed
        assert not set(c.pairs[c.pairs[:, 0] == b, 1].tolist()) & set(h.tolist())
    # the model source: each row's 2 best unseen items by u . i, rank 0 and 1
    names = stage.feature_names
    rank = c.features[:, names.index("model_rank")]
    for b, h in enumerate(histories):
        scores = (queries[b] @ data.item_vectors.T).clone()
        scores[torch.as_tensor(h)] = -torch.inf
        best = torch.sort(scores, descending=True, stable=True).indices[:2].tolist()
        rows = (c.pairs[:, 0] == b).numpy()
        got = {int(i): r for i, r in zip(c.pairs[rows, 1].tolist(), rank[rows]) if r < 2}
        assert got == {best[0]: 0, best[1]: 1}
    assert c.proposed.shape == (len(c.pairs), len(SOURCES))
    assert bool(c.proposed.any(1).all())  # every candidate was proposed by some source
    # popularity: known interactions per item; the age of item 4 (first seen last) is 0 days
    assert data.popularity.tolist() == [1, 2, 1, 1, 1, 0]
    assert np.isnan(data.first_seen[5]) and data.now == 5 * 86400
    cold = c.features[:, names.index("item_cold")]
    assert set(c.pairs[cold == 1, 1].tolist()) <= {5}


@pytest.fixture(scope="module")
def ranked_bundle(serving_runs, tmp_path_factory):
    run = serving_runs["freedom"][0]
    out = tmp_path_factory.mktemp("ranker") / "bundle"
    return run, export_run(run, out, ranker=QUICK)


def test_train_view_holds_no_validation_interaction(serving_runs):
    run_dir = serving_runs["freedom"][0]
    run = assemble(saved_config(run_dir / "config.yaml"))
    data, _ = train_view(run, QUICK)
    inter = run.data.dataset.interactions
    train = inter[inter["split"] == 0]
    valid = set(zip(inter.loc[inter["split"] == 1, "user"], inter.loc[inter["split"] == 1, "item"]))
    seen = {(u, int(i)) for u in range(run.data.dataset.num_users) for i in data.history(u)}
    assert seen == set(zip(train["user"], train["item"]))
    assert not seen & valid
    # popularity, co-occurrence and the recent popularity come from those training histories alone
    assert data.popularity.tolist() == np.bincount(train["item"], minlength=run.data.dataset.num_items).tolist()
    indptr, indices, _ = csr_with_times(inter, (0,), run.data.dataset.num_users)
    assert (data.cooc != cooccurrence(indptr, indices, data.num_items, QUICK.neighbours)).nnz == 0
    # and the candidate model learned from the training pairs only
    train_pairs = run.data.splits["train"]
    users, items = torch.tensor([u for u, _ in valid]), torch.tensor([i for _, i in valid])
    assert not bool(train_pairs.contains(users, items).any())


def _trained(run_dir):
    """The run rebuilt with its selected checkpoint's weights, as export rebuilds it."""
    from mmrec.export import _checkpoint, _load_weights

    run = assemble(saved_config(run_dir / "config.yaml"))
    _load_weights(run.model, _checkpoint(run_dir, json.loads((run_dir / "metrics.json").read_text()), True))
    run.model.eval()
    return run


def test_bundle_features_equal_offline_view(ranked_bundle):
    """The bundle's view (serving) computes the same features as the run's known view."""
    run_dir, bundle_dir = ranked_bundle
    bundle = load_bundle(bundle_dir)
    run = _trained(run_dir)
    offline, user_vectors = view(run, (0, 1), "known", QUICK.neighbours)
    served = StageData.from_bundle(bundle)
    users = np.arange(0, 40)
    a = TwoStage(offline, QUICK.sizes, QUICK.recent).candidates(user_vectors[users], [offline.history(u) for u in users])
    b = TwoStage(served, QUICK.sizes, QUICK.recent).candidates(
        torch.from_numpy(np.array(bundle.arrays["user_vectors"][users])), [served.history(u) for u in users])
    assert torch.equal(a.pairs, b.pairs)
    assert np.allclose(a.features, b.features, equal_nan=True, atol=1e-5)


def test_served_list_is_the_evaluated_list(ranked_bundle):
    run_dir, bundle_dir = ranked_bundle
    bundle = load_bundle(bundle_dir)
    entry = bundle.manifest["ranker"]
    assert entry["kind"] == "lightgbm" and entry["features"] and entry["rounds"] >= 1
    assert (bundle_dir / "ranker.txt").is_file()
    run = assemble(saved_config(run_dir / "config.yaml"))
    stage = load_two_stage(bundle)
    user_vectors = torch.from_numpy(np.array(bundle.arrays["user_vectors"]))
    users = run.evaluator.users("test")[:30]
    top, values = run.evaluator.top_items(_two_stage_scorer(stage, user_vectors), users, 20, "test",
                                          run.unrankable_items())
    rec = Recommender(bundle)
    assert rec.ranked_by == "ranker"
    raw = [str(rec.user_raw[u]) for u in users.tolist()]
    lists = rec.recommend(raw, k=20)
    for row, shown in enumerate(lists):
        expected = [str(rec.item_raw[i]) for i, v in zip(top[row].tolist(), values[row].tolist()) if v > -np.inf]
        assert [r.item for r in shown] == expected
        assert all(r.source == "ranker" and r.proposed_by and set(r.proposed_by) <= set(SOURCES) for r in shown)
    # off: the model's own ranking, no sources
    plain = Recommender(bundle, ranker="off").recommend(raw[:1], k=5)[0]
    assert all(r.source == "model" and r.proposed_by is None for r in plain)


def test_evaluate_bundle_reports_both_and_source_recall(ranked_bundle):
    run_dir, bundle_dir = ranked_bundle
    run = assemble(saved_config(run_dir / "config.yaml"))
    out = evaluate_bundle(run, load_bundle(bundle_dir))
    record = json.loads((run_dir / "metrics.json").read_text())
    # the model alone through the bundle is the run's own test figure
    assert out["model"]["recall@20"] == pytest.approx(record["metrics"]["test/recall@20"], abs=1e-5)
    assert 0 <= out["two_stage"]["recall@20"] <= 1 and "cold_exposure@20" in out["two_stage"]
    recall = out["source_recall"]
    assert recall["union"] >= max(v for k, v in recall.items() if k != "union")


def test_ranker_on_without_one_and_damaged_bundle(serving_runs, ranked_bundle, tmp_path):
    with pytest.raises(ValueError, match="ranker=lightgbm"):
        Recommender.load(serving_runs["freedom"][1], ranker="on")
    _, bundle_dir = ranked_bundle
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(bundle_dir, copy)
    (copy / "ranker.txt").chmod(0o644)
    (copy / "ranker.txt").unlink()
    with pytest.raises(BundleError, match="ranker.txt"):
        load_bundle(copy)


def test_api_says_which_sources_proposed_each_item(ranked_bundle):
    from fastapi.testclient import TestClient

    from mmrec.serving.app import create_app

    _, bundle_dir = ranked_bundle
    with TestClient(create_app(lambda: Recommender.load(bundle_dir))) as client:
        info = client.get("/info").json()
        assert info["ranker"]["kind"] == "lightgbm" and set(info["ranker"]["sizes"]) == set(SOURCES)
        items = client.get("/users/u3/recommendations", params={"k": 5}).json()["items"]
        assert len(items) == 5 and all(r["source"] == "ranker" and r["proposed_by"] for r in items)
        # MMR still runs after the ranker
        diverse = client.get("/users/u3/recommendations", params={"k": 5, "diversity": 0.9}).json()["items"]
        assert [r["item"] for r in diverse] != [r["item"] for r in items]
        visitor = client.post("/recommendations", json={"items": [items[0]["item"]], "k": 5}).json()
        assert all(r["proposed_by"] for r in visitor["items"])


def test_content_projection_keeps_features_exact():
    g = torch.Generator().manual_seed(3)
    basis = torch.randn(2, 6, generator=g)
    content = torch.randn(50, 2, generator=g) @ basis  # rank 2: two directions hold everything
    p = content_projection(content, 2)
    assert p.shape == (6, 2) and np.allclose(p, content_projection(content, 2))  # deterministic
    # the projection spans the content: projecting and back loses nothing
    back = (content @ torch.from_numpy(p)) @ torch.from_numpy(p).T
    assert torch.allclose(back, content, atol=1e-4)
    # searched in 2 of 3 dimensions, the content features of every candidate stay exact
    data, histories = _stage()
    projected = StageData.build(data.item_vectors, data.content, data.modalities, data.indptr, data.indices,
                                np.arange(len(data.indices), dtype=float) * 86400, data.rankable, search_dim=2)
    assert projected.projection is not None and data.projection is None
    sizes = {"model": 6, "content": 2}
    queries = torch.randn(3, 4, generator=g)
    a = TwoStage(data, sizes).candidates(queries, histories)
    b = TwoStage(projected, sizes).candidates(queries, histories)
    assert torch.equal(a.pairs, b.pairs)  # the model proposes every unseen item in both
    names = TwoStage(data, sizes).feature_names
    for name in ("content_score", "content_image", "content_text"):
        j = names.index(name)
        assert np.allclose(a.features[:, j], b.features[:, j], atol=1e-6), name
