"""User -> items interaction sets in CSR form, on any device, with vectorised row access.

One structure serves three jobs: masking history items in full ranking, holding the
ground truth of a split, and telling the negative samplers which (user, item) pairs are
positives. It is an ``nn.Module`` with non-persistent buffers only so that it follows the
LightningModule to the GPU; it has no parameters and is never saved in checkpoints.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def _contains(keys: torch.Tensor, num_items: int, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """Membership of (user, item) pairs in sorted linear ``keys`` (user * num_items + item)."""
    query = users * num_items + items
    if keys.numel() == 0:
        return torch.zeros_like(query, dtype=torch.bool)
    pos = torch.searchsorted(keys, query.reshape(-1)).clamp_(max=keys.numel() - 1)
    return (keys[pos] == query.reshape(-1)).reshape(query.shape)


class InteractionMatrix(nn.Module):
    """Binary ``num_users x num_items`` matrix stored as CSR (``indptr``, ``indices``).

    Args:
        users, items: equal-length integer arrays of the (user, item) pairs.
        num_users, num_items: matrix shape.
        catalogue: the items negatives are drawn from (:meth:`nth_negative`); ``None``: all
            items. The training matrix uses the items with a training interaction, so that
            held-out (cold) items are never shown to a model, not even as negatives.
    """

    indptr: torch.Tensor
    indices: torch.Tensor
    keys: torch.Tensor

    def __init__(self, users, items, num_users: int, num_items: int, catalogue=None):
        super().__init__()
        users = torch.as_tensor(np.asarray(users), dtype=torch.long)
        items = torch.as_tensor(np.asarray(items), dtype=torch.long)
        self.num_users = int(num_users)
        self.num_items = int(num_items)
        keys = torch.unique(users * self.num_items + items)  # sorted, de-duplicated
        rows = torch.div(keys, self.num_items, rounding_mode="floor")
        counts = torch.bincount(rows, minlength=self.num_users)
        indptr = torch.zeros(self.num_users + 1, dtype=torch.long)
        indptr[1:] = counts.cumsum(0)
        self.register_buffer("indptr", indptr, persistent=False)
        self.register_buffer("indices", keys - rows * self.num_items, persistent=False)
        # Sorted linear keys user * num_items + item, for O(log nnz) membership tests.
        self.register_buffer("keys", keys, persistent=False)
        cat = torch.arange(self.num_items) if catalogue is None else \
            torch.unique(torch.as_tensor(np.asarray(catalogue), dtype=torch.long))
        pos = torch.searchsorted(cat, self.indices).clamp_(max=max(cat.numel() - 1, 0))
        if self.indices.numel() and not torch.equal(cat[pos], self.indices):
            bad = int(self.indices[cat[pos] != self.indices][0])
            raise ValueError(f"item {bad} has an interaction but is not in the negative catalogue")
        self.register_buffer("catalogue", cat, persistent=False)
        # For exact negative sampling: the j-th positive (0-based, ascending) of a user, at
        # catalogue position c_j, has c_j - j negatives below it in the catalogue. Keys
        # user * (C + 1) + (c_j - j) are sorted.
        within = torch.arange(keys.numel()) - indptr[rows]
        self.register_buffer("gap_keys", rows * (cat.numel() + 1) + pos - within, persistent=False)

    @property
    def nnz(self) -> int:
        return int(self.indices.numel())

    def counts(self, users: torch.Tensor | None = None) -> torch.Tensor:
        """Number of items of each user ([len(users)] or [num_users])."""
        deg = self.indptr[1:] - self.indptr[:-1]
        return deg if users is None else deg[users]

    def users_with_items(self) -> torch.Tensor:
        """Users that have at least one item, ascending."""
        return torch.nonzero(self.counts() > 0).squeeze(1)

    def gather(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """All pairs of the given users, flattened: ``(row, item)`` where ``row`` indexes ``users``."""
        starts = self.indptr[users]  # [B]
        lengths = self.indptr[users + 1] - starts  # [B]
        total = int(lengths.sum())
        row = torch.repeat_interleave(torch.arange(len(users), device=users.device), lengths,
                                      output_size=total)  # [total]
        # Position inside each user's segment: global arange minus the segment's offset.
        seg_offset = torch.cumsum(lengths, 0) - lengths  # [B]
        within = torch.arange(total, device=users.device) - seg_offset[row]
        return row, self.indices[starts[row] + within]

    def contains(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Elementwise membership of (users[j], items[j]) pairs; any broadcastable shapes."""
        return _contains(self.keys, self.num_items, users, items)

    def num_negatives(self, users: torch.Tensor) -> torch.Tensor:
        """Catalogue items each user has *not* interacted with ([len(users)])."""
        return self.catalogue.numel() - self.counts(users)

    def nth_negative(self, users: torch.Tensor, ranks: torch.Tensor) -> torch.Tensor:
        """The ``ranks``-th (0-based, ascending) catalogue item that ``users`` have *not*
        interacted with.

        ``users`` and ``ranks`` broadcast; ranks must be below :meth:`num_negatives`. In
        catalogue positions the r-th negative is ``r + #{j : c_j - j <= r}``: one
        ``searchsorted``, no rejection; then one gather maps positions to item ids.
        """
        users, ranks = torch.broadcast_tensors(users, ranks)
        query = (users * (self.catalogue.numel() + 1) + ranks).reshape(-1)
        below = torch.searchsorted(self.gap_keys, query, right=True) - self.indptr[users.reshape(-1)]
        return self.catalogue[ranks + below.reshape(ranks.shape)]

    def item_degree(self) -> torch.Tensor:
        """Number of users per item ([num_items])."""
        return torch.bincount(self.indices, minlength=self.num_items)

    def pairs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All ``(users, items)`` pairs, user-major."""
        rows = torch.div(self.keys, self.num_items, rounding_mode="floor")
        return rows, self.indices


class RowItems:
    """Items per row, as ``(row, item)`` pairs: the part of :class:`InteractionMatrix` that
    ranking needs (:meth:`gather`, :meth:`contains`, :meth:`counts`), cheap enough to build
    for every request (serving's exclusions: a user's history plus explicit exclusions).

    Args:
        rows: one integer array of item ids per row (repeats allowed).
        num_items: catalogue size.
    """

    def __init__(self, rows, num_items: int):
        self.num_items = int(num_items)
        self.num_users = len(rows)
        lengths = torch.as_tensor([len(r) for r in rows], dtype=torch.long)
        items = torch.as_tensor(np.concatenate([np.asarray(r, dtype=np.int64) for r in rows])
                                if len(rows) else np.zeros(0, dtype=np.int64))
        row = torch.repeat_interleave(torch.arange(self.num_users), lengths)
        self.keys = torch.unique(row * self.num_items + items)  # sorted, de-duplicated
        self.row = torch.div(self.keys, self.num_items, rounding_mode="floor")
        self.col = self.keys - self.row * self.num_items

    @property
    def nnz(self) -> int:
        return int(self.keys.numel())

    def counts(self) -> torch.Tensor:
        return torch.bincount(self.row, minlength=self.num_users)

    def gather(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The pairs of rows ``users`` (ascending): ``(position in users, item)``, row-major."""
        if users.numel() == self.num_users and bool((users == torch.arange(self.num_users)).all()):
            return self.row, self.col
        keep = torch.isin(self.row, users)
        return torch.searchsorted(users, self.row[keep]), self.col[keep]

    def contains(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Elementwise membership of (users[j], items[j]) pairs; any broadcastable shapes."""
        return _contains(self.keys, self.num_items, users, items)
