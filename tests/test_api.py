"""The HTTP API through FastAPI's TestClient: every endpoint, and bad input that must get a
4xx naming the problem (never a 500), concurrent requests."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient

from mmrec.serving.app import create_app
from mmrec.serving.limits import Limits
from mmrec.serving.recommender import Recommender

LIMITS = Limits(max_k=50, max_body_bytes=4096, max_query_chars=100, max_items=20)


@pytest.fixture(scope="module")
def client(serving_runs):
    bundle = serving_runs["freedom"][1]
    app = create_app(lambda: Recommender.load(bundle, limits=LIMITS), LIMITS)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def test_health_info_and_docs(client):
    assert client.get("/health").json()["status"] == "ok"
    info = client.get("/info").json()
    assert info["model"] == "FREEDOM" and info["dataset"] == "demo" and "test/recall@20" in info["metrics"]
    assert info["text_queries"] is True
    assert info["epochs_trained"] == 2 and 0 <= info["best_epoch"] < 2  # which checkpoint is served
    spec = client.get("/openapi.json").json()
    assert "/users/{user}/recommendations" in spec["paths"] and "/recommendations" in spec["paths"]
    assert client.get("/docs").status_code == 200


def test_health_is_503_until_the_bundle_is_loaded(serving_runs):
    app = create_app(lambda: Recommender.load(serving_runs["freedom"][1]))
    plain = TestClient(app)  # not entered: the lifespan has not run
    response = plain.get("/health")
    assert response.status_code == 503 and response.json()["error"] == "loading"
    assert plain.get("/users/u1/recommendations").status_code == 503


def test_known_user_recommendations_and_history(client):
    data = client.get("/users/u3/recommendations", params={"k": 7}).json()
    assert data["user"] == "u3" and len(data["items"]) == 7 and [r["rank"] for r in data["items"]] == list(range(1, 8))
    history = {h["item"] for h in client.get("/users/u3/history", params={"limit": 1000}).json()}
    assert history and not history & {r["item"] for r in data["items"]}
    assert all(r["image"] == f"/items/{r['item']}/image" for r in data["items"])
    diverse = client.get("/users/u3/recommendations", params={"k": 7, "diversity": 0.9}).json()["items"]
    assert [r["item"] for r in diverse] != [r["item"] for r in data["items"]]
    first = data["items"][0]["item"]
    excluded = client.get("/users/u3/recommendations", params={"k": 7, "exclude": f"{first},i0"}).json()["items"]
    assert first not in {r["item"] for r in excluded}
    assert client.get("/users/random").json()["user"].startswith("u")


def test_new_visitor_items_query_and_both(client):
    liked = client.post("/recommendations", json={"items": ["i1", "i2"], "k": 5}).json()
    assert len(liked["items"]) == 5 and not {"i1", "i2"} & {r["item"] for r in liked["items"]}
    text = client.get("/items/i9").json()["text"]  # a query in the words of an item's text finds it first
    query = client.post("/recommendations", json={"query": text, "k": 5}).json()
    assert query["matched"][0] == "i9" and len(query["items"]) == 5
    both = client.post("/recommendations", json={"items": ["i1"], "query": text, "k": 5}).json()
    assert len(both["items"]) == 5
    assert query["notice"] is None and both["notice"] is None
    odd = client.post("/recommendations", json={"query": "zzqx blorfw", "k": 5}).json()  # no word any item has
    assert "no item's text contains any word" in odd["notice"] and len(odd["items"]) == 5


def test_items_search_image_and_similar(client):
    item = client.get("/items/i5").json()
    assert item["item"] == "i5" and item["title"] and item["image"] == "/items/i5/image"
    image = client.get("/items/i5/image")
    assert image.status_code == 200 and image.headers["content-type"].startswith("image/")
    word = item["title"].split()[0]
    found = client.get("/items", params={"search": word.lower()}).json()
    assert found and all(word.lower() in f["title"].lower() for f in found)
    pops = [f["popularity"] for f in found]
    assert pops == sorted(pops, reverse=True)
    similar = client.get("/items/i5/similar", params={"k": 4}).json()["items"]
    assert len(similar) == 4 and "i5" not in {s["item"] for s in similar}
    assert client.get("/", headers={"accept": "text/html"}).text.startswith("<!doctype html>")
    assert client.get("/static/app.js").status_code == 200


@pytest.mark.parametrize("method,path,kwargs,status,says", [
    ("get", "/users/nobody/recommendations", {}, 404, "unknown user id 'nobody'"),
    ("get", "/items/nothing", {}, 404, "unknown item id 'nothing'"),
    ("get", "/items/nothing/image", {}, 404, "unknown item id"),
    ("get", "/items/nothing/similar", {}, 404, "unknown item id"),
    ("get", "/users/nobody/history", {}, 404, "unknown user id"),
    ("get", "/users/u3/recommendations", {"params": {"k": 0}}, 422, "k"),
    ("get", "/users/u3/recommendations", {"params": {"k": 51}}, 422, "k"),
    ("get", "/users/u3/recommendations", {"params": {"k": "ten"}}, 422, "k"),
    ("get", "/users/u3/recommendations", {"params": {"diversity": 3}}, 422, "diversity"),
    ("get", "/users/u3/recommendations", {"params": {"exclude": "zzz"}}, 422, "unknown item id 'zzz'"),
    ("post", "/recommendations", {"json": {}}, 422, "liked"),
    ("post", "/recommendations", {"json": {"items": []}}, 422, "liked"),
    ("post", "/recommendations", {"json": {"items": ["i1", "bad1", "bad2"]}}, 422, "'bad1', 'bad2'"),
    ("post", "/recommendations", {"json": {"items": ["i1"], "k": -1}}, 422, "k"),
    ("post", "/recommendations", {"json": {"items": ["i1"], "k": 51}}, 422, "k"),
    ("post", "/recommendations", {"json": {"query": "x" * 101}}, 422, "query"),
    ("post", "/recommendations", {"json": {"items": "i1"}}, 422, "items"),
    ("post", "/recommendations", {"content": b'{"items": [', "headers": {"content-type": "application/json"}},
     422, "not valid JSON"),
    ("post", "/recommendations", {"content": b"", "headers": {"content-type": "application/json"}}, 422, ""),
    ("post", "/recommendations", {"content": json.dumps({"items": ["i1"] * 2000}).encode(),
                                  "headers": {"content-type": "application/json"}}, 413, "4096 bytes"),
    ("get", "/items", {"params": {"search": "y" * 101}}, 422, "search"),
    ("get", "/items", {"params": {"search": "a", "limit": 51}}, 422, "limit"),
    ("get", "/users/u3/recommendations", {"params": {"exclude": ",".join(f"i{n}" for n in range(21))}}, 422,
     "exclude: at most 20 item ids"),
    ("post", "/recommendations", {"json": {"items": [f"i{n}" for n in range(21)]}}, 422, "items: at most 20 item ids"),
    ("post", "/recommendations", {"json": {"query": "ring", "exclude": [f"i{n}" for n in range(21)]}}, 422,
     "exclude: at most 20 item ids"),
])
def test_bad_requests_get_a_4xx_that_names_the_problem(client, method, path, kwargs, status, says):
    response = getattr(client, method)(path, **kwargs)
    assert response.status_code == status, response.text
    body = response.json()
    assert says in body["error"], body


def test_a_get_with_more_exclusions_than_max_items_gets_a_422_naming_the_field(client):
    ids = [f"i{n}" for n in range(LIMITS.max_items + 1)]
    response = client.get("/users/u3/recommendations", params={"exclude": ",".join(ids)})
    assert response.status_code == 422 and response.json()["field"] == "exclude"
    assert f"at most {LIMITS.max_items}" in response.json()["error"]
    # as many ids as the limit, some repeated as separate parameters, are fine
    allowed = client.get("/users/u3/recommendations", params={"exclude": [",".join(ids[:10]), ",".join(ids[10:20])]})
    assert allowed.status_code == 200 and not set(ids[:20]) & {r["item"] for r in allowed.json()["items"]}


def test_a_visitor_query_is_encoded_once_per_request(client, monkeypatch):
    visitors = client.app.state.recommender.visitors
    encoder = visitors.text_encoder
    calls = []

    def counting(texts):
        calls.append(list(texts))
        return encoder(texts)

    monkeypatch.setattr(visitors, "text_encoder", counting)
    text = client.get("/items/i9").json()["text"]
    for body in ({"items": ["i1"], "query": text, "k": 5}, {"query": text, "k": 5}):
        calls.clear()
        answer = client.post("/recommendations", json=body).json()
        assert answer["matched"][0] == "i9" and len(answer["items"]) == 5
        assert calls == [[text]], body  # one encoding serves both the list and "matched"


def test_random_users_have_a_history_and_are_one_draw(client, monkeypatch):
    catalogue = client.app.state.recommender.catalogue
    counts = catalogue.history_indptr[1:] - catalogue.history_indptr[:-1]
    assert catalogue.users_with_history.tolist() == np.flatnonzero(counts > 0).tolist()  # built at load
    # a request that scanned the histories (or every user) would now fail: it only draws from the array
    monkeypatch.setattr(catalogue, "history_indptr", None)
    monkeypatch.setattr(catalogue, "users_with_history", np.array([3, 7]))
    drawn = {client.get("/users/random").json()["user"] for _ in range(40)}
    assert drawn == {catalogue.user_raw[3], catalogue.user_raw[7]}


def test_one_limits_node_bounds_the_api_and_the_cli(serving_runs, monkeypatch):
    """``recommender.limits`` is the only place a bound is set: changing its max_k changes the
    service's and ``mmrec.recommend``'s, and an app built with other limits than its
    recommender's refuses to start."""
    import torch
    from omegaconf import OmegaConf

    from conftest import compose_cfg
    from mmrec import serve
    from mmrec.recommend import recommend
    from mmrec.serving.recommender import RecommendError

    bundle = serving_runs["freedom"][1]
    served = compose_cfg([f"bundle={bundle}", "recommender.limits.max_k=7"], "serve")
    assert "limits" not in served and "max_k" not in served.recommender  # no second copy to drift
    monkeypatch.setenv(serve.ENV, json.dumps(OmegaConf.to_container(served, resolve=True)))
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # a worker's setting, not this test process's
    with TestClient(serve.app_from_env(), raise_server_exceptions=False) as c:
        assert c.get("/info").json()["limits"]["max_k"] == 7
        assert len(c.get("/users/u3/recommendations", params={"k": 7}).json()["items"]) == 7
        for path, params in (("/users/u3/recommendations", {"k": 8}), ("/items/i3/similar", {"k": 8})):
            response = c.get(path, params=params)
            assert response.status_code == 422 and response.json()["field"] == "k", path
        response = c.post("/recommendations", json={"items": ["i1"], "k": 8})
        assert response.status_code == 422 and "limit of 7" in response.json()["error"]
    cli = compose_cfg([f"bundle={bundle}", "user=u3", "recommender.limits.max_k=7"], "recommend")
    assert len(recommend(OmegaConf.merge(cli, {"k": 7}))) == 7
    with pytest.raises(RecommendError, match="limit of 7"):
        recommend(OmegaConf.merge(cli, {"k": 8}))
    mismatched = create_app(lambda: Recommender.load(bundle), Limits(max_k=7))
    with pytest.raises(ValueError, match="differ from the recommender's"):
        with TestClient(mismatched):
            pass


