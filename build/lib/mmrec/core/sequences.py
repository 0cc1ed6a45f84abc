"""Each user's interactions in time order, tagged with their split: the input of the models
whose user representation is computed from a history (two-tower, SASRec, BERT4Rec).

Like :class:`~mmrec.core.interactions.InteractionMatrix` it is an ``nn.Module`` with
non-persistent buffers only, so that it follows the LightningModule to the GPU; it is never
saved in checkpoints. A batch of histories is built with tensor operations only (no loop
over users).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import nn

#: split name -> the code of the prepared format (``interactions.parquet`` column ``split``)
SPLIT_CODES: dict[str, int] = {"train": 0, "valid": 1, "test": 2}

#: The padding value of a history batch (no item).
PAD = -1

POOLINGS = ("mean", "attention")


def pool_history(histories: torch.Tensor, item_emb: torch.Tensor, pooling: str = "mean",
                 query: torch.Tensor | None = None) -> torch.Tensor:
    r"""``[B, d]`` pooled item vectors of ``histories`` ``[B, W]`` (item ids, ``-1`` padding).

    ``mean``: the average of the history's item vectors; ``attention``: weights
    :math:`\mathrm{softmax}_j(\mathbf v_j^\top \mathbf q / \sqrt d)` over the history's items.
    An empty history pools to 0. Serving computes a new visitor's vector with this function
    (:mod:`mmrec.serving.recommender`), so that it is the user tower of
    training (:class:`mmrec.models.TwoTower`).
    """
    valid = histories >= 0  # [B, W]
    rows = item_emb[histories.clamp_min(0)]  # [B, W, d]
    if pooling == "mean":
        weights = valid.to(rows.dtype) / valid.sum(1, keepdim=True).clamp_min(1)  # [B, W]
    elif pooling == "attention":
        logits = (rows @ query) / math.sqrt(rows.shape[-1])  # [B, W]
        weights = torch.softmax(logits.masked_fill(~valid, float("-inf")), dim=1)
        weights = torch.nan_to_num(weights, nan=0.0)  # an empty history: all -inf -> 0
    else:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    return torch.einsum("bw,bwd->bd", weights, rows)


class UserSequences(nn.Module):
    """Users' item sequences sorted by time.

    Args:
        users, items, timestamps, splits: one entry per interaction (``splits``: codes of
            :data:`SPLIT_CODES`).
        num_users, num_items: shape of the interaction space.

    Order inside a user: by timestamp, then by split (training before validation before
    test: a leave-last-out split may hold out one of several interactions with the same
    timestamp, and the held-out one must come last), then by the order of the input rows.
    """

    indptr: torch.Tensor
    items: torch.Tensor
    codes: torch.Tensor

    def __init__(self, users, items, timestamps, splits, num_users: int, num_items: int):
        super().__init__()
        users, items = np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64)
        timestamps, splits = np.asarray(timestamps, dtype=np.int64), np.asarray(splits, dtype=np.int64)
        if not len(users) == len(items) == len(timestamps) == len(splits):
            raise ValueError("users, items, timestamps and splits must have equal lengths")
        self.num_users, self.num_items = int(num_users), int(num_items)
        order = np.lexsort((np.arange(len(users)), splits, timestamps, users))  # last key is the primary one
        counts = np.bincount(users, minlength=self.num_users)
        indptr = np.zeros(self.num_users + 1, dtype=np.int64)
        indptr[1:] = np.cumsum(counts)
        self.register_buffer("indptr", torch.from_numpy(indptr), persistent=False)  # [U + 1]
        self.register_buffer("items", torch.from_numpy(items[order]), persistent=False)  # [nnz]
        self.register_buffer("codes", torch.from_numpy(splits[order].astype(np.int8)), persistent=False)  # [nnz]

    def lengths(self, splits: Sequence[str], users: torch.Tensor | None = None) -> torch.Tensor:
        """Number of interactions of each user (``[len(users)]`` or ``[U]``) in ``splits``."""
        keep = torch.isin(self.codes, self._codes(splits))
        row = torch.repeat_interleave(torch.arange(self.num_users, device=self.items.device),
                                      self.indptr[1:] - self.indptr[:-1])
        per_user = torch.bincount(row[keep], minlength=self.num_users)
        return per_user if users is None else per_user[users]

    def _codes(self, splits: Sequence[str]) -> torch.Tensor:
        unknown = sorted(set(splits) - set(SPLIT_CODES))
        if unknown:
            raise KeyError(f"unknown split(s) {unknown}; known: {sorted(SPLIT_CODES)}")
        return torch.tensor([SPLIT_CODES[s] for s in splits], dtype=self.codes.dtype, device=self.codes.device)

    def batch(self, users: torch.Tensor, splits: Sequence[str], max_len: int,
              exclude: torch.Tensor | None = None, width: int | None = None) -> torch.Tensor:
        """The latest ``max_len`` items of each user in ``splits``, oldest first, left-padded
        with :data:`PAD`: ``[B, W]`` for ``users [B]``, the latest item in the last column.

        ``exclude`` (``[B]``): one item per row left out of that row's history (a training
        pair's positive, which the history must not contain). ``W`` is ``width`` when given,
        else the longest history in the batch (at most ``max_len``), so that short batches
        cost little; the last column is always a row's latest item.
        """
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        starts = self.indptr[users]  # [B]
        lengths = self.indptr[users + 1] - starts  # [B]
        total = int(lengths.sum())
        row = torch.repeat_interleave(torch.arange(len(users), device=users.device), lengths, output_size=total)
        offset = torch.cumsum(lengths, 0) - lengths  # [B] first entry of each row
        entry = starts[row] + torch.arange(total, device=users.device) - offset[row]  # [total]
        items, keep = self.items[entry], torch.isin(self.codes[entry], self._codes(splits))
        if exclude is not None:
            keep &= items != exclude[row]
        row, items = row[keep], items[keep]  # still row-major, time order inside a row
        kept = torch.bincount(row, minlength=len(users))  # [B]
        within = torch.arange(len(row), device=users.device) - (torch.cumsum(kept, 0) - kept)[row]
        from_end = kept[row] - 1 - within  # 0: the latest item of the row
        if width is None:
            width = max(1, min(max_len, int(kept.max()) if len(kept) else 0))
        out = torch.full((len(users), width), PAD, dtype=torch.long, device=users.device)  # [B, W]
        show = from_end < min(max_len, width)
        out[row[show], width - 1 - from_end[show]] = items[show]
        return out
