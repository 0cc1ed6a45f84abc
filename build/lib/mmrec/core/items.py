"""The item sets of a dataset split: which items are warm, which are cold, which a model
cannot rank.

One object answers these questions for every layer (graph, sampling, models, evaluation,
export), so that "cold" means the same thing everywhere: an item without a training
interaction. It is an ``nn.Module`` with non-persistent buffers only so that it follows the
LightningModule to the GPU; it is never saved in checkpoints.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class ItemSets(nn.Module):
    """Warm / cold / unrankable items of one split.

    Args:
        warm: ``[I]`` bool, the items with at least one training interaction.

    Warm items are the only ones whose ID embeddings are ever trained (cold items are
    neither positives nor, by the sampling protocol, negatives) and the catalogue negatives
    are drawn from. Cold items can be ranked only from content; an ID-only model cannot rank
    them at all (:meth:`unrankable`), so evaluation ranks them last and serving never shows
    them.
    """

    warm: torch.Tensor

    def __init__(self, warm: torch.Tensor):
        super().__init__()
        warm = torch.as_tensor(warm, dtype=torch.bool)
        if warm.dim() != 1:
            raise ValueError(f"warm must be a [num_items] bool mask, got shape {tuple(warm.shape)}")
        self.register_buffer("warm", warm, persistent=False)  # [I] bool

    @classmethod
    def from_training(cls, train_items, num_items: int) -> "ItemSets":
        """Item sets from the item ids of the training interactions (any order, repeats allowed)."""
        items = torch.as_tensor(np.asarray(train_items), dtype=torch.long)
        warm = torch.zeros(int(num_items), dtype=torch.bool)
        warm[items] = True
        return cls(warm)

    @property
    def num_items(self) -> int:
        return int(self.warm.numel())

    @property
    def cold(self) -> torch.Tensor:
        """``[I]`` bool: items without any training interaction."""
        return ~self.warm

    @property
    def warm_ids(self) -> torch.Tensor:
        """Ascending ids of the warm items (the catalogue negatives are drawn from)."""
        return self.warm.nonzero().squeeze(1)

    @property
    def num_cold(self) -> int:
        return int(self.num_items - self.warm.sum())

    def unrankable(self, uses_content: bool) -> torch.Tensor | None:
        """``[I]`` bool mask of the items a model cannot score, or ``None`` when it can score all:
        an ID-only model knows nothing about a cold item, so such items are ranked last,
        explicitly, rather than by an arbitrary (untrained) score."""
        if uses_content or self.num_cold == 0:
            return None
        return self.cold

    def groups(self) -> dict[str, torch.Tensor | None]:
        """Item groups that evaluation reports separately: ``{"": all, "warm/": ..., "cold/": ...}``
        (the prefix of the metric names; ``None`` = every item)."""
        return {"": None, "warm/": self.warm, "cold/": self.cold}

    def zero_cold(self, rows: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """``rows`` (``[I, d]``, or the rows ``[n, d]`` of ``items [n]``) with the rows of cold
        items set to zero."""
        warm = self.warm if items is None else self.warm[items]
        return rows * warm.unsqueeze(1).to(rows.dtype)
