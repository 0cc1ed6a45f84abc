"""Top-k selection over a full ranking: the one ranking that evaluation counts and that
recommendations shown to people come from (evaluation, the recommendation tables and
serving's exact index all call :func:`top_items`).

A core type of every layer above it: plain torch, no models, no splits. Callers pass a
``score_fn(users) -> [B, num_items]`` and the interaction sets whose items are excluded.
"""

from __future__ import annotations

import warnings
from typing import Callable, Iterator, Sequence

import torch

from mmrec.core.interactions import InteractionMatrix


def user_blocks(users: torch.Tensor, block: int, pair_sets: Sequence[InteractionMatrix]
                 ) -> Iterator[tuple[int, torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]]:
    """Yield ``(start, users[start:start + block], pairs)`` with ``pairs[s] = (row, item)``, the
    pairs of ``pair_sets[s]`` for that block (``row`` indexes the block). Each set is gathered
    once for all ``users`` and cut per block, not gathered per block."""
    gathered = [matrix.gather(users) for matrix in pair_sets]  # (row [P], item [P]), row ascending
    starts = list(range(0, max(len(users), 1), block))
    edges = torch.tensor(starts + [len(users)], device=users.device)
    cuts = [torch.searchsorted(row, edges).tolist() for row, _ in gathered]
    for n, start in enumerate(starts):
        yield start, users[start:start + block], [(row[cut[n]:cut[n + 1]] - start, col[cut[n]:cut[n + 1]])
                                                  for (row, col), cut in zip(gathered, cuts)]


def mask_scores_(scores: torch.Tensor, unknown_ids: torch.Tensor | None,
           exclude: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Set the ``unknown`` items and the ``exclude`` pairs of ``scores`` ``[b, I]`` to ``-inf``,
    in place (no ``[b, I]`` copy)."""
    if unknown_ids is not None and unknown_ids.numel():
        scores.index_fill_(1, unknown_ids, float("-inf"))
    for row, col in exclude:
        scores[row, col] = -torch.inf
    return scores


def nan_as_lowest(x: torch.Tensor) -> torch.Tensor:
    """``x`` with NaN replaced by ``-inf`` (a copy only when there is a NaN)."""
    nan = x.isnan()
    return x.masked_fill(nan, -torch.inf) if bool(nan.any()) else x


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

    Equal scores are ordered by item id, lower first (a stable descending sort's order, the one
    the evaluation's rank count uses): ``torch.topk`` orders ties arbitrarily, so a model with many
    equal scores (popularity, content kNN) would otherwise show one list and count another.
    """
    block = block or max(len(users), 1)
    unknown_ids = unknown.nonzero().squeeze(1) if unknown is not None else None  # [n_unknown]
    ids, values = [], []
    for _, us, excluded in user_blocks(users, block, exclude):
        scores = mask_scores_(score_fn(us), unknown_ids, excluded)  # [b, I]
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
                          f"non-finite user or item vectors (a diverged model, or damaged vectors)", RuntimeWarning,
                          stacklevel=2)
        top_values, top_ids = _ties_by_id(scores, top_values, top_ids)
        ids.append(top_ids)
        values.append(top_values)
    return torch.cat(ids), torch.cat(values)


def _ties_by_id(scores: torch.Tensor, top_values: torch.Tensor, top_ids: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.topk``'s result ``[b, k]`` over ``scores`` ``[b, I]`` (NaN already -inf in the
    top) made deterministic: among equal scores the lower item ids, in id order."""
    b, k = top_ids.shape
    if k == 0 or b == 0:
        return top_values, top_ids
    cut = top_values[:, -1:]  # [b, 1] the k-th score
    # rows where more items reach the k-th score than the top holds: which tied items made the cut is
    # arbitrary there, so those rows take the lowest ids among the tied (rare with learned scores)
    over = (scores >= cut).sum(dim=1) > k  # [b]
    if bool(over.any()):
        rows = over.nonzero().squeeze(1)
        sub, t = scores[rows], cut[rows]  # [n, I], [n, 1]
        tied = sub == t  # [n, I]
        need = k - (sub > t).sum(dim=1, keepdim=True)  # [n, 1] tied items that fit
        take = (sub > t) | (tied & (tied.cumsum(dim=1) <= need))  # [n, I], exactly k per row
        chosen = take.nonzero()[:, 1].view(len(rows), k)  # [n, k] ascending ids
        top_ids[rows], top_values[rows] = chosen, sub.gather(1, chosen)
    # order: score descending, equal scores by id (ids ascending first, then a stable sort by score)
    by_id = top_ids.argsort(dim=1)
    top_ids, top_values = top_ids.gather(1, by_id), top_values.gather(1, by_id)
    order = torch.sort(top_values, dim=1, descending=True, stable=True).indices
    return top_values.gather(1, order), top_ids.gather(1, order)
