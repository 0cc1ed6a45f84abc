"""Fault injection on prepared datasets and feature stores (issue 17, classes 1, 2, 3, 6, 9).

Each case damages something on disk (or feeds parseable but wrong input), then asserts the
error names the file / line / item / key with the next step, and that nothing already
written was lost or altered.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mmrec.data.demo import DemoSource
from mmrec.data.features_stage import extract_texts
from mmrec.data.mmrec_format import MMRecSource, read_inter
from mmrec.data.prepared import (DatasetError, declare_expected, is_complete, load_prepared, read_manifest,
                                 write_prepared)
from mmrec.data.stages import Stage, run_stages
from mmrec.features.extract import encode_images, encode_texts
from mmrec.features.simple import HashedBowEncoder, PixelProjectionEncoder
from mmrec.features.store import FeatureStore, FeatureStoreError
from mmrec.data.dataset import DatasetSpec

pytestmark = pytest.mark.faults


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _snapshot(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root`` (to prove that nothing written was altered)."""
    return {str(p.relative_to(root)): _digest(p) for p in sorted(root.rglob("*")) if p.is_file()}


def _tiny_demo() -> DemoSource:
    return DemoSource(num_users=60, num_items=40, num_styles=4, interactions_per_user=6, image_size=8,
                      feature_dim=8)


@pytest.fixture
def demo_root(tmp_path) -> Path:
    root = tmp_path / "demo"
    _tiny_demo().prepare(root)
    return root


class _Staged:
    """A source with stages (like ml100k / Amazon): a training never prepares it itself."""

    staged = True

    def stages(self, root):  # pragma: no cover - only its presence matters
        return []

    def describe(self) -> dict:
        return {"type": "staged"}


def _tables(root: Path, n_items: int = 6, texts: list[str] | None = None) -> None:
    inter = pd.DataFrame({"user": [0, 0, 1, 1, 2, 2], "item": [0, 1, 2, 3, 4, 5], "split": [0, 1, 0, 2, 0, 1]})
    items = pd.DataFrame({"item": range(n_items), "title": [f"t{i}" if texts is None else "" for i in range(n_items)],
                          "text": texts or [f"text of item {i}" for i in range(n_items)]})
    write_prepared(root, name="tiny", interactions=inter, items=items, users=pd.DataFrame({"user": [0, 1, 2]}),
                   split_rule={"rule": "given"}, source={"type": "staged"}, expected_features=["text"])


# -- class 1: a dataset is complete only when all of it is ------------------------------------

def test_demo_killed_before_its_feature_stores_is_not_complete_and_training_repairs_it(tmp_path, monkeypatch):
    root = tmp_path / "demo"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies right after the manifest and the image store

    monkeypatch.setattr("mmrec.data.features_stage.encode_texts", killed)
    with pytest.raises(KeyboardInterrupt):
        _tiny_demo().prepare(root)
    monkeypatch.undo()
    manifest = read_manifest(root)
    assert manifest["expected_features"] == ["image", "text"] and manifest["complete"] is False
    assert not is_complete(root)
    tables = {f: _digest(root / f) for f in ("interactions.parquet", "items.parquet", "users.parquet")}
    with pytest.raises(DatasetError, match=r"feature stores \['text'\] never finished.*python -m mmrec.prepare"):
        DatasetSpec(str(root)).load()  # a reader without the source refuses the half-written dataset
    _, features = DatasetSpec(str(root), _tiny_demo()).load()  # training re-prepares it (deterministic; stores resume)
    assert is_complete(root) and set(features.names) == {"image", "text"}
    assert tables == {f: _digest(root / f) for f in tables}


def test_mmrec_import_with_a_failing_feature_file_never_trains_without_that_modality(tmp_path):
    src = _source_folder(tmp_path, "0\t0\t0\n0\t1\t1\n1\t1\t0\n1\t2\t2\n")
    np.save(src / "image_feat.npy", np.ones((3, 4), np.float32))
    bad = np.ones((3, 4), np.float32)
    bad[2, 1] = np.nan
    np.save(src / "text_feat.npy", bad)
    root = tmp_path / "ds"
    spec = DatasetSpec(str(root), MMRecSource(str(src), "toy"))
    for _ in range(2):  # the same command again must fail again, not train on what is there
        with pytest.raises(DatasetError, match=r"text_feat.npy: NaN or inf in row 2"):
            spec.ready()
        assert not is_complete(root) and read_manifest(root)["expected_features"] == ["image", "text"]
    image_store = _snapshot(root / "features" / "image.lmdb")
    bad[2, 1] = 0.5
    np.save(src / "text_feat.npy", bad)
    _, features = spec.load()
    assert is_complete(root) and set(features.names) == {"image", "text"}
    assert _snapshot(root / "features" / "image.lmdb") == image_store  # resumed, not rewritten


