"""Deterministic, dependency-free feature extractors (no weights, no download).

They are the documented extractors of the demo dataset and a cheap offline baseline in
the ``encoder`` config group. Both are fixed functions of the input and a seed:

* :class:`PixelProjectionEncoder` — image resized to ``size x size`` RGB in [0, 1],
  flattened and concatenated with per-channel 8-bin colour histograms, centred, then
  projected by a fixed Gaussian matrix (seeded) to ``dim`` values and L2-normalised.
* :class:`HashedBowEncoder` — lower-cased alphanumeric tokens hashed (CRC-32) into
  ``buckets`` bins, ``log(1 + tf)`` weights, a fixed Gaussian projection to ``dim``,
  L2-normalised. Empty text cannot be encoded and is reported as missing.
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


class PixelProjectionEncoder:
    """Images -> ``[n, dim]`` fixed random projections of pixels and colour histograms."""

    modality = "image"

    def __init__(self, dim: int = 64, size: int = 16, seed: int = 0):
        self.dim, self.size, self.seed = dim, size, seed
        self._proj = _projection(size * size * 3 + 24, dim, seed)

    @property
    def encoder_id(self) -> str:
        return f"pixel-projection(size={self.size},dim={self.dim},seed={self.seed})"

    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        arr = np.stack([np.asarray(img.convert("RGB").resize((self.size, self.size), Image.BILINEAR),
                                   dtype=np.float32) / 255.0 for img in images])  # [n, s, s, 3]
        pixels = torch.from_numpy(arr).reshape(len(images), -1)  # [n, s*s*3]
        bins = torch.clamp((torch.from_numpy(arr) * 8).long(), max=7).reshape(len(images), -1, 3)  # [n, s*s, 3]
        onehot = torch.nn.functional.one_hot(bins, 8).float().mean(dim=1).reshape(len(images), 24)  # [n, 3*8]
        x = torch.cat([pixels, onehot], dim=1)
        x = x - x.mean(dim=1, keepdim=True)
        return torch.nn.functional.normalize(x @ self._proj, dim=1)


class HashedBowEncoder:
    """Texts -> ``[n, dim]`` fixed random projections of hashed bag-of-words counts."""

    modality = "text"

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
