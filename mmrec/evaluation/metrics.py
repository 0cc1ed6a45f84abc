"""Top-k ranking metrics as pure tensor functions of a hit matrix (RecBole style).

Every function takes

* ``hits``: ``[num_users, max_k]`` bool/float, ``hits[u, r]`` = 1 if the item ranked at
  position ``r`` (0-based) for user ``u`` is relevant;
* ``num_pos``: ``[num_users]`` number of relevant items per user (all of them, not only
  those in the top ``max_k``);
* ``ks``: the cut-offs,

and returns per-user values ``[num_users, len(ks)]`` so callers can average over any
group of users (all, warm, cold). Users with ``num_pos == 0`` must be filtered out before.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

Metric = Callable[[torch.Tensor, torch.Tensor, Sequence[int]], torch.Tensor]


def _cols(ks: Sequence[int]) -> torch.Tensor:
    return torch.as_tensor([k - 1 for k in ks], dtype=torch.long)


def recall(hits: torch.Tensor, num_pos: torch.Tensor, ks: Sequence[int]) -> torch.Tensor:
    """|relevant in top k| / |relevant|."""
    cum = hits.float().cumsum(dim=1)[:, _cols(ks)]  # [U, len(ks)]
    return cum / num_pos.float().unsqueeze(1)


def precision(hits: torch.Tensor, num_pos: torch.Tensor, ks: Sequence[int]) -> torch.Tensor:
    """|relevant in top k| / k."""
    cum = hits.float().cumsum(dim=1)[:, _cols(ks)]
    return cum / torch.as_tensor(ks, dtype=torch.float32).unsqueeze(0)


def hit(hits: torch.Tensor, num_pos: torch.Tensor, ks: Sequence[int]) -> torch.Tensor:
    """1 if at least one relevant item is in the top k."""
    cum = hits.float().cumsum(dim=1)[:, _cols(ks)]
    return (cum > 0).float()


def ndcg(hits: torch.Tensor, num_pos: torch.Tensor, ks: Sequence[int]) -> torch.Tensor:
    """DCG@k / IDCG@k with binary gains and log2(rank + 2) discounts."""
    max_k = hits.shape[1]
    discount = 1.0 / torch.log2(torch.arange(max_k, dtype=torch.float32) + 2.0)  # [max_k]
    dcg = (hits.float() * discount).cumsum(dim=1)  # [U, max_k]
    # Ideal: min(num_pos, r + 1) relevant items in the first r + 1 positions.
    ranks = torch.arange(max_k).unsqueeze(0)  # [1, max_k]
    ideal_hits = (ranks < num_pos.unsqueeze(1)).float()  # [U, max_k]
    idcg = (ideal_hits * discount).cumsum(dim=1)
    cols = _cols(ks)
    return dcg[:, cols] / idcg[:, cols]


def average_precision(hits: torch.Tensor, num_pos: torch.Tensor, ks: Sequence[int]) -> torch.Tensor:
    """MAP@k: sum over hit positions r <= k of precision@r, divided by min(num_pos, k)."""
    h = hits.float()
    max_k = h.shape[1]
    prec_at_r = h.cumsum(dim=1) / torch.arange(1, max_k + 1, dtype=torch.float32)  # [U, max_k]
    ap_sum = (prec_at_r * h).cumsum(dim=1)[:, _cols(ks)]  # [U, len(ks)]
    denom = torch.minimum(num_pos.float().unsqueeze(1),
                          torch.as_tensor(ks, dtype=torch.float32).unsqueeze(0))
    return ap_sum / denom


METRICS: dict[str, Metric] = {
    "recall": recall,
    "ndcg": ndcg,
    "precision": precision,
    "map": average_precision,
    "hit": hit,
}


def compute_all(hits: torch.Tensor, num_pos: torch.Tensor, ks: Sequence[int],
                names: Sequence[str] = tuple(METRICS)) -> dict[str, torch.Tensor]:
    """``{"recall": [U, len(ks)], ...}`` for the named metrics."""
    if hits.shape[1] < max(ks):
        raise ValueError(f"hit matrix has {hits.shape[1]} columns, need max(ks)={max(ks)}")
    unknown = set(names) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; available {sorted(METRICS)}")
    return {name: METRICS[name](hits, num_pos, ks) for name in names}
