"""Amazon Reviews 2023 -> prepared dataset, end to end against a local HTTP server.

The server serves generated files in the 2023 format (with malformed lines, a missing
field, a wrong type, blank lines and duplicate reviews) plus product images: good ones, a
404 with a working fallback, a 404 without one, a truncated JPEG, an HTML page, a slow
response and a tiny image. The reviews download is interrupted once and must resume.
"""

from __future__ import annotations

import gzip
import io
import json

import pandas as pd
import pytest
from httpserver import LocalHTTPServer, Route
from PIL import Image

from mmrec.data.prepared import DatasetError, load_prepared
from mmrec.data.synthetic import write_amazon2023
from mmrec.prepare import prepare

from conftest import compose_cfg

FAULTS = {5: "json", 17: "missing_user", 23: "wrong_type", 40: "blank"}


def _jpeg(color, size=64) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Server + generated files; items 0..4 (in sorted-asin order of the generator) get
    scripted image faults."""
    root = tmp_path_factory.mktemp("amazon")
    with LocalHTTPServer() as server:
        files = write_amazon2023(root / "src", "Synthetic", num_reviews=4000, num_users=150, num_items=80,
                                 image_base_url=server.url("/images"), faults=FAULTS, seed=1)
        reviews = files["reviews"].read_bytes()
        server.add("/raw/review_categories/Synthetic.jsonl.gz", Route(reviews, truncate_first=len(reviews) // 3))
        server.add_file("/raw/meta_categories/meta_Synthetic.jsonl.gz", files["meta"])
        asins = sorted(files["items"])
        faults = {asins[0]: "404_fallback", asins[1]: "404", asins[2]: "truncated", asins[3]: "html",
                  asins[4]: "slow", asins[5]: "tiny"}
        for k, asin in enumerate(files["items"]):
            good = _jpeg((k * 3 % 256, 90, 200))
            kind = faults.get(asin)
            route = {None: good, "404_fallback": 404, "404": 404, "truncated": good[: len(good) // 2],
                     "html": Route(b"<html>blocked</html>", content_type="text/html"),
                     "slow": Route(good, slow=3.0), "tiny": _jpeg("red", 8)}[kind]
            server.add(f"/images/{asin}.jpg", route)
            # fallbacks: hi_res rescues "404_fallback"; otherwise they fail the same way, so
            # the item's status (that of the last candidate tried) is the scripted fault
            server.add(f"/images/{asin}_hires.jpg", good if kind == "404_fallback" else route if kind else 404)
            server.add(f"/images/{asin}_thumb.jpg", route if kind and kind != "404_fallback" else 404)
        yield server, files, faults, root


def _cfg(root, server, extra=()):
    return compose_cfg(["dataset=amazon2023", "modality_encoder=simple", f"paths.data_dir={root / 'data'}",
                        "dataset.source.category=Synthetic", f"dataset.source.base_url={server.url('/raw')}",
                        "dataset.source.images.timeout=1.0", "dataset.source.images.retries=0",
                        "dataset.source.images.workers=4", "dataset.source.progress=false",
                        "dataset.source.download_retries=3", "prepare.progress=false", *extra],
                       config_name="prepare")


@pytest.fixture(scope="module")
def prepared(served):
    server, files, faults, root = served
    cfg = _cfg(root, server)
    records = prepare(cfg)
    return cfg, records, server, files, faults, root


def test_download_resumed_with_range(prepared):
    _, records, server, *_ = prepared
    reqs = server.requests_for("/raw/review_categories/Synthetic.jsonl.gz")
    assert len(reqs) >= 2 and reqs[1].headers.get("Range", "").startswith("bytes=")
    assert [r["stage"] for r in records][:7] == ["download", "parse", "filter", "split", "items", "images", "tables"]
    assert all(r["status"] == "ran" for r in records)


def test_counts_dedupe_and_kcore(prepared):
    cfg, records, _, files, _, _ = prepared
    by = {r["stage"]: r["summary"] for r in records}
    assert by["parse"]["lines"] == 4000 and by["parse"]["blank"] == 1
    assert by["parse"]["malformed"] == 3 and by["parse"]["reviews"] == 3996
    assert [int(e.split(":")[0].split()[1]) for e in by["parse"]["malformed_examples"]] == [5, 17, 23]
    assert by["filter"]["duplicates"] == by["filter"]["reviews"] - by["filter"]["after_dedupe"] > 0
    ds = load_prepared(cfg.dataset.root)
    inter = ds.interactions
    assert not inter.duplicated(["user", "item"]).any()
    # 5-core holds on the kept interactions (all splits together)
    assert inter.groupby("user").size().min() >= 5 and inter.groupby("item").size().min() >= 5
    assert by["filter"]["after_kcore"] == len(inter) == sum(ds.manifest["num_interactions"].values())
    # items keyed by parent_asin, ids follow sorted raw ids
    assert ds.items["raw_id"].is_monotonic_increasing and set(ds.items["raw_id"]) <= set(files["items"])
    # the earliest of duplicate reviews is the one kept: compare with a pandas reference
    rows = []
    with gzip.open(files["reviews"], "rt") as fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec.get("user_id"), str) and isinstance(rec.get("timestamp"), int):
                rows.append(rec)
    earliest = pd.DataFrame(rows).groupby(["user_id", "parent_asin"])["timestamp"].min()
    got = inter.assign(user_id=ds.users["raw_id"].to_numpy()[inter["user"]],
                       parent_asin=ds.items["raw_id"].to_numpy()[inter["item"]])
    assert (got.set_index(["user_id", "parent_asin"])["timestamp"] == earliest.reindex(
        got.set_index(["user_id", "parent_asin"]).index)).all()


def test_item_text_and_image_masks(prepared):
    cfg, records, _, files, faults, root = prepared
    ds = load_prepared(cfg.dataset.root)
    items = ds.items.set_index("raw_id")
    assert "<" not in "".join(items["title"]) and "&amp;" not in "".join(items["text"])
    assert items["text"].str.contains("Store: Brand").all()
    report = pd.read_parquet(root / "data" / "amazon2023-Synthetic-k5-random" / "work" / "images.parquet")
    status = dict(zip(ds.items["raw_id"].to_numpy()[report["item"]], report["status"]))
    expect = {"404_fallback": "ok", "404": "http_404", "truncated": "corrupt", "html": "not_image",
              "slow": "timeout", "tiny": "too_small"}
    for asin, kind in faults.items():
        if asin in status:
            assert status[asin] == expect[kind], (asin, kind, status[asin])
            assert (items.loc[asin, "image"] != "") == (expect[kind] == "ok")
    ok = items["image"] != ""
    assert ok.sum() >= len(items) - len(faults)
    for rel in items["image"][ok]:
        with Image.open(ds.root / rel) as img:
            assert max(img.size) <= 256
    # features: one store per modality; failed images are missing (masked), never zero vectors
    vectors, mask = ds.feature_store("image").bulk()
    assert mask.numpy().tolist() == ok.to_numpy().tolist()
    assert ds.manifest["expected_features"] == ["image", "text"]
    text_vectors, text_mask = ds.feature_store("text").bulk()
    assert bool(text_mask.all()) and text_vectors.shape[0] == len(items)


def test_rerun_skips_finished_stages_and_keeps_data(prepared):
    cfg, records, server, files, _, root = prepared
    before = {p: p.read_bytes() for p in (root / "data" / "amazon2023-Synthetic-k5-random").glob("*.parquet")}
    n_requests = len(server.requests)
    again = prepare(cfg)
    assert all(r["status"] == "skipped" for r in again)
    assert len(server.requests) == n_requests  # nothing downloaded again
    assert {p: p.read_bytes() for p in before} == before


def test_forced_stage_reruns_it_and_later_ones_only(prepared, tmp_path):
    cfg, records, server, files, _, root = prepared
    forced = prepare(_cfg(root, server, ["prepare.force=[images]"]))
    status = {r["stage"]: r["status"] for r in forced}
    assert status["split"] == "skipped" and status["images"] == "ran" and status["tables"] == "ran"
    assert status["features_image"] == "ran"
    ds = load_prepared(cfg.dataset.root)
    assert ds.feature_entries["image"]["count"] == int((ds.items["image"] != "").sum())


def test_leave_last_out_and_cold_items_variant(served):
    server, files, _, root = served
    cfg = _cfg(root, server, ["dataset.source.split.rule=leave_last_out", "dataset.source.split.cold_items=0.2",
                              "dataset.source.images.enabled=false", "prepare.features=false"])
    prepare(cfg)
    ds = load_prepared(cfg.dataset.root)
    inter = ds.interactions
    train_items = set(inter.loc[inter["split"] == 0, "item"])
    cold = pd.read_parquet(ds.root / "work" / "item_ids.parquet")
    assert not train_items & set(cold.loc[cold["cold"], "item"])
    last = inter.sort_values("timestamp").groupby("user").tail(1)
    assert (last["split"] != 0).all()  # a user's latest interaction is never in training
    assert (ds.items["image"] == "").all()


def test_train_refuses_unprepared_real_dataset(make_cfg, tmp_path):
    from mmrec.train import train

    cfg = make_cfg(["dataset=ml100k", f"paths.data_dir={tmp_path / 'empty'}"], small=False)
    with pytest.raises(DatasetError, match="mmrec.prepare"):
        train(cfg)


def test_strict_mode_names_the_line(served, tmp_path):
    server, files, _, root = served
    cfg = _cfg(root, server, ["dataset.source.strict=true", f"dataset.root={tmp_path / 'strict'}"])
    with pytest.raises(DatasetError, match=r"Synthetic\.jsonl\.gz:5: invalid JSON"):
        prepare(cfg)


def test_dedupe_earliest_matches_a_sort_reference_with_ties():
    import numpy as np

    from mmrec.data.amazon2023 import dedupe_earliest

    rng = np.random.default_rng(3)
    n = 20000
    user, item = rng.integers(0, 300, n), rng.integers(0, 200, n)
    ts = rng.integers(0, 5, n)  # many equal timestamps: ties go to the first line
    order = np.lexsort((np.arange(n), ts, user * 1000 + item))
    pair = (user * 1000 + item)[order]
    first = np.ones(n, dtype=bool)
    first[1:] = pair[1:] != pair[:-1]
    expected = np.sort(order[first])
    got = dedupe_earliest(user, item, ts)
    assert len(got) < n and np.array_equal(got, expected)
