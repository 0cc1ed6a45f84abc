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


def first_k_sums(x: torch.Tensor, ks: Sequence[int]) -> torch.Tensor:
    """``[U, max_k] -> [U, len(ks)]``: the sum of the first ``k`` columns of ``x``, for each ``k``.

    One small matrix product with a 0/1 ``[max_k, len(ks)]`` matrix instead of a cumulative
    sum along each row, which a CPU runs row by row (several times slower here).
    """
    upto = torch.arange(x.shape[1], device=x.device).unsqueeze(1) < torch.as_tensor(ks, device=x.device)
    return x @ upto.to(x.dtype)  # [U, max_k] @ [max_k, len(ks)]


def _ks(ks: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(ks, dtype=torch.float32, device=like.device).unsqueeze(0)  # [1, len(ks)]


def recall(hits: torch.Tensor, num_pos: torch.Tensor, ks: Sequence[int]) -> torch.Tensor:
    """|relevant in top k| / |relevant|."""
    return first_k_sums(hits.float(), ks) / num_pos.float().unsqueeze(1)  # [U, len(ks)]


def precision(hits: torch.Tensor, num_pos: torch.Tensor, ks: Sequence[int]) -> torch.Tensor:
    """|relevant in top k| / k."""
    return first_k_sums(hits.float(), ks) / _ks(ks, hits)


def hit(hits: torch.Tensor, num_pos: torch.Tensor, ks: Sequence[int]) -> torch.Tensor:
    """1 if at least one relevant item is in the top k."""
    return (first_k_sums(hits.float(), ks) > 0).float()


def ndcg(hits: torch.Tensor, num_pos: torch.Tensor, ks: Sequence[int]) -> torch.Tensor:
    """DCG@k / IDCG@k with binary gains and log2(rank + 2) discounts."""
    max_k = hits.shape[1]
    discount = 1.0 / torch.log2(torch.arange(max_k, dtype=torch.float32, device=hits.device) + 2.0)  # [max_k]
    dcg = first_k_sums(hits.float() * discount, ks)  # [U, len(ks)]
    # Ideal: the min(num_pos, k) relevant items in the first positions.
    n_ideal = torch.minimum(num_pos.unsqueeze(1), torch.as_tensor(ks, device=hits.device).unsqueeze(0))  # [U, len(ks)]
    idcg = discount.cumsum(0)[n_ideal - 1]  # [U, len(ks)]
    return dcg / idcg


def average_precision(hits: torch.Tensor, num_pos: torch.Tensor, ks: Sequence[int]) -> torch.Tensor:
    """MAP@k: sum over hit positions r <= k of precision@r, divided by min(num_pos, k)."""
    h = hits.float()
    max_k = h.shape[1]
    rank = torch.arange(max_k, device=h.device)
    upper = (rank.unsqueeze(1) <= rank.unsqueeze(0)).float()  # [max_k, max_k]: column r sums ranks <= r
    prec_at_r = (h @ upper) / (rank + 1).float()  # [U, max_k]
    ap_sum = first_k_sums(prec_at_r * h, ks)  # [U, len(ks)]
    return ap_sum / torch.minimum(num_pos.float().unsqueeze(1), _ks(ks, h))


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
    hits = hits.float()  # once for all metrics (their own .float() is then a no-op)
    return {name: METRICS[name](hits, num_pos, ks) for name in names}