def test_prepare_rebuilds_a_deleted_manifest_instead_of_skipping_every_stage(tmp_path):
    from conftest import SMALL_DEMO, compose_cfg
    from mmrec.prepare import prepare

    cfg = compose_cfg(["dataset=demo", f"paths.data_dir={tmp_path}", "prepare.progress=false", *SMALL_DEMO],
                      config_name="prepare")
    root = Path(cfg.dataset.root)
    prepare(cfg)
    tables = {f: _digest(root / f) for f in ("interactions.parquet", "users.parquet")}
    (root / "manifest.json").unlink()
    records = prepare(cfg)
    assert records[0]["status"] == "ran" and is_complete(root)
    assert tables == {f: _digest(root / f) for f in tables}


def test_stage_whose_output_vanished_runs_again_with_the_stages_after_it(tmp_path):
    runs: list[str] = []
    out = tmp_path / "a.txt"

    def stage_a() -> dict:
        runs.append("a")
        out.write_text("a")
        return {}

    stages = [Stage("a", {}, stage_a, check=lambda: None if out.exists() else "a.txt is gone"),
              Stage("b", {}, lambda: runs.append("b") or {})]
    run_stages(tmp_path, stages)
    run_stages(tmp_path, stages)
    assert runs == ["a", "b"]
    out.unlink()
    records = run_stages(tmp_path, stages)
    assert runs == ["a", "b", "a", "b"] and [r["status"] for r in records] == ["ran", "ran"]


def test_incomplete_staged_dataset_names_the_command_that_finishes_it(tmp_path):
    _tables(tmp_path)
    declare_expected(tmp_path, ["text"], "python -m mmrec.prepare dataset=tiny modality_encoder=offline")
    with pytest.raises(DatasetError, match=r"incomplete.*\['text'\] never finished.*"
                                           r"`python -m mmrec.prepare dataset=tiny modality_encoder=offline`"):
        DatasetSpec(str(tmp_path), _Staged()).ready()


# -- class 2: feature stores are verified when opened -----------------------------------------

def _registered_text(root: Path) -> Path:
    _tables(root)
    extract_texts(root, "text", HashedBowEncoder(dim=8), dtype="float16")
    return root / "features" / "text.lmdb"


