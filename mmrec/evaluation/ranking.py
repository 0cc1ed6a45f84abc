"""Full-ranking evaluation: score every item for a block of users, mask their history, and
find where the relevant items rank.

Metrics need only the hit matrix ``hits[u, r]`` (the item at rank ``r`` of user ``u`` is
relevant), so evaluation counts each relevant item's rank (:func:`ranked_hits`) instead of
selecting a top-k list per user; :func:`top_items` builds the lists where they are shown
(recommendation tables, beyond-accuracy metrics, serving; it lives in :mod:`mmrec.core.ranking`,
which serving uses without evaluation). Both give the same hits (tested).
Nothing here knows about models or splits: callers pass a ``score_fn(users) -> [B, num_items]``
and the interaction sets to exclude. :class:`mmrec.evaluation.evaluator.Evaluator` decides
what is excluded for which split and is the entry point everything else calls.
"""

from __future__ import annotations

import warnings
from typing import Callable, Sequence

import torch

from mmrec.core.interactions import InteractionMatrix
from mmrec.core.ranking import mask_scores_, nan_as_lowest, user_blocks
from mmrec.evaluation.metrics import compute_all


def _count_dtype(num_items: int) -> torch.dtype:
    """Float type whose sums of 0/1 are exact for ``num_items`` terms (float32 up to 2**24)."""
    return torch.float32 if num_items < 2 ** 24 else torch.float64


def relevant_ranks(scores: torch.Tensor, row: torch.Tensor, col: torch.Tensor, k: int,
                   workspace: torch.Tensor | None = None) -> torch.Tensor:
    """0-based rank ``[P]`` of item ``col[p]`` in the ranking of row ``row[p]`` of ``scores``:
    exact below ``k``, ``>= k`` for the others.

    The rank is the number of items scored higher plus the items of equal score and lower
    id: the order of a stable descending sort, so equal scores do not all count as hits.
    NaN scores count as ``-inf`` (ranked last), as in :func:`top_items`. ``row`` must be
    ascending (user-major pairs, as :meth:`InteractionMatrix.gather` returns them).

    One comparison pass per relevant item and no sort: the first relevant item of every row
    is compared with ``scores`` in place; the others (users with several) with a gathered
    copy of their rows. ``s > t`` is written as 0/1 floats into ``workspace`` (a
    ``[>= len(scores), I]`` buffer of :func:`_count_dtype`, reused across calls; allocated
    when ``None``) and summed: one pass less than a bool mask cast for the sum. A NaN ``s``
    compares false (ranked last) and ``s == t == ±inf`` is a tie; only a NaN target ``t`` is
    recounted apart. Ties are resolved only for the few pairs that may fall inside the top
    ``k``.
    """
    b, num_items = scores.shape
    dtype = _count_dtype(num_items)
    rank = torch.empty(len(row), dtype=dtype, device=scores.device)
    if len(row) == 0:
        return rank.long()
    target = scores[row, col]  # [P]
    first = torch.ones(len(row), dtype=torch.bool, device=row.device)  # [P] a row's first pair
    first[1:] = row[1:] != row[:-1]
    for sel in (first.nonzero().squeeze(1), (~first).nonzero().squeeze(1)):  # [n] pairs
        if not sel.numel():
            continue
        sub = scores if len(sel) == b else scores.index_select(0, row[sel])  # [n, I]
        fits = workspace is not None and len(sel) <= len(workspace)
        higher = workspace[:len(sel)] if fits else torch.empty(sub.shape, dtype=dtype, device=sub.device)
        rank[sel] = torch.gt(sub, target[sel].unsqueeze(1), out=higher).sum(1)  # [n, I] 0/1 -> [n]
    nan_target = target.isnan().nonzero().squeeze(1)  # ranked as -inf: count the finite scores
    if nan_target.numel():
        sub = nan_as_lowest(scores.index_select(0, row[nan_target]))  # [n, I]
        rank[nan_target] = (sub > -torch.inf).sum(1).to(dtype)
    rank = rank.long()
    near = (rank < k).nonzero().squeeze(1)  # pairs that may be hits: add their ties
    if near.numel():
        t = nan_as_lowest(target[near])  # [n]
        sub = scores.index_select(0, row[near])  # [n, I]
        if bool(torch.isneginf(t).any()):
            sub = nan_as_lowest(sub)  # a NaN score ties with a -inf target
        equal = sub == t.unsqueeze(1)  # [n, I], the item itself included
        tied = (equal.sum(1) > 1).nonzero().squeeze(1)  # rows where another item has that score
        if tied.numel():
            lower_id = torch.arange(num_items, device=scores.device).unsqueeze(0) < col[near[tied]].unsqueeze(1)
            rank[near[tied]] += (equal[tied] & lower_id).sum(1)  # [n_tied, I] -> [n_tied]
    return rank


