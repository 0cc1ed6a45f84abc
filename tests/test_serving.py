"""Export -> bundle -> Recommender on the demo: bundle scores equal the model's, the served list
is the evaluated list, seen and unrankable items never come back, new visitors, bad input."""

from __future__ import annotations

import json
import random
import shutil
import stat
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from mmrec.serving.bundle import BundleError, load_bundle
from mmrec.serving.catalogue import Catalogue
from mmrec.serving.limits import Limits
from mmrec.serving.recommender import RecommendError, Recommender, UnknownIdError, fold_in

MODELS = ["lightgcn", "freedom", "vbpr", "mmgcn", "grcn", "lattice", "pop", "random",
          # the self-supervised and newer models (issue 27)
          "mf", "simgcl", "xsimgcl", "layergcn", "bm3", "mgcn", "lgmrec", "dragon", "itemknn_cbf"]


def _train(root: Path, data_dir: Path, model: str):
    from conftest import train_demo

    return train_demo(root, data_dir, model)


@pytest.fixture(scope="module")
def runs(serving_runs):
    return serving_runs


@pytest.mark.parametrize("model", MODELS)
def test_every_model_exports_and_bundle_scores_equal_the_models(tmp_path, data_dir, model):
    from mmrec.export import export_run

    run, objects = _train(tmp_path, data_dir, model)
    bundle = load_bundle(export_run(run))
    module = objects["module"]
    ckpt = objects["trainer"].checkpoint_callback.best_model_path if module.encoder.trainable else None
    if ckpt:
        module.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"])
    module.eval()
    with torch.no_grad():
        user_emb, item_emb = module.encoder(module.graph, module.features)
        expected = module.encoder.score_all(user_emb, item_emb)  # [U, I]: sums of per-modality dots for late fusion
    served = torch.tensor(np.asarray(bundle.arrays["user_vectors"])) @ torch.tensor(
        np.asarray(bundle.arrays["item_vectors"])).T
    assert torch.allclose(served, expected, atol=1e-5)
    unrankable = module.unrankable_items()
    rankable = np.asarray(bundle.arrays["item_rankable"])
    assert rankable.tolist() == ([True] * len(rankable) if unrankable is None else (~unrankable).tolist())
    card = bundle.card
    assert card["dataset"] and card["metrics"]["test/recall@20"] >= 0 and card["mmrec_version"]
    assert (card["best_epoch"] is not None) == module.encoder.trainable
    # what a known user is shown is what evaluation ranked (training + validation items masked)
    rec = Recommender.load(bundle.root)
    users = torch.arange(0, rec.num_users, 7)
    with torch.no_grad():
        top, _ = module.recommend(users, 10, split="known")
    served = rec.recommend(rec.user_raw[users.numpy()].tolist(), k=10)
    assert [[rec.item_index[r.item] for r in recs] for recs in served] == top.tolist()


def test_served_list_is_the_evaluated_list_and_never_shows_history(runs):
    for model in ("lightgcn", "freedom"):
        run, bundle_dir, objects = runs[model]
        module = objects["module"]
        rec = Recommender.load(bundle_dir)
        users = torch.arange(rec.num_users)
        top, _ = module.recommend(users, 10, split="known")  # the evaluation's ranking, train + valid masked
        served = rec.recommend(rec.user_raw.tolist(), k=10)
        for u in range(rec.num_users):
            ids = [rec.item_index[r.item] for r in served[u]]
            assert ids == top[u].tolist(), (model, u)
            seen = set(rec.history(rec.user_raw[u]))
            assert not seen & {r.item for r in served[u]}
            for diversity in (0.3, 0.9):
                diverse = rec.recommend([rec.user_raw[u]], k=10, diversity=diversity)[0]
                assert not seen & {r.item for r in diverse} and len(diverse) == 10
            if u > 20:
                break