def test_unknown_ids_are_listed(client):
    body = client.post("/recommendations", json={"items": ["i1", "bad1", "bad2"]}).json()
    assert body["unknown_ids"] == ["bad1", "bad2"] and body["kind"] == "item"


def test_a_body_without_content_length_is_bounded_too(client):
    def chunks():
        for _ in range(100):
            yield b" " * 100

    response = client.post("/recommendations", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_concurrent_requests_give_the_same_answers(client):
    users = [f"u{i}" for i in range(40)]
    alone = {u: client.get(f"/users/{u}/recommendations", params={"k": 10, "diversity": 0.3}).json() for u in users}

    def ask(u):
        return u, client.get(f"/users/{u}/recommendations", params={"k": 10, "diversity": 0.3}).json()

    with ThreadPoolExecutor(8) as pool:
        together = dict(pool.map(ask, users * 3))
    assert together == alone


def test_serve_command_refuses_a_damaged_bundle_and_runs_two_workers(serving_runs, tmp_path):
    """`python -m mmrec.serve`: a tampered bundle -> one line and exit status 2, before any
    worker starts; a good one -> two forked workers answering on one port, stopped by SIGTERM."""
    import os
    import shutil
    import signal
    import socket
    import stat
    import subprocess
    import sys
    import time

    import httpx

    from conftest import REPO_ROOT

    bundle = serving_runs["freedom"][1]
    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    target = broken / "user_vectors.npy"
    target.chmod(stat.S_IRUSR | stat.S_IWUSR)
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    bad = subprocess.run([sys.executable, "-m", "mmrec.serve", f"bundle={broken}"], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "user_vectors.npy: checksum" in bad.stderr and "Traceback" not in bad.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "mmrec.serve", f"bundle={bundle}", f"port={port}", "workers=2"],
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline, pids = time.time() + 90, set()
        while time.time() < deadline and len(pids) < 2:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/users/u3/recommendations", params={"k": 3}, timeout=2)
                assert r.status_code == 200 and len(r.json()["items"]) == 3
                pids.add(httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).json()["worker"])
            except httpx.TransportError:
                time.sleep(0.2)
        assert len(pids) == 2, f"answers came from {pids}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) is not None
