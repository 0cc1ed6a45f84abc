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
        ids.append(top_ids)
        values.append(top_values)
    return torch.cat(ids), torch.cat(values)