def test_truncated_store_is_an_error_not_a_bus_error(tmp_path):
    store = _registered_text(tmp_path)
    data = store / "data.mdb"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    script = textwrap.dedent(f"""
        from mmrec.features.store import FeatureStore
        FeatureStore({str(store)!r}).bulk()
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]  # an exception, not SIGBUS (-7)
    assert "data.mdb: truncated" in proc.stderr and "extract" in proc.stderr


def test_truncated_registered_store_is_refused_by_the_dataset_with_the_repair_command(tmp_path):
    data = _registered_text(tmp_path) / "data.mdb"
    size = data.stat().st_size
    with open(data, "r+b") as fh:
        fh.truncate(size - 4096)
    with pytest.raises(DatasetError, match=rf"data.mdb: {size - 4096} bytes, manifest.json records {size}.*"
                                           r"python -m mmrec.prepare"):
        load_prepared(tmp_path, verify=False).feature_store("text")


def _poison(data: Path, vector: np.ndarray, value: float) -> None:
    """Overwrite every stored copy of ``vector`` (float16) in ``data`` with ``value`` (bit flips)."""
    raw = data.read_bytes()
    old = vector.astype(np.float16).tobytes()
    assert old in raw
    data.write_bytes(raw.replace(old, np.full_like(vector, value, dtype=np.float16).tobytes()))


def test_flipped_bytes_fail_the_checksum_or_the_finite_check_naming_the_item(tmp_path):
    store = _registered_text(tmp_path)
    values, _ = FeatureStore(store).get_many([3])
    _poison(store / "data.mdb", values[0].numpy(), np.nan)
    with pytest.raises(DatasetError, match="SHA-256 differs from manifest.json"):
        load_prepared(tmp_path, verify=True).feature_store("text")
    opened = load_prepared(tmp_path, verify=False).feature_store("text")  # size unchanged: opens
    with pytest.raises(FeatureStoreError, match="non-finite values in the vector of item 3"):
        opened.bulk()
    with pytest.raises(FeatureStoreError, match="item 3"):
        opened.get_many([2, 3])


def test_store_of_another_dimension_is_refused_naming_dim(tmp_path):
    store = _registered_text(tmp_path)
    manifest = read_manifest(tmp_path)
    other = tmp_path / "other.lmdb"
    with FeatureStore.create(other, dim=4, num_items=6, modality_encoder="x") as w:
        w.put_many(np.arange(6), np.ones((6, 4)))
    data = other / "data.mdb"
    (store / "data.mdb").write_bytes(data.read_bytes())
    manifest["features"]["text"].update(bytes=data.stat().st_size, sha256=_digest(data))  # consistent checksum
    (tmp_path / "manifest.json").write_text(__import__("json").dumps(manifest))
    with pytest.raises(DatasetError, match=r"text.lmdb: dim=4 in the store, but manifest.json records 8"):
        load_prepared(tmp_path, verify=True).feature_store("text")


def test_store_for_fewer_items_than_the_dataset_is_refused(tmp_path):
    _tables(tmp_path)
    store = tmp_path / "features" / "text.lmdb"
    encode_texts(store, [f"t{i}" for i in range(4)], HashedBowEncoder(dim=8))  # 4 of the 6 items
    from mmrec.data.prepared import register_feature

    register_feature(tmp_path, "text", {"path": "features/text.lmdb", "dim": 8, "dtype": "float16"})
    with pytest.raises(DatasetError, match=r"num_items=4 in the store, but the dataset has 6"):
        load_prepared(tmp_path).feature_store("text")


def test_non_finite_vectors_are_refused_when_writing_naming_the_item(tmp_path):
    with FeatureStore.create(tmp_path / "s.lmdb", dim=2, num_items=4, modality_encoder="x") as w:
        w.put_many([0, 1], np.ones((2, 2)))
        with pytest.raises(FeatureStoreError, match=r"non-finite feature values for items \[3\]"):
            w.put_many([2, 3], np.array([[1.0, 2.0], [np.inf, 0.0]]))
    values, mask = FeatureStore(tmp_path / "s.lmdb").bulk()
    assert mask.tolist() == [True, True, False, False]  # the batch before stays, the bad one is not half-written


def test_a_store_where_every_item_is_missing_is_refused_by_training(tmp_path):
    _tables(tmp_path, texts=[""] * 6)
    manifest = extract_texts(tmp_path, "text", HashedBowEncoder(dim=8))
    assert manifest["features"]["text"]["missing"] == 6
    with pytest.raises(DatasetError, match=r"no item has a 'text' vector \(all 6 missing\)"):
        DatasetSpec(str(tmp_path)).load()


# -- class 3: importer input that is wrong but parseable ---------------------------------------

def _source_folder(tmp_path: Path, body: str) -> Path:
    """An MMRec dataset folder with ``toy.inter`` = header + ``body``."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "toy.inter").write_text("userID\titemID\tx_label\n" + body)
    return src


def _import_logged(tmp_path: Path, body: str, caplog) -> str:
    """Import ``body`` (no feature files) into ``tmp_path/ds``; returns the importer's warnings."""
    src = _source_folder(tmp_path, body)
    with caplog.at_level(logging.WARNING, logger="mmrec.data.mmrec_format"):
        MMRecSource(str(src), "toy", feature_files={}).prepare(tmp_path / "ds")
    return caplog.text


def _inter(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "toy.inter"
    path.write_text("userID\titemID\tx_label\n" + body)
    return path


def test_header_only_inter_file_says_so(tmp_path):
    with pytest.raises(DatasetError, match=r"toy.inter: no interactions \(only a header\)"):
        read_inter(_inter(tmp_path, ""))


def test_blank_lines_do_not_shift_reported_line_numbers(tmp_path):
    path = _inter(tmp_path, "0\t0\t0\n\n0\t1\t0\n\n1\t0\t7\n")
    with pytest.raises(DatasetError, match=r"toy.inter: line 6: x_label=7"):
        read_inter(path)
    ok = read_inter(_inter(tmp_path, "0\t0\t0\n\n1\t1\t0\n"))
    assert ok["line"].tolist() == [2, 4] and len(ok) == 2


def test_huge_id_is_reported_as_too_large_not_negative(tmp_path):
    path = _inter(tmp_path, "0\t0\t0\n123456789012345678901234567890\t1\t0\n")
    with pytest.raises(DatasetError, match=r"line 3: userID=123456789012345678901234567890 is too large.*0-based"):
        read_inter(path)


def test_sparse_item_ids_are_refused_before_allocating_a_huge_catalogue(tmp_path):
    src = _source_folder(tmp_path, "0\t0\t0\n0\t50000000\t0\n1\t1\t0\n")
    with pytest.raises(DatasetError, match=r"line 3: item id 50000000 with only 3 distinct items"):
        MMRecSource(str(src), "toy").prepare(tmp_path / "ds")
    assert not (tmp_path / "ds" / "manifest.json").exists()


def test_users_only_in_validation_or_test_are_dropped_with_counts_and_gaps_closed(tmp_path, caplog):
    # user 1 only in test, user 3 absent (a gap), user 4 has training
    text = _import_logged(tmp_path, "0\t0\t0\n0\t1\t1\n1\t1\t2\n4\t1\t0\n4\t2\t2\n2\t0\t0\n", caplog)
    ds = load_prepared(tmp_path / "ds")
    assert ds.users["raw_id"].tolist() == ["0", "2", "4"]  # renumbered 0..2, raw ids kept
    assert ds.num_users == 3 and len(ds.interactions) == 5
    assert "1 users occur only in validation/test (e.g. user 1, line 4): dropped with their 1 rows" in text
    assert "2 user ids in 0..4 have no interaction" not in text  # user 1 is dropped, user 3 is the gap
    assert "1 user ids in 0..4 have no interaction" in text


def test_item_ids_without_interactions_stay_as_cold_items_with_a_warning(tmp_path, caplog):
    text = _import_logged(tmp_path, "0\t0\t0\n0\t3\t1\n1\t1\t0\n", caplog)
    assert load_prepared(tmp_path / "ds").num_items == 4
    assert "1 of 4 item ids have no interaction in any split (e.g. item 2)" in text


def test_truncated_npy_feature_file_names_the_file(tmp_path):
    src = _source_folder(tmp_path, "0\t0\t0\n1\t1\t0\n")
    np.save(src / "image_feat.npy", np.ones((2, 64), np.float32))
    raw = (src / "image_feat.npy").read_bytes()
    (src / "image_feat.npy").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DatasetError, match=r"image_feat.npy: not a readable .npy array"):
        MMRecSource(str(src), "toy").prepare(tmp_path / "ds")
    assert not is_complete(tmp_path / "ds")


# -- class 6: write failures ------------------------------------------------------------------

def test_a_failed_lmdb_write_names_the_store_and_keeps_what_was_committed(tmp_path):
    """A file-size limit makes LMDB's writes fail as a full disk would (EFBIG instead of ENOSPC)."""
    store = tmp_path / "s.lmdb"
    script = textwrap.dedent(f"""
        import resource, signal
        import numpy as np
        from mmrec.features.store import FeatureStore
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        w = FeatureStore.create({str(store)!r}, dim=256, num_items=4000, modality_encoder="x", dtype="float32")
        w.put_many(np.arange(10), np.ones((10, 256)))
        size = ({str(store)!r} + "/data.mdb")
        import os
        resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize(size) + 8192,) * 2)
        w.put_many(np.arange(10, 4000), np.ones((3990, 256)))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert f"disk full or write error at {store}" in proc.stderr and "rerun" in proc.stderr
    values, mask = FeatureStore(store).bulk()
    assert mask.sum() == 10 and bool((values[:10] == 1).all())  # the committed batch survives
    with FeatureStore.create(store, dim=256, num_items=4000, modality_encoder="x", dtype="float32") as w:
        assert w.done_ids().tolist() == list(range(10))  # and a rerun resumes after it


# -- class 9: a stage that re-runs keeps no stale results -------------------------------------

class _CountingText(HashedBowEncoder):
    def __init__(self):
        super().__init__(dim=8)
        self.seen: list[str] = []

    def __call__(self, texts):
        self.seen.extend(texts)
        return super().__call__(texts)


def test_changed_text_is_encoded_again_and_only_it(tmp_path):
    store = tmp_path / "t.lmdb"
    texts = ["red shoe", "blue hat", "green bag"]
    encode_texts(store, texts, _CountingText())
    before, _ = FeatureStore(store).bulk()
    enc = _CountingText()
    encode_texts(store, ["red shoe", "", "green bag"], enc)  # item 1 lost its text upstream
    after, mask = FeatureStore(store).bulk()
    assert enc.seen == [] and mask.tolist() == [True, False, True]
    assert torch.equal(before[[0, 2]], after[[0, 2]])
    enc = _CountingText()
    encode_texts(store, ["red shoe", "yellow hat", "green bag"], enc)
    assert enc.seen == ["yellow hat"]


def test_image_fetched_after_an_outage_is_encoded_on_the_rerun(tmp_path):
    from PIL import Image

    store = tmp_path / "i.lmdb"
    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")
    refs = ["a.png", "b.png"]  # b.png could not be fetched
    stats = encode_images(store, refs, PixelProjectionEncoder(dim=8, size=4), image_root=tmp_path)
    assert (stats["count"], stats["missing"]) == (1, 1)
    Image.new("RGB", (8, 8), "blue").save(tmp_path / "b.png")
    stats = encode_images(store, refs, PixelProjectionEncoder(dim=8, size=4), image_root=tmp_path)
    assert (stats["count"], stats["missing"]) == (2, 0)
