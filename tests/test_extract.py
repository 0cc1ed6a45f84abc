"""Batched extraction into LMDB: manifest entry, missing inputs, resume, DataLoader workers; the
store-level functions need no prepared dataset."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from mmrec.data.features_stage import extract_images, extract_modality, extract_texts, stored_modality_encoder
from mmrec.data.prepared import DatasetError, load_prepared, read_manifest, write_manifest, write_prepared
from mmrec.features.extract import encode_images, encode_texts
from mmrec.features.modality_encoders import ModalityEncoderSet
from mmrec.features.simple import HashedBowEncoder, PixelProjectionEncoder
from mmrec.features.store import FeatureStore, FeatureStoreError
from mmrec.utils.files import sha256_file

N_ITEMS = 23
NO_REF, ABSENT, CORRUPT, EMPTY_TEXT = 2, 5, 11, 7  # items whose image / text cannot be encoded


def _dataset(root) -> list[Image.Image | None]:
    """A prepared dataset of 23 items with real PNGs, except a few broken inputs."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    images, refs = [], []
    for i in range(N_ITEMS):
        img = Image.fromarray(rng.integers(0, 256, size=(20 + i, 24, 3), dtype=np.uint8))
        if i == NO_REF:
            images.append(None), refs.append("")
        elif i == ABSENT:
            images.append(None), refs.append("images/absent.png")
        elif i == CORRUPT:
            (root / "images" / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
            images.append(None), refs.append(f"images/{i}.png")
        else:
            img.save(root / "images" / f"{i}.png")
            images.append(img), refs.append(f"images/{i}.png")
    items = pd.DataFrame({"item": np.arange(N_ITEMS), "title": [f"item {i}" for i in range(N_ITEMS)],
                          "text": [f"red shoe number {i}" for i in range(N_ITEMS)], "image": refs})
    items.loc[EMPTY_TEXT, ["title", "text"]] = ""
    inter = pd.DataFrame({"user": [0, 0, 1], "item": [0, 1, 2], "split": [0, 1, 0]})
    write_prepared(root, name="tiny", interactions=inter, items=items, users=pd.DataFrame({"user": [0, 1]}),
                   split_rule={"rule": "given"}, source={"type": "test"})
    return images


class Flaky(PixelProjectionEncoder):
    """PixelProjection that fails on its ``fail_on``-th batch and counts the rows it encoded."""

    def __init__(self, fail_on: int | None = None):
        super().__init__(dim=16, size=8)
        self.fail_on, self.calls, self.rows = fail_on, 0, 0

    def encode_tensor(self, batch):
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError("simulated crash")
        self.rows += len(batch)
        return super().encode_tensor(batch)


class PilOnly:
    """A modality encoder with only ``__call__(list[PIL.Image])`` (no preprocess / encode_tensor)."""

    modality, dim, encoder_id = "image", 3, "mean-colour"

    def __call__(self, images):
        x = torch.tensor(np.stack([np.asarray(img, dtype=np.float32).mean(axis=(0, 1)) for img in images]))
        return torch.nn.functional.normalize(x, dim=1)


def test_images_manifest_entry_and_missing(tmp_path):
    images = _dataset(tmp_path)
    enc = PixelProjectionEncoder(dim=16, size=8)
    manifest = extract_images(tmp_path, "image", enc, batch_size=4, dtype="float32")
    entry = manifest["features"]["image"]
    assert list(entry) == ["path", "dim", "dtype", "modality_encoder", "weights_hash", "count", "missing",
                           "seconds", "items_per_s", "num_items", "bytes", "sha256"]
    data = tmp_path / "features" / "image.lmdb" / "data.mdb"
    assert (entry["num_items"], entry["bytes"]) == (N_ITEMS, data.stat().st_size)
    assert entry["sha256"] == sha256_file(data)
    assert entry["path"] == "features/image.lmdb" and entry["dim"] == 16 and entry["dtype"] == "float32"
    assert entry["modality_encoder"] == enc.encoder_id and entry["weights_hash"] == enc.weights_hash
    assert (entry["count"], entry["missing"]) == (N_ITEMS - 3, 3)
    assert entry["seconds"] > 0 and entry["items_per_s"] > 0
    assert read_manifest(tmp_path)["features"]["image"] == entry
    store = load_prepared(tmp_path).feature_store("image")
    values, mask = store.bulk()
    assert np.flatnonzero(~mask.numpy()).tolist() == [NO_REF, ABSENT, CORRUPT]
    ok = [i for i in range(N_ITEMS) if images[i] is not None]
    assert torch.allclose(values[ok], enc([images[i] for i in ok]), atol=1e-6)
    assert store.extra["weights_hash"] == enc.weights_hash
    store.close()


def test_texts_empty_is_missing(tmp_path):
    _dataset(tmp_path)
    enc = HashedBowEncoder(dim=16)
    entry = extract_texts(tmp_path, "text", enc, batch_size=5)["features"]["text"]
    assert (entry["count"], entry["missing"]) == (N_ITEMS - 1, 1)
    store = FeatureStore(tmp_path / entry["path"])
    values, mask = store.get_many([0, EMPTY_TEXT, 22])
    assert mask.tolist() == [True, False, True]
    expect = enc(["item 0. red shoe number 0", "item 22. red shoe number 22"])
    assert torch.allclose(values[[0, 2]], expect, atol=2e-3)  # float16 storage
    store.close()


def test_resume_after_crash_keeps_stored_ids(tmp_path):
    _dataset(tmp_path)
    with pytest.raises(RuntimeError, match="simulated crash"):
        extract_images(tmp_path, "image", Flaky(fail_on=2), batch_size=4)
    store = FeatureStore(tmp_path / "features/image.lmdb")
    _, mask = store.bulk()
    first = store.get_many(np.arange(4))[0]
    store.close()
    assert mask[:4].tolist() == [True, True, False, True]  # first batch committed (item 2 has no image)
    assert not mask[4:].any() and "image" not in read_manifest(tmp_path)["features"]

    again = Flaky()
    entry = extract_images(tmp_path, "image", again, batch_size=4)["features"]["image"]
    assert again.rows == N_ITEMS - 3 - 3  # neither the first batch nor the broken images re-encoded
    assert (entry["count"], entry["missing"]) == (N_ITEMS - 3, 3)
    store = FeatureStore(tmp_path / "features/image.lmdb")
    assert torch.equal(store.get_many(np.arange(4))[0], first)
    store.close()
    done = Flaky()
    extract_images(tmp_path, "image", done, batch_size=4)  # complete store: nothing left to do
    assert done.calls == 0


def test_other_modality_encoder_cannot_resume_a_store(tmp_path):
    _dataset(tmp_path)
    extract_images(tmp_path, "image", PixelProjectionEncoder(dim=16, size=8), batch_size=8)
    with pytest.raises(FeatureStoreError, match="modality_encoder="):
        extract_images(tmp_path, "image", PixelProjectionEncoder(dim=16, size=8, seed=1), batch_size=8)


def test_dataloader_workers_match_in_process(tmp_path):
    _dataset(tmp_path)
    enc = PixelProjectionEncoder(dim=16, size=8)
    extract_images(tmp_path, "a", enc, batch_size=3, dtype="float32", num_workers=0)
    entry = extract_images(tmp_path, "b", enc, batch_size=3, dtype="float32", num_workers=2,
                           progress=True)["features"]["b"]
    assert (entry["count"], entry["missing"]) == (N_ITEMS - 3, 3)
    a, b = FeatureStore(tmp_path / "features/a.lmdb"), FeatureStore(tmp_path / "features/b.lmdb")
    (va, ma), (vb, mb) = a.bulk(), b.bulk()
    assert torch.equal(ma, mb) and torch.equal(va, vb)
    a.close(), b.close()


def test_modality_encoder_without_preprocess_gets_pil_images(tmp_path):
    images = _dataset(tmp_path)
    entry = extract_images(tmp_path, "mean", PilOnly(), batch_size=4, num_workers=2,
                           dtype="float32")["features"]["mean"]
    assert entry["weights_hash"] == "unknown" and entry["missing"] == 3
    store = FeatureStore(tmp_path / "features/mean.lmdb")
    values, mask = store.get_many([0, CORRUPT])
    assert mask.tolist() == [True, False]
    assert torch.allclose(values[0], PilOnly()([images[0]])[0], atol=1e-6)
    store.close()


def test_store_level_functions_take_inputs_and_a_store_path(tmp_path):
    """mmrec.features encodes inputs into a store path; the data layer only adds path + manifest."""
    images = _dataset(tmp_path / "ds")
    refs = load_prepared(tmp_path / "ds").items["image"].to_numpy()
    enc = PixelProjectionEncoder(dim=16, size=8)
    stats = encode_images(tmp_path / "img.lmdb", refs, enc, image_root=tmp_path / "ds", batch_size=4,
                          dtype="float32")
    assert (stats["count"], stats["missing"]) == (N_ITEMS - 3, 3)
    entry = extract_images(tmp_path / "ds", "image", enc, batch_size=4, dtype="float32")["features"]["image"]
    volatile = ("path", "seconds", "items_per_s", "num_items", "bytes", "sha256")  # the last three: the store's fingerprint
    assert {k: v for k, v in stats.items() if k not in volatile} == \
        {k: v for k, v in entry.items() if k not in volatile}
    store = FeatureStore(tmp_path / "img.lmdb")
    values, mask = store.bulk()
    assert store.modality_encoder == enc.encoder_id and int(mask.sum()) == N_ITEMS - 3
    ok = [i for i in range(N_ITEMS) if images[i] is not None]
    assert torch.allclose(values[ok], enc([images[i] for i in ok]), atol=1e-6)
    store.close()
    stats = encode_texts(tmp_path / "txt.lmdb", ["red shoe", "", "blue hat"], HashedBowEncoder(dim=8), batch_size=2)
    assert (stats["count"], stats["missing"], stats["dim"]) == (2, 1, 8)


def test_entries_of_datasets_prepared_before_the_rename_are_read(tmp_path):
    """Manifests written before the modality-encoder rename recorded the id as ``encoder``."""
    _dataset(tmp_path)
    enc = PixelProjectionEncoder(dim=16, size=8)
    extract_images(tmp_path, "image", enc, batch_size=8)
    manifest = read_manifest(tmp_path)
    entry = manifest["features"]["image"]
    entry["encoder"] = entry.pop("modality_encoder")
    write_manifest(tmp_path, manifest)
    assert stored_modality_encoder(tmp_path, "image") == enc.encoder_id
    assert stored_modality_encoder(tmp_path, "text") is None


def test_feature_stage_refuses_or_replaces_a_store_of_another_modality_encoder(tmp_path):
    _dataset(tmp_path)
    first = ModalityEncoderSet(image=PixelProjectionEncoder(dim=16, size=8), batch_size=8, num_workers=0)
    summary = extract_modality(tmp_path, "image", first, overwrite=False, progress=False)
    first_id = first.build("image").encoder_id
    assert summary == {"dim": 16, "count": N_ITEMS - 3, "missing": 3, "modality_encoder": first_id}
    other = ModalityEncoderSet(image=PixelProjectionEncoder(dim=16, size=8, seed=1), batch_size=8, num_workers=0)
    with pytest.raises(DatasetError, match="overwrite_features"):
        extract_modality(tmp_path, "image", other, overwrite=False, progress=False)
    assert stored_modality_encoder(tmp_path, "image") == first_id
    summary = extract_modality(tmp_path, "image", other, overwrite=True, progress=False)
    assert summary["modality_encoder"] == stored_modality_encoder(tmp_path, "image") == other.build("image").encoder_id
