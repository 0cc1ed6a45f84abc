"""dataset=ml100k: real posters and plot text through the item-table + image + feature stages."""

from __future__ import annotations

import pytest

from mmrec.data.prepared import load_prepared
from mmrec.prepare import prepare

from conftest import compose_cfg, shared_path


@pytest.fixture(scope="module")
def ml100k(tmp_path_factory):
    path = shared_path("ml100k-mm")
    data = tmp_path_factory.mktemp("ml")
    cfg = compose_cfg(["dataset=ml100k", "modality_encoder=simple", f"paths.data_dir={data}",
                       f"dataset.source.path={path}", "dataset.source.progress=false", "prepare.progress=false"],
                      config_name="prepare")
    records = prepare(cfg)
    return cfg, records, path


def test_counts_split_and_posters(ml100k):
    cfg, records, path = ml100k
    ds = load_prepared(cfg.dataset.root)
    assert (ds.num_users, ds.num_items) == (943, 1682)
    assert ds.manifest["num_interactions"] == {"train": 75000, "valid": 12000, "test": 13000}
    posters = {int(p.stem) for p in (path / "posters").glob("*.jpg")}
    has_image = set(ds.items.loc[ds.items["image"] != "", "item"])
    assert has_image == posters  # every real poster validated; the others recorded missing
    images = next(r["summary"] for r in records if r["stage"] == "images")
    assert images["images_ok"] == len(posters) and images["image_status"]["no_url"] == 1682 - len(posters)


def test_text_and_feature_masks(ml100k):
    cfg, _, _ = ml100k
    ds = load_prepared(cfg.dataset.root)
    toy = ds.items.iloc[0]
    assert toy["title"] == "Toy Story (1995)"
    assert "Genres: Animation, Children's, Comedy" in toy["text"] and "Director: John Lasseter" in toy["text"]
    _, img_mask = ds.feature_store("image").bulk()
    assert img_mask.numpy().tolist() == (ds.items["image"] != "").tolist()
    _, txt_mask = ds.feature_store("text").bulk()
    assert int(txt_mask.sum()) == int(((ds.items["title"] + ds.items["text"]).str.strip() != "").sum())


def test_train_on_ml100k_fast_dev_run(ml100k, make_cfg):
    from mmrec.train import train

    cfg, _, _ = ml100k
    run = make_cfg(["dataset=ml100k", f"paths.data_dir={cfg.paths.data_dir}", "model=vbpr",
                    "+trainer.fast_dev_run=true", "logger=none"], small=False)
    metrics, objects = train(run)
    assert objects["run"].data.features.dims == {"image": 64, "text": 64}


def test_ml100k_cold_holds_out_a_tenth_of_the_movies(tmp_path):
    import numpy as np

    from mmrec.data.mmrec_format import read_inter

    path = shared_path("ml100k-mm")
    cfg = compose_cfg(["dataset=ml100k_cold", "modality_encoder=simple", f"paths.data_dir={tmp_path}",
                       f"dataset.source.path={path}", "dataset.source.progress=false", "prepare.progress=false",
                       "dataset.source.images.enabled=false"], config_name="prepare")
    records = prepare(cfg)
    ds = load_prepared(cfg.dataset.root)
    given = read_inter(path / "ml100k.inter")
    inter = ds.interactions.sort_values(["user", "item"]).reset_index(drop=True)
    given = given.sort_values(["user", "item"]).reset_index(drop=True)
    assert len(inter) == len(given) == 100000
    train_items = set(inter.loc[inter["split"] == 0, "item"])
    moved = inter["split"].to_numpy() != given["split"].to_numpy()
    held = set(np.unique(inter["item"].to_numpy()[moved]))
    assert held and not held & train_items  # held-out movies never occur in training
    assert (inter.loc[moved, "split"] != 0).all()  # nothing moves into training
    assert (inter.loc[given["split"] != 0, "split"] != 0).all()
    assert (given.loc[moved, "split"] == 0).any()
    items = next(r["summary"] for r in records if r["stage"] == "items")
    assert items["held_out_items"] == 168  # round(0.1 * 1682)
    assert ds.manifest["split"]["cold_items"] == 0.1
