"""mmrec.prepare on single-step sources: the source's own features, no modality encoder, no re-generation."""

from __future__ import annotations

from mmrec.data.prepared import load_prepared
from mmrec.prepare import prepare

from conftest import SMALL_DEMO, compose_cfg


def test_demo_prepares_once_with_its_own_features(tmp_path):
    # the default modality encoder (clip_minilm) would need the hub: it must not be used for the demo
    cfg = compose_cfg([f"paths.data_dir={tmp_path}", "prepare.progress=false", *SMALL_DEMO], config_name="prepare")
    first = prepare(cfg)
    # its features are the source's own, one stage each (so that each can be forced or repaired alone)
    assert [r["stage"] for r in first] == ["tables", "features_image", "features_text"]
    assert first[0]["status"] == "ran"
    ds = load_prepared(cfg.dataset.root)
    assert set(ds.feature_entries) == {"image", "text"}
    stamp = (ds.root / "manifest.json").stat().st_mtime_ns
    again = prepare(cfg)
    assert again[0]["status"] == "skipped"
    (ds.root / "work" / "stages.json").unlink()  # e.g. prepared earlier by a training run
    third = prepare(cfg)
    assert third[0]["summary"] == {"existing": "already prepared"}
    assert (ds.root / "manifest.json").stat().st_mtime_ns == stamp  # nothing regenerated