def test_id_only_model_never_recommends_cold_items_content_model_can(runs):
    cold_shown = {}
    for model in ("lightgcn", "freedom"):
        rec = Recommender.load(runs[model][1])
        rankable = rec.rankable.numpy()
        lists = rec.recommend(rec.user_raw.tolist(), k=50)
        shown = {rec.item_index[r.item] for recs in lists for r in recs}
        cold = set(np.flatnonzero(np.asarray(rec.popularity) == 0).tolist())
        cold_shown[model] = bool(shown & cold)
        if model == "lightgcn":
            assert not rankable.all() and all(rankable[i] for i in shown)
    assert cold_shown == {"lightgcn": False, "freedom": True}


def test_faiss_retrieval_matches_exact_on_the_demo_and_reads_the_saved_index(runs, caplog):
    import logging

    bundle_dir = runs["lightgcn"][1]
    exact = Recommender.load(bundle_dir)
    with caplog.at_level(logging.INFO, logger="mmrec.serving.index"):
        approx = Recommender.load(bundle_dir, index="faiss", index_params={"factory": "HNSW32", "ef_search": 256})
    assert "read the bundle's FAISS HNSW32 index" in caplog.text
    users = exact.user_raw.tolist()
    a = [[r.item for r in recs] for recs in exact.recommend(users, k=20)]
    b = [[r.item for r in recs] for recs in approx.recommend(users, k=20)]
    overlap = np.mean([len(set(x) & set(y)) / 20 for x, y in zip(a, b)])
    assert overlap > 0.99
    for recs, user in zip(approx.recommend(users[:50], k=20, diversity=0.5), users[:50]):
        assert not set(approx.history(user)) & {r.item for r in recs}


def test_new_visitor_from_liked_items_and_text(runs):
    rec = Recommender.load(runs["freedom"][1])
    first = rec.recommend_for_items(["i0", "i1"], k=10)
    other = rec.recommend_for_items(["i50", "i60", "i70"], k=10)
    assert [r.item for r in first] != [r.item for r in other]  # the list follows what was liked
    assert not {"i0", "i1"} & {r.item for r in first}  # liked items are not offered again
    assert all(r.because in ("i0", "i1") for r in first)
    # the fold-in rule: the mean of the liked items' vectors
    expected = rec.item_vectors[[0, 1]].mean(0)
    assert torch.allclose(rec.user_vector_for_items([0, 1]), expected, atol=1e-6)
    ridge = fold_in(rec.item_vectors, torch.tensor([0, 1]), "ridge", reg=0.5)
    v = rec.item_vectors[[0, 1]].double()
    assert torch.allclose(ridge.double(), torch.linalg.solve(v.T @ v + 0.5 * torch.eye(v.shape[1], dtype=v.dtype),
                                                             v.sum(0)), atol=1e-4)
    # a text query in the words of an item's text finds that item first
    text = rec.bundle.items["text"][7]
    matches = rec.items_for_text(text, 3)
    assert matches[0][0] == 7
    assert len(rec.recommend_for_text(text, k=5)) == 5
    similar = rec.similar_items("i7", k=5)
    assert "i7" not in {r.item for r in similar} and all(r.because == "i7" for r in similar)


def test_a_query_explains_by_other_items_and_says_when_no_word_is_known(runs):
    """A query's matched items may be recommended; none is shown "because of" itself (they stand
    in for history), and a query none of whose words any item's text has gets a notice."""
    from mmrec.serving.rerank import DPP

    rec = Recommender.load(runs["freedom"][1], rerank=DPP())
    text = rec.bundle.items["text"][7]
    for diversity in (0.0, 0.8):
        answer = rec.answer_visitor(None, text, k=10, diversity=diversity)
        assert set(answer.matched) & {r.item for r in answer.items}  # matched items recommended: the case
        assert all(r.because != r.item for r in answer.items)
        assert answer.notice is None
    odd = rec.answer_visitor(None, "zzqx blorfw", k=5)
    assert odd.notice and "no item's text contains any word of 'zzqx blorfw'" in odd.notice
    assert len(odd.items) == 5  # still an answer: the nearest in text space


def test_id_only_model_answers_cold_only_likes_from_content(runs):
    rec = Recommender.load(runs["lightgcn"][1])
    cold = [rec.item_raw[i] for i in np.flatnonzero(~rec.rankable.numpy())[:2]]
    recs = rec.recommend_for_items(cold, k=5)
    assert recs and all(r.source == "content" for r in recs)


