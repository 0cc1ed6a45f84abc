"""Modality fusion strategies (the ``fusion`` config group), explicit and mask-aware.

Every config in ``conf/fusion`` is a ``_partial_`` of one class here; the model builds it
with the feature dimensions it receives and the size of its shared space:
``fusion(feature_dims={"image": 64, "text": 384}, dim=64)``. A model states the names it
accepts in ``supported_fusions``; ``train.build`` refuses other combinations.

* ``none`` (:class:`NoFusion`): ID-only models.
* Early fusion — each modality is first **projected into a shared d-dim space**
  (:class:`ModalityProjector`: linear or MLP), then combined per item:
  ``concat`` (:class:`ConcatFusion`), ``attention`` (:class:`AttentionFusion`, coarse-grained:
  one weight per modality and item, not per feature) or ``gated`` (:class:`GatedFusion`).
* Late fusion — ``late`` (:class:`LateFusion`): per-modality scores
  :math:`\\sum_m w_m \\langle u_m, i_m\\rangle` with fixed or learned weights.
* Graph-level fusion — ``graph_sum`` (:class:`GraphSumFusion`): a weighted sum of
  per-modality item-item graphs (FREEDOM, LATTICE).
* Alignment without fusion — ``aligned`` (:class:`AlignedFusion`): each modality is projected
  into the shared space and aligned with the ID representation by the objective; no fused
  vector is scored (BM3).

Missing modalities (``mask`` False in the feature store) are never zero vectors: the
projector substitutes a learned per-modality *missing* embedding, attention and gates
exclude missing modalities, and kNN graphs give missing items no content edges.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class Fusion(nn.Module):
    """Base class; ``name`` is the config name models list in ``supported_fusions``."""

    name = "base"


class NoFusion(Fusion):
    """No content: the model uses user and item IDs only."""

    name = "none"

    def __init__(self, feature_dims: dict[str, int] | None = None, dim: int = 0):
        super().__init__()


class ModalityProjector(nn.Module):
    """Per-modality projection into a shared ``dim``-space, with learned missing embeddings.

    Args:
        feature_dims: modality name -> input dimension.
        dim: output dimension (the shared space).
        hidden: hidden size of a 2-layer MLP (``None``: one linear layer).
        dropout: dropout on the input features during training.
    """

    def __init__(self, feature_dims: dict[str, int], dim: int, hidden: int | None = None,
                 dropout: float = 0.0):
        super().__init__()
        if not feature_dims:
            raise ValueError("ModalityProjector needs at least one modality")
        self.names = list(feature_dims)
        self.proj = nn.ModuleDict({
            m: (nn.Linear(d, dim) if hidden is None else
                nn.Sequential(nn.Linear(d, hidden), nn.LeakyReLU(), nn.Linear(hidden, dim)))
            for m, d in feature_dims.items()})
        self.missing = nn.ParameterDict({m: nn.Parameter(torch.randn(dim) * 0.01) for m in self.names})
        self.dropout = nn.Dropout(dropout)

    def forward(self, features) -> tuple[torch.Tensor, torch.Tensor]:
        """``(h [M, I, dim], mask [M, I])`` for the modalities in ``self.names`` order."""
        parts, masks = [], []
        for m in self.names:
            values, mask = features[m]  # [I, d_m], [I]
            h = self.proj[m](self.dropout(values))  # [I, dim]
            parts.append(torch.where(mask.unsqueeze(1), h, self.missing[m]))
            masks.append(mask)
        return torch.stack(parts), torch.stack(masks)


class AlignedFusion(Fusion):
    """Modalities projected into the shared space and kept apart: ``forward`` gives the projector's
    ``(h [M, I, dim], mask [M, I])``; the model aligns each with its ID representation in its own
    loss terms and scores without content (BM3)."""

    name = "aligned"

    def __init__(self, feature_dims: dict[str, int], dim: int, hidden: int | None = None, dropout: float = 0.0):
        super().__init__()
        self.projector = ModalityProjector(feature_dims, dim, hidden, dropout)

    @property
    def names(self) -> list[str]:
        return self.projector.names

    def forward(self, features) -> tuple[torch.Tensor, torch.Tensor]:
        return self.projector(features)


class EarlyFusion(Fusion):
    """Project every modality, then combine them into one ``[I, dim]`` content vector."""

    def __init__(self, feature_dims: dict[str, int], dim: int, hidden: int | None = None,
                 dropout: float = 0.0):
        super().__init__()
        self.projector = ModalityProjector(feature_dims, dim, hidden, dropout)
        self.dim = dim

    @property
    def names(self) -> list[str]:
        return self.projector.names

    def combine(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, features) -> torch.Tensor:
        h, mask = self.projector(features)  # [M, I, d], [M, I]
        return self.combine(h, mask)


class ConcatFusion(EarlyFusion):
    """Concatenate the projected modalities and map them back to ``dim`` with a linear layer."""

    name = "concat"

    def __init__(self, feature_dims: dict[str, int], dim: int, hidden: int | None = None,
                 dropout: float = 0.0):
        super().__init__(feature_dims, dim, hidden, dropout)
        self.out = nn.Linear(len(feature_dims) * dim, dim)

    def combine(self, h, mask):
        m, i, d = h.shape
        return self.out(h.permute(1, 0, 2).reshape(i, m * d))  # [I, M*d] -> [I, d]


class AttentionFusion(EarlyFusion):
    """Coarse-grained modality attention: one weight per (item, modality), masked.

    :math:`a_{im} = \\mathrm{softmax}_m\\, q^\\top \\tanh(W h_{im} + b)` over the modalities
    present for item ``i``; an item with no modality present averages the learned
    missing embeddings.
    """

    name = "attention"

    def __init__(self, feature_dims: dict[str, int], dim: int, hidden: int | None = None,
                 dropout: float = 0.0, attention_dim: int = 32):
        super().__init__(feature_dims, dim, hidden, dropout)
        self.key = nn.Linear(dim, attention_dim)
        self.query = nn.Parameter(torch.randn(attention_dim) * 0.1)

    def weights(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``[M, I]`` attention weights (0 for missing modalities)."""
        logits = torch.tanh(self.key(h)) @ self.query  # [M, I]
        none_present = ~mask.any(dim=0, keepdim=True)  # [1, I]
        usable = mask | none_present
        return torch.softmax(logits.masked_fill(~usable, float("-inf")), dim=0)

    def combine(self, h, mask):
        return (self.weights(h, mask).unsqueeze(2) * h).sum(dim=0)  # [I, d]


