"""Deterministic, dependency-free modality encoders (no weights, no download).

They are the documented feature extractors of the demo dataset and a cheap offline baseline
in the ``modality_encoder`` config group (choice ``simple``). Both are fixed functions of the
input and a seed:

* :class:`PixelProjectionEncoder` — image resized to ``size x size`` RGB in [0, 1],
  flattened and concatenated with per-channel 8-bin colour histograms, centred, then
  projected by a fixed Gaussian matrix (seeded) to ``dim`` values and L2-normalised.
* :class:`HashedBowEncoder` — lower-cased alphanumeric tokens hashed (CRC-32) into
  ``buckets`` bins, ``log(1 + tf)`` weights, a fixed Gaussian projection to ``dim``,
  L2-normalised. Empty text cannot be encoded and is reported as missing.

Both have the interface of :mod:`mmrec.features.modality_encoders` (``weights_hash``,
``device``; the image one also ``preprocess`` / ``encode_tensor`` so resizing runs in
DataLoader workers); having no weights, ``weights_hash`` says so.
"""

from __future__ import annotations

import re
import zlib

import numpy as np
import torch
from PIL import Image

_TOKEN = re.compile(r"[a-z0-9]+")


def _projection(rows: int, cols: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=gen) / cols ** 0.5


class _Resize:
    """Picklable preprocessing: PIL image -> ``[size, size, 3]`` float32 RGB in [0, 1]."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, img: Image.Image) -> torch.Tensor:
        arr = np.asarray(img.convert("RGB").resize((self.size, self.size), Image.BILINEAR), dtype=np.float32)
        return torch.from_numpy(arr / 255.0)


class PixelProjectionEncoder:
    """Images -> ``[n, dim]`` fixed random projections of pixels and colour histograms."""

    modality = "image"
    weights_hash = "none(deterministic projection)"
    device = torch.device("cpu")

    def __init__(self, dim: int = 64, size: int = 16, seed: int = 0):
        self.dim, self.size, self.seed = dim, size, seed
        self._proj = _projection(size * size * 3 + 24, dim, seed)
        self.preprocess = _Resize(size)

    @property
    def encoder_id(self) -> str:
        return f"pixel-projection(size={self.size},dim={self.dim},seed={self.seed})"

    def encode_tensor(self, batch: torch.Tensor) -> torch.Tensor:
        """``[n, size, size, 3]`` preprocessed images -> ``[n, dim]`` unit vectors."""
        batch = batch.float().cpu()
        n = batch.shape[0]
        pixels = batch.reshape(n, -1)  # [n, s*s*3]
        bins = torch.clamp((batch * 8).long(), max=7).reshape(n, -1, 3)  # [n, s*s, 3]
        onehot = torch.nn.functional.one_hot(bins, 8).float().mean(dim=1).reshape(n, 24)  # [n, 3*8]
        x = torch.cat([pixels, onehot], dim=1)
        x = x - x.mean(dim=1, keepdim=True)
        return torch.nn.functional.normalize(x @ self._proj, dim=1)

    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        return self.encode_tensor(torch.stack([self.preprocess(img) for img in images]))  # [n, s, s, 3]


class HashedBowEncoder:
    """Texts -> ``[n, dim]`` fixed random projections of hashed bag-of-words counts."""

    modality = "text"
    weights_hash = "none(deterministic projection)"
    device = torch.device("cpu")

    def __init__(self, dim: int = 64, buckets: int = 4096, seed: int = 0):
        self.dim, self.buckets, self.seed = dim, buckets, seed
        self._proj = _projection(buckets, dim, seed)

    @property
    def encoder_id(self) -> str:
        return f"hashed-bow(buckets={self.buckets},dim={self.dim},seed={self.seed})"

    def __call__(self, texts: list[str]) -> torch.Tensor:
        counts = torch.zeros(len(texts), self.buckets)
        for row, text in enumerate(texts):
            for tok in _TOKEN.findall(text.lower()):
                counts[row, zlib.crc32(tok.encode()) % self.buckets] += 1.0
        return torch.nn.functional.normalize(torch.log1p(counts) @ self._proj, dim=1)
