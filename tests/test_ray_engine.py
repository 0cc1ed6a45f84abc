"""prepare.engine=ray: the feature stages on Ray Data give the in-process vectors, and resume like them."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch

from conftest import compose_cfg
from mmrec.data.features_stage import extract_images
from mmrec.data.prepared import read_manifest, unregister_feature
from mmrec.features.ray_engine import RayEngine
from mmrec.features.simple import PixelProjectionEncoder
from mmrec.features.store import FeatureStore
from test_extract import N_ITEMS, Flaky, _dataset

ray = pytest.importorskip("ray")  # a dependency of the project: present in CI


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray of 2 CPUs for this module (the engine joins it instead of starting its own)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _bulk(path):
    store = FeatureStore(path)
    try:
        return store.bulk()
    finally:
        store.close()


def test_mmrec_prepare_on_ray_writes_the_in_process_stores(fashion_shop, tmp_path, local_ray):
    """The fashion shop (real photos, simple encoders) prepared in process by the fixture; a copy
    with its feature stores removed is finished by ``prepare.engine=ray``: every stored vector,
    every missing item and the manifest's counts are the same."""
    from mmrec.prepare import prepare

    cfg, path = fashion_shop
    local_root = Path(cfg.dataset.root)
    copy = tmp_path / "data" / local_root.name
    shutil.copytree(local_root, copy)
    for modality in ("image", "text"):
        unregister_feature(copy, modality)
        shutil.rmtree(copy / "features" / f"{modality}.lmdb", ignore_errors=True)  # (unregistering may remove it)
        assert not (copy / "features" / f"{modality}.lmdb").exists()
    ray_cfg = compose_cfg([*_overrides(cfg), f"paths.data_dir={tmp_path / 'data'}", "prepare.engine=ray"],
                          config_name="prepare")
    records = prepare(ray_cfg)
    assert {r["stage"] for r in records} >= {"features_image", "features_text"}
    for modality in ("image", "text"):
        (va, ma), (vb, mb) = _bulk(local_root / "features" / f"{modality}.lmdb"), _bulk(copy / "features" / f"{modality}.lmdb")
        assert torch.equal(ma, mb) and torch.equal(va, vb), modality
        a, b = read_manifest(local_root)["features"][modality], read_manifest(copy)["features"][modality]
        assert (a["count"], a["missing"], a["modality_encoder"]) == (b["count"], b["missing"], b["modality_encoder"])
        assert b["count"] > 1000  # the real photos and texts, not an empty store


def _overrides(cfg) -> list[str]:
    """The fixture's prepare overrides (the same dataset and encoders)."""
    from conftest import FASHION

    return FASHION + ["modality_encoder=simple", f"dataset.source.path={cfg.dataset.source.path}",
                      "dataset.source.progress=false", "prepare.progress=false"]


def test_ray_resumes_a_store_an_interrupted_local_run_left(tmp_path, local_ray, caplog):
    _dataset(tmp_path)
    with pytest.raises(RuntimeError, match="simulated crash"):
        extract_images(tmp_path, "image", Flaky(fail_on=2), batch_size=4)  # the first batch committed
    with caplog.at_level(logging.INFO, logger="mmrec.features.extract"):
        entry = extract_images(tmp_path, "image", PixelProjectionEncoder(dim=16, size=8), batch_size=4,
                               engine=RayEngine(actors=2))["features"]["image"]
    assert f"resuming, 4 of {N_ITEMS} items already stored" in caplog.text
    assert (entry["count"], entry["missing"]) == (N_ITEMS - 3, 3)
    extract_images(tmp_path, "whole", PixelProjectionEncoder(dim=16, size=8), batch_size=4)  # never interrupted
    (va, ma), (vb, mb) = _bulk(tmp_path / "features/image.lmdb"), _bulk(tmp_path / "features/whole.lmdb")
    assert torch.equal(ma, mb) and torch.equal(va, vb)


def test_engine_settings_are_checked():
    with pytest.raises(ValueError, match="actors must be >= 1"):
        RayEngine(actors=0)