def ranked_hits(score_fn: Callable[[torch.Tensor], torch.Tensor], users: torch.Tensor,
                exclude: Sequence[InteractionMatrix], truth: InteractionMatrix, k: int,
                unknown: torch.Tensor | None = None, block: int | None = None,
                item_groups: dict[str, torch.Tensor | None] | None = None
                ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Full-ranking hit matrices of ``users`` ``[B]``: ``{group: (hits [B, k] bool, num_pos [B])}``.

    The same figures as ranking every item with :func:`top_items` and marking the relevant
    ones (:func:`hits_of`), without building the top-k lists: each relevant item's rank is
    counted (:func:`relevant_ranks`), and ``hits[u, r]`` is set where a relevant item of
    ``u`` has rank ``r < k``. Masking (``exclude``, ``unknown``) and the ``block`` size are
    those of :func:`top_items`, ``item_groups`` those of :func:`hits_of`. NaN scores rank
    last; a ``RuntimeWarning`` says how many relevant items had one.
    Counting costs one comparison pass over the scores, where a top-k costs a selection per
    row (about 2.5x slower on a CPU for ~7k items and k = 50).
    """
    groups = item_groups or {"": None}
    block = block or max(len(users), 1)
    unknown_ids = unknown.nonzero().squeeze(1) if unknown is not None else None  # [n_unknown]
    hits = {g: torch.zeros(len(users), k, dtype=torch.bool, device=users.device) for g in groups}
    num_pos: dict[str, torch.Tensor] = {}
    nan_count, rows, cols, ranks = 0, [], [], []
    workspace = None  # [block, I] comparison buffer shared by the blocks
    for start, us, pairs in user_blocks(users, block, [*exclude, truth]):
        scores = mask_scores_(score_fn(us), unknown_ids, pairs[:-1])  # [b, I]
        if workspace is None:
            workspace = torch.empty(len(us), scores.shape[1], dtype=_count_dtype(scores.shape[1]),
                                    device=scores.device)
        row, col = pairs[-1]  # [P] relevant pairs, user-major
        nan_count = nan_count + scores[row, col].isnan().sum()  # a tensor: no device sync per block
        rank = relevant_ranks(scores, row, col, k, workspace)  # [P]
        rows.append(row + start)
        cols.append(col)
        ranks.append(rank)
    row, col, rank = torch.cat(rows), torch.cat(cols), torch.cat(ranks)  # [P] over all users
    for name, mask in groups.items():
        keep = rank < k if mask is None else (rank < k) & mask[col]
        hits[name][row[keep], rank[keep]] = True
        num_pos[name] = torch.bincount(row if mask is None else row[mask[col]], minlength=len(users))
    nan_count = int(nan_count)
    if nan_count:
        warnings.warn(f"{nan_count} of {len(row)} relevant items have a NaN score and were ranked last (NaN "
                      f"scores rank as -inf): the model has probably diverged (lower the learning rate?)",
                      RuntimeWarning, stacklevel=2)
    return {g: (hits[g], num_pos[g]) for g in groups}


def hits_of(top: torch.Tensor, users: torch.Tensor, truth: InteractionMatrix,
            item_groups: dict[str, torch.Tensor | None] | None = None
            ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{group: (hits [B, max_k] bool, num_pos [B])}`` of a ranked list against ``truth``.

    ``item_groups`` maps a group name to an ``[I]`` bool item mask (``None`` = all items):
    a group counts only its relevant items, both in the hits and in ``num_pos`` (e.g. cold
    items). Membership is looked up per shown slot (:meth:`InteractionMatrix.contains`): no
    ``[B, I]`` relevance mask, whatever the catalogue's size; ``-1`` slots are never hits.
    """
    row, col = truth.gather(users)
    shown = top >= 0
    hits = truth.contains(users.unsqueeze(1), top.clamp_min(0)) & shown  # [B, max_k]
    out = {}
    for name, mask in (item_groups or {"": None}).items():
        if mask is None:
            out[name] = (hits, torch.bincount(row, minlength=len(users)))
        else:
            out[name] = (hits & mask[top.clamp_min(0)], torch.bincount(row[mask[col]], minlength=len(users)))
    return out


class MetricAccumulator:
    """Averages per-user metrics over evaluation batches.

    Hit matrices are kept (on the CPU) until ``flush_users`` users are pending and their
    metrics computed then, in one call, and added to running sums: a metric call per batch
    costs ~1 ms of fixed overhead, several times the arithmetic on a 1,024-user batch.
    """

    def __init__(self, ks: Sequence[int], metrics: Sequence[str] = ("recall", "ndcg", "precision",
                                                                     "map", "hit"),
                 flush_users: int = 1 << 16):
        self.ks = list(ks)
        self.metrics = list(metrics)
        self.flush_users = flush_users
        self.reset()

    def reset(self) -> None:
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._pending_users = 0
        self._sums: dict[str, torch.Tensor] = {}  # name -> [len(ks)] float64 sum over users
        self._count = 0

    def update(self, hits: torch.Tensor, num_pos: torch.Tensor) -> None:
        keep = num_pos > 0  # users without relevant items have no metric
        self._pending.append((hits[keep].cpu(), num_pos[keep].cpu()))
        self._pending_users += int(keep.sum())
        if self._pending_users >= self.flush_users:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        hits = torch.cat([h for h, _ in self._pending])  # [n, max_k]
        num_pos = torch.cat([n for _, n in self._pending])  # [n]
        self._pending, self._pending_users = [], 0
        for name, value in compute_all(hits, num_pos, self.ks, self.metrics).items():  # [n, len(ks)]
            total = value.sum(dim=0, dtype=torch.float64)
            self._sums[name] = self._sums[name] + total if name in self._sums else total
        self._count += len(num_pos)

    @property
    def num_users(self) -> int:
        return self._count + self._pending_users

    def compute(self) -> dict[str, float]:
        """``{"recall@20": mean over users, ...}``; empty when no user had a relevant item."""
        self._flush()
        if self._count == 0:
            return {}
        return {f"{name}@{k}": float(v) / self._count for name, total in self._sums.items()
                for k, v in zip(self.ks, total)}
