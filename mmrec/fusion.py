"""Modality fusion strategies (the ``fusion`` config group).

Only :class:`NoFusion` exists so far: the choice of ID-only models such as LightGCN.
Multimodal models declare in ``supported_fusions`` which names they accept, and
:func:`fusion_name` maps a fusion object back to its config name for that check.
"""

from __future__ import annotations

from torch import nn


class NoFusion(nn.Module):
    """No content: the model uses user and item IDs only."""

    name = "none"


def fusion_name(fusion: nn.Module) -> str:
    return getattr(fusion, "name", type(fusion).__name__)