class GatedFusion(EarlyFusion):
    """Element-wise gates: :math:`\\sum_m \\sigma(W_m h_{im} + b_m) \\odot h_{im}`, averaged
    over the modalities present (missing ones are gated to zero)."""

    name = "gated"

    def __init__(self, feature_dims: dict[str, int], dim: int, hidden: int | None = None,
                 dropout: float = 0.0):
        super().__init__(feature_dims, dim, hidden, dropout)
        self.gate = nn.ModuleDict({m: nn.Linear(dim, dim) for m in feature_dims})

    def combine(self, h, mask):
        none_present = ~mask.any(dim=0, keepdim=True)
        usable = (mask | none_present).float().unsqueeze(2)  # [M, I, 1]
        gated = torch.stack([torch.sigmoid(self.gate[m](h[k])) * h[k] for k, m in enumerate(self.names)])
        return (gated * usable).sum(0) / usable.sum(0)


class LateFusion(Fusion):
    """Score-level fusion: :math:`s(u, i) = \\sum_m w_m \\langle u_m, i_m \\rangle`.

    Implemented as a concatenation of :math:`\\sqrt{w_m}`-scaled per-modality parts, so the
    fused embeddings still score by a plain dot product (full ranking stays one matmul).

    Args:
        feature_dims: modality name -> dimension (the parts are projected by the model).
        dim: size of each modality's part.
        learn_weights: learn :math:`w = \\mathrm{softmax}(\\theta)`; else fixed ``weights``.
        weights: fixed weights per modality (``None``: equal).
    """

    name = "late"

    def __init__(self, feature_dims: dict[str, int], dim: int, learn_weights: bool = True,
                 weights: dict[str, float] | None = None, hidden: int | None = None):
        super().__init__()
        self.names = list(feature_dims)
        self.projector = ModalityProjector(feature_dims, dim, hidden)
        init = torch.tensor([float((weights or {}).get(m, 1.0)) for m in self.names])
        init = init / init.sum()
        if learn_weights:
            self.logits = nn.Parameter(init.log())
        else:
            self.register_buffer("fixed", init, persistent=False)

    def modality_weights(self) -> torch.Tensor:
        return torch.softmax(self.logits, 0) if hasattr(self, "logits") else self.fixed

    def combine(self, user_parts: Sequence[torch.Tensor], item_parts: Sequence[torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-modality ``[U, d]`` / ``[I, d]`` parts -> ``([U, M*d], [I, M*d])``."""
        scale = self.modality_weights().sqrt()
        users = torch.cat([s * p for s, p in zip(scale, user_parts)], dim=1)
        items = torch.cat([s * p for s, p in zip(scale, item_parts)], dim=1)
        return users, items


class GraphSumFusion(Fusion):
    """Graph-level fusion: item-item graphs of each modality summed with fixed weights.

    Args:
        feature_dims: modality name -> dimension.
        dim: unused (kept for the common constructor).
        weights: weight per modality (normalised to sum to 1; ``None``: equal).
    """

    name = "graph_sum"

    def __init__(self, feature_dims: dict[str, int], dim: int = 0, weights: dict[str, float] | None = None):
        super().__init__()
        self.names = list(feature_dims)
        w = torch.tensor([float((weights or {}).get(m, 1.0)) for m in self.names])
        unknown = set(weights or {}) - set(self.names)
        if unknown:
            raise ValueError(f"graph_sum weights name unknown modalities {sorted(unknown)}; the dataset "
                             f"has {self.names}: set fusion.weights (e.g. fusion.weights=null for equal "
                             f"weights)")
        self.register_buffer("weights", w / w.sum(), persistent=False)


def fusion_name(fusion) -> str:
    """Config name of a fusion object or of a ``functools.partial`` of a fusion class."""
    target = getattr(fusion, "func", fusion)
    return getattr(target, "name", type(target).__name__)