def test_bad_requests_name_the_problem(runs):
    rec = Recommender.load(runs["lightgcn"][1])
    with pytest.raises(UnknownIdError, match="'nobody'") as err:
        rec.recommend(["u0", "nobody"], k=5)
    assert err.value.ids == ["nobody"] and err.value.kind == "user"
    with pytest.raises(UnknownIdError, match="'zz'"):
        rec.recommend_for_items(["i0", "zz"], k=5)
    with pytest.raises(RecommendError, match="empty"):
        rec.recommend_for_items([], k=5)
    for k in (0, -3, 101, 2.5):
        with pytest.raises(RecommendError, match="k"):
            rec.recommend(["u0"], k=k)
    with pytest.raises(RecommendError, match="diversity"):
        rec.recommend(["u0"], k=5, diversity=2)
    with pytest.raises(RecommendError, match="list"):
        rec.recommend("u0", k=5)
    with pytest.raises(RecommendError, match="empty"):
        rec.recommend_for_text("   ", k=5)
    # explicit exclusions and a catalogue limit
    recs = rec.recommend(["u0"], k=10)[0]
    again = rec.recommend(["u0"], k=10, exclude=[recs[0].item])[0]
    assert recs[0].item not in {r.item for r in again}


def test_every_path_checks_the_one_limits(runs):
    """k, the count of liked and excluded ids, the query's length, the title search: each request
    is checked against the recommender's one Limits, and the error names the field."""
    rec = Recommender.load(runs["freedom"][1], limits=Limits(max_k=5, max_items=2, max_query_chars=10,
                                                             search_limit=3))
    three = ["i1", "i2", "i3"]
    cases = [("k", lambda: rec.recommend(["u0"], k=6)), ("k", lambda: rec.recommend_for_items(["i0"], k=6)),
             ("k", lambda: rec.recommend_for_text("ring", k=6)), ("k", lambda: rec.similar_items("i0", k=6)),
             ("diversity", lambda: rec.recommend_for_visitor(["i0"], k=3, diversity=-0.1)),
             ("exclude", lambda: rec.recommend(["u0"], k=3, exclude=three)),
             ("exclude", lambda: rec.recommend_for_text("ring", k=3, exclude=three)),
             ("items", lambda: rec.recommend_for_items(three, k=3)),
             ("items", lambda: rec.recommend_for_visitor(three, "ring", k=3)),
             ("query", lambda: rec.recommend_for_text("x" * 11, k=3)),
             ("query", lambda: rec.answer_visitor(["i0"], "x" * 11, k=3)),
             ("search", lambda: rec.search("x" * 11)), ("limit", lambda: rec.search("a", 4))]
    for field, call in cases:
        with pytest.raises(RecommendError) as err:
            call()
        assert err.value.field == field and field in str(err.value), (field, str(err.value))
    assert len(rec.recommend(["u0"], k=5, exclude=["i1", "i2"])[0]) == 5 and len(rec.search("a", 3)) <= 3
    with pytest.raises(ValueError, match="max_k"):
        Limits(max_k=0)
    with pytest.raises(ValueError, match="max_kk"):
        Limits(max_kk=3)  # a typo in the config's limits fails instead of leaving the default in force


def test_a_visitor_answer_is_one_pass_over_liked_items_and_words(runs):
    rec = Recommender.load(runs["freedom"][1])
    text = rec.bundle.items["text"][7]
    answer = rec.answer_visitor(["i1"], text, k=5)
    assert answer.matched[0] == "i7" and len(answer.matched) == rec.visitors.query_items
    assert [r.item for r in answer.items] == [r.item for r in rec.recommend_for_visitor(["i1"], text, k=5)]
    assert "i1" not in {r.item for r in answer.items}  # liked: left out; matched items may be recommended
    assert rec.answer_visitor(["i1"], "   ", k=5).matched == []  # a blank query is none


