"""Item features of several modalities as device tensors, each with its presence mask."""

from __future__ import annotations

import torch
from torch import nn


class FeatureSet(nn.Module):
    """``{modality: (values [I, d_m] float32, mask [I] bool)}`` as non-persistent buffers.

    A constant input, not a parameter: it follows the LightningModule to its device and is
    never written into checkpoints. ``mask[i]`` is False where modality ``m`` is missing
    for item ``i`` (its values row is zero and must not be used as content).
    """

    def __init__(self, features: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None):
        super().__init__()
        self.names: list[str] = []
        for name, (values, mask) in (features or {}).items():
            if values.shape[0] != mask.shape[0]:
                raise ValueError(f"feature '{name}': {values.shape[0]} rows but {mask.shape[0]} mask entries")
            self.register_buffer(f"values_{name}", values.float(), persistent=False)
            self.register_buffer(f"mask_{name}", mask.bool(), persistent=False)
            self.names.append(name)

    def __getitem__(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if name not in self.names:
            raise KeyError(f"no feature '{name}' (have {self.names})")
        return getattr(self, f"values_{name}"), getattr(self, f"mask_{name}")

    def __contains__(self, name: str) -> bool:
        return name in self.names

    def __len__(self) -> int:
        return len(self.names)

    def rows(self, items: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{modality: (values [n, d_m], mask [n])}`` of ``items`` ``[n]`` only, indexable by
        modality name like the set itself (what a fusion projector reads)."""
        out = {}
        for name in self.names:
            values, mask = self[name]
            out[name] = (values[items], mask[items])
        return out

    def content_vectors(self) -> torch.Tensor | None:
        """``[I, sum d_m]`` the raw features fused into one content space, or ``None`` without
        features: each modality L2-normalised (a missing row stays 0) and scaled by
        :math:`1/\\sqrt{M}`, then concatenated, so the cosine of two items with every modality
        is the mean of their per-modality cosines. What item-item similarity (intra-list
        diversity, serving's similar items and re-ranking) is measured in."""
        if not self.names:
            return None
        scale = len(self.names) ** -0.5
        parts = []
        for name in self.names:
            values, mask = self[name]
            unit = values / values.norm(dim=1, keepdim=True).clamp_min(1e-12)
            parts.append(unit * (mask.unsqueeze(1).to(values.dtype) * scale))  # [I, d_m]
        return torch.cat(parts, dim=1)

    @property
    def dims(self) -> dict[str, int]:
        return {name: int(self[name][0].shape[1]) for name in self.names}
