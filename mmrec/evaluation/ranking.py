"""Full-ranking evaluation: score every item for a chunk of users, mask history, one top-k.

Nothing here knows about models: callers pass a ``score_fn(users) -> [B, num_items]``.
"""

from __future__ import annotations

import warnings
from typing import Callable, Sequence

import torch

from mmrec.data.interactions import InteractionMatrix
from mmrec.evaluation.metrics import compute_all


def rank_top(scores: torch.Tensor, users: torch.Tensor, exclude: Sequence[InteractionMatrix],
             max_k: int) -> torch.Tensor:
    """Mask the ``exclude`` items of ``users`` in ``scores`` (in place) and return the
    ``[B, max_k]`` top item ids (:func:`top_items` on ready-made scores)."""
    return top_items(lambda _: scores, users, exclude, max_k)[0]


def top_items(score_fn: Callable[[torch.Tensor], torch.Tensor], users: torch.Tensor,
              exclude: Sequence[InteractionMatrix], k: int, unknown: torch.Tensor | None = None,
              block: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Full ranking of every item for ``users`` ``[B]``: ``(top item ids [B, k], their scores
    [B, k])``.

    Args:
        score_fn: ``users [b] -> scores [b, I]`` (a fresh tensor: it is masked in place).
        exclude: interaction sets whose items are removed from the ranking.
        unknown: ``[I]`` bool, items ranked last whatever their score (``-inf``).
        block: users scored at once (``None``: all ``B``). On a CPU a block whose ``[block, I]``
            score matrix fits in the cache (~128 users for ~7k items) makes the product, the
            masking and the top-k read cache instead of memory; the result does not depend on it.

    NaN scores (a diverged model) are ranked last, as ``-inf``, with a ``RuntimeWarning``:
    ranking them first, as ``torch.topk`` does, would recommend arbitrary items.
    """
    block = block or max(len(users), 1)
    unknown_ids = unknown.nonzero().squeeze(1) if unknown is not None else None  # [n_unknown]
    ids, values = [], []
    for start in range(0, max(len(users), 1), block):
        us = users[start:start + block]
        scores = score_fn(us)  # [b, I]
        if unknown_ids is not None and unknown_ids.numel():
            scores.index_fill_(1, unknown_ids, float("-inf"))  # in place: no [b, I] copy
        for matrix in exclude:
            row, col = matrix.gather(us)
            scores[row, col] = -torch.inf
        top_values, top_ids = torch.topk(scores, k=k, dim=1)  # [b, k]
        # torch.topk ranks NaN first, so a row with a NaN shows one in its top k: redo only
        # those rows (rare) with NaN as -inf
        nan_top = top_values.isnan()  # [b, k]
        if bool(nan_top.any()):
            nan_rows = nan_top.any(dim=1).nonzero().squeeze(1)
            sub = scores[nan_rows]  # [n, I]
            nan_mask = sub.isnan()
            top_values[nan_rows], top_ids[nan_rows] = torch.topk(sub.masked_fill_(nan_mask, -torch.inf), k=k, dim=1)
            warnings.warn(f"{int(nan_mask.sum())} NaN scores among {len(us)} ranked users were ranked last: "
                          f"the model has probably diverged (lower the learning rate?)", RuntimeWarning,
                          stacklevel=2)
        ids.append(top_ids)
        values.append(top_values)
    return torch.cat(ids), torch.cat(values)


def hits_of(top: torch.Tensor, users: torch.Tensor, truth: InteractionMatrix, num_items: int,
            item_groups: dict[str, torch.Tensor | None] | None = None
            ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{group: (hits [B, max_k] bool, num_pos [B])}`` of a ranked list against ``truth``.

    ``item_groups`` maps a group name to an ``[I]`` bool item mask (``None`` = all items):
    a group counts only its relevant items, both in the hits and in ``num_pos`` (e.g. cold
    items). The dense relevance mask is built once for all groups.
    """
    row, col = truth.gather(users)
    relevant = torch.zeros(len(users), num_items, dtype=torch.bool, device=top.device)  # [B, I]
    relevant[row, col] = True
    hits = relevant.gather(1, top)  # [B, max_k]
    out = {}
    for name, mask in (item_groups or {"": None}).items():
        if mask is None:
            out[name] = (hits, torch.bincount(row, minlength=len(users)))
        else:
            out[name] = (hits & mask[top], torch.bincount(row[mask[col]], minlength=len(users)))
    return out


def hit_matrix(scores: torch.Tensor, users: torch.Tensor, exclude: Sequence[InteractionMatrix],
               truth: InteractionMatrix, max_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``max_k`` hits for a chunk of users.

    Args:
        scores: ``[B, num_items]`` scores of ``users``; overwritten in place (masked).
        users: ``[B]`` user ids.
        exclude: interaction sets whose items are removed from the ranking (training items,
            and validation items at test time).
        truth: the relevant items.
        max_k: length of the ranked list.

    Returns:
        ``hits [B, max_k] bool`` and ``num_pos [B]``.
    """
    top = rank_top(scores, users, exclude, max_k)
    return hits_of(top, users, truth, scores.shape[1])[""]


class MetricAccumulator:
    """Collects per-user metric rows over chunks and averages them, overall and per group."""

    def __init__(self, ks: Sequence[int], metrics: Sequence[str] = ("recall", "ndcg", "precision",
                                                                     "map", "hit")):
        self.ks = list(ks)
        self.metrics = list(metrics)
        self.reset()

    def reset(self) -> None:
        self._rows: dict[str, list[torch.Tensor]] = {m: [] for m in self.metrics}

    def update(self, hits: torch.Tensor, num_pos: torch.Tensor) -> None:
        keep = num_pos > 0
        values = compute_all(hits[keep].cpu(), num_pos[keep].cpu(), self.ks, self.metrics)
        for name, value in values.items():
            self._rows[name].append(value)

    @property
    def num_users(self) -> int:
        rows = self._rows[self.metrics[0]]
        return int(sum(r.shape[0] for r in rows))

    def compute(self) -> dict[str, float]:
        """``{"recall@20": mean over users, ...}``."""
        out: dict[str, float] = {}
        for name, rows in self._rows.items():
            if not rows:
                continue
            mean = torch.cat(rows).mean(dim=0)  # [len(ks)]
            out.update({f"{name}@{k}": float(v) for k, v in zip(self.ks, mean)})
        return out


def evaluate(score_fn: Callable[[torch.Tensor], torch.Tensor], truth: InteractionMatrix,
             exclude: Sequence[InteractionMatrix], ks: Sequence[int] = (10, 20, 50),
             chunk_size: int = 1024) -> dict[str, float]:
    """Full-ranking metrics for every user that has at least one item in ``truth``."""
    acc = MetricAccumulator(ks)
    users = truth.users_with_items()
    for start in range(0, len(users), chunk_size):
        chunk = users[start:start + chunk_size]
        hits, num_pos = hit_matrix(score_fn(chunk), chunk, exclude, truth, max(ks))
        acc.update(hits, num_pos)
    return acc.compute()