def test_catalogue_draws_random_users_among_those_with_a_history():
    users = pd.DataFrame({"raw_id": ["a", "b", "c", "d"]})
    items = pd.DataFrame({"raw_id": ["x", "y"], "title": ["Red Ring", "blue hat"], "image": [None, "y.jpg"]})
    arrays = {"item_popularity": np.array([1, 2]), "item_rankable": np.array([True, False]),
              "history_indptr": np.array([0, 0, 2, 2, 3]), "history_indices": np.array([0, 1, 0])}
    catalogue = Catalogue(SimpleNamespace(users=users, items=items, arrays=arrays))
    assert catalogue.users_with_history.tolist() == [1, 3]  # "a" and "c" have no history
    rng = random.Random(0)
    assert {catalogue.random_user(rng) for _ in range(100)} == {"b", "d"}
    assert catalogue.history("b") == ["x", "y"] and catalogue.history("a") == []
    assert catalogue.search("RING") == [0] and catalogue.search("") == []
    assert catalogue.describe("y")["rankable"] is False and catalogue.describe("y")["popularity"] == 2
    with pytest.raises(UnknownIdError, match="'z'"):
        catalogue.items(["x", "z"])


def _copy(bundle_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(bundle_dir, dst)
    for p in dst.rglob("*"):
        if p.is_file():
            p.chmod(stat.S_IRUSR | stat.S_IWUSR)
    return dst


def test_damaged_bundles_fail_on_load_naming_the_file(runs, tmp_path):
    bundle_dir = runs["lightgcn"][1]
    assert not (Path(bundle_dir) / "item_vectors.npy").stat().st_mode & stat.S_IWUSR  # read-only after export
    cases = {
        "tampered": lambda d: (d / "item_vectors.npy").write_bytes(
            (d / "item_vectors.npy").read_bytes()[:-4] + b"\x00\x00\x80\x7f"),
        "truncated": lambda d: (d / "user_vectors.npy").write_bytes((d / "user_vectors.npy").read_bytes()[:100]),
        "missing file": lambda d: (d / "items.parquet").unlink(),
        "no manifest": lambda d: (d / "manifest.json").unlink(),
        "older format": lambda d: (d / "manifest.json").write_text(
            json.dumps({**json.loads((d / "manifest.json").read_text()), "version": 0})),
    }
    expected = {"tampered": "item_vectors.npy: checksum", "truncated": "user_vectors.npy: 100 bytes",
                "missing file": "items.parquet: missing", "no manifest": "manifest.json: missing",
                "older format": "format version 0"}
    for name, damage in cases.items():
        copy = _copy(bundle_dir, tmp_path / name)
        damage(copy)
        with pytest.raises(BundleError, match=expected[name]) as err:
            Recommender.load(copy)
        assert "mmrec.export" in str(err.value), name
    with pytest.raises(BundleError, match="no such bundle"):
        load_bundle(tmp_path / "nowhere")


def test_export_refuses_to_overwrite_and_needs_a_finished_run(runs, tmp_path):
    from mmrec.export import export_run

    run, bundle_dir, _ = runs["freedom"]
    before = (Path(bundle_dir) / "manifest.json").read_bytes()
    with pytest.raises(BundleError, match="already exists"):
        export_run(run)
    assert (Path(bundle_dir) / "manifest.json").read_bytes() == before  # nothing written into it
    with pytest.raises(BundleError, match="config.yaml: missing"):
        export_run(tmp_path)
    (tmp_path / "config.yaml").write_text((Path(run) / "config.yaml").read_text())  # started, never finished
    with pytest.raises(BundleError, match="metrics.json: missing"):
        export_run(tmp_path)


def test_recommend_cli(runs):
    import subprocess
    import sys

    from conftest import REPO_ROOT

    bundle_dir = runs["lightgcn"][1]

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "mmrec.recommend", f"bundle={bundle_dir}", *args],
                              capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)

    table = cli("user=u3", "k=4")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["rank", "id", "title", "score", "because", "of"] and len(lines) == 2 + 4
    js = cli("items=[i3,i9]", "k=3", "format=json")
    data = json.loads(js.stdout)
    assert [d["rank"] for d in data] == [1, 2, 3] and all(d["because"] in ("i3", "i9") for d in data)
    similar = cli("similar=i3", "k=3")
    assert similar.returncode == 0, similar.stderr
    assert "similarity of the items' content" in similar.stdout and "cannot score" not in similar.stdout
    bad = cli("user=ghost")
    assert bad.returncode == 2 and "unknown user id 'ghost'" in bad.stderr and "Traceback" not in bad.stderr


def test_faiss_maximum_inner_product_search_with_uneven_norms():
    """Users that share a direction and items whose norms grow with popularity (as trained
    embeddings do) defeat inner-product HNSW; the L2 reduction keeps recall high. The returned
    scores are the exact inner products either way."""
    from mmrec.core.interactions import RowItems
    from mmrec.serving.index import ExactIndex, FaissIndex

    g = torch.Generator().manual_seed(0)
    common = torch.nn.functional.normalize(torch.randn(16, generator=g), dim=0)
    items = 3 * torch.rand(4000, 1, generator=g) ** 3 * common + 0.3 * torch.randn(4000, 16, generator=g)
    queries = common + 0.5 * torch.randn(100, 16, generator=g)
    rankable = torch.ones(4000, dtype=torch.bool)
    rankable[:10] = False
    none = RowItems([np.zeros(0, dtype=np.int64)] * 100, 4000)
    truth, _ = ExactIndex(items, rankable).search(queries, 50, none)
    recall = {}
    for mips in ("l2", "ip"):
        found, scores = FaissIndex(items, rankable, "HNSW32", ef_search=128, mips=mips).search(queries, 50, none)
        recall[mips] = np.mean([len(set(a.tolist()) & set(b.tolist())) / 50 for a, b in zip(truth, found)])
        assert not (found < 10).any()  # unrankable items are not indexed
        assert torch.allclose(scores, (queries.unsqueeze(1) * items[found]).sum(-1), atol=1e-4)
    assert recall["l2"] > 0.98 and recall["l2"] > recall["ip"]


def test_faiss_breadth_is_tuned_for_a_recall_target_and_reported(serving_runs, tmp_path):
    """Export chooses the smallest efSearch (16, 32, ...) whose recall@100 of the exact top reaches
    the target on half of the sampled user queries, records the recall measured on the other
    half in the manifest, serving uses that breadth and /info shows it (issue 28.6)."""
    import numpy as np
    from fastapi.testclient import TestClient

    from mmrec.export import export_run
    from mmrec.serving.app import create_app
    from mmrec.serving.index import FaissIndex

    rng = np.random.default_rng(0)
    items = rng.normal(size=(20_000, 16)).astype(np.float32)
    queries = rng.normal(size=(400, 16)).astype(np.float32)
    index = FaissIndex(items, np.ones(len(items), bool), "HNSW16", ef_construction=40)
    tuned = index.tune(queries, target=0.97, k=100)
    assert tuned["recall"] >= 0.95 and tuned["efSearch"] >= 16 and tuned["queries"] == 200
    if tuned["efSearch"] > 16:  # the smallest breadth that reaches the target on the choosing half
        index.set_breadth(tuned["efSearch"] // 2)
        assert index.recall_at(queries[:200], 100) < 0.97

    run = serving_runs["lightgcn"][0]
    bundle = export_run(run, out=tmp_path / "b", index={"factory": "HNSW32", "ef_construction": 200,
                                                        "target_recall": 0.98, "tuning_queries": 100})
    entry = json.loads((bundle / "manifest.json").read_text())["index"]
    assert entry["recall"] >= 0.98 and entry["target_recall"] == 0.98 and "efSearch" in entry
    rec = Recommender.load(bundle, index="faiss", index_params={"factory": "HNSW32"})
    assert rec.index.breadth == entry["efSearch"] and rec.index.recall == entry["recall"]
    with TestClient(create_app(lambda: rec)) as client:
        info = client.get("/info").json()["index_search"]
    assert info == {"factory": "HNSW32", "knob": "efSearch", "value": entry["efSearch"], "recall": entry["recall"],
                    "recall_k": 100}
