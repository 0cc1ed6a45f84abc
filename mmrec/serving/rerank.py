"""Re-ranking a small candidate list for diversity: MMR and DPP (fast greedy MAP).

Both work on the candidates only (a few hundred items), never on the catalogue: ``relevance``
``[n]`` (the model's scores of the candidates, in ranked order) and ``similarity`` ``[n, n]``
(cosine similarity of their content vectors). ``diversity`` in ``[0, 1]`` is the one knob:
0 returns the ranking unchanged, larger values trade relevance for items unlike those already
chosen. Each returns the chosen positions (indices into the candidates), best first. The greedy
loops run in NumPy: on a few hundred candidates a torch call's fixed cost is most of the work.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch


def _check(relevance: torch.Tensor, similarity: torch.Tensor, k: int, diversity: float) -> int:
    n = relevance.shape[0]
    if similarity.shape != (n, n):
        raise ValueError(f"similarity must be [{n}, {n}], got {tuple(similarity.shape)}")
    if not 0.0 <= diversity <= 1.0:
        raise ValueError(f"diversity must be in [0, 1], got {diversity}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return min(k, n)


def _unit_relevance(relevance: np.ndarray) -> np.ndarray:
    """Relevance min-max scaled to [0, 1] over the candidates, so that it trades against a
    similarity in [-1, 1] on a common scale whatever the model's score range."""
    low, high = relevance.min(), relevance.max()
    return (relevance - low) / (high - low) if high > low else np.ones_like(relevance)


def _ranked(relevance: torch.Tensor) -> torch.Tensor:
    return torch.sort(relevance, descending=True, stable=True).indices


def mmr(relevance: torch.Tensor, similarity: torch.Tensor, k: int, diversity: float) -> torch.Tensor:
    r"""Maximal marginal relevance (Carbonell & Goldstein 1998), greedy:

    .. math:: i^* = \arg\max_{i \notin S} \; \lambda\, r_i - (1 - \lambda) \max_{j \in S} s_{ij},
              \qquad \lambda = 1 - \text{diversity}

    with :math:`r` the relevance scaled to [0, 1] over the candidates. ``diversity=0`` keeps
    the order of ``relevance`` (ties by position). One vectorised update per chosen item.
    """
    k = _check(relevance, similarity, k, diversity)
    if diversity == 0.0:
        return _ranked(relevance)[:k]
    lam = 1.0 - diversity
    rel = lam * _unit_relevance(relevance.detach().cpu().numpy().astype(np.float64))
    sim = (1.0 - lam) * similarity.detach().cpu().numpy().astype(np.float64)
    penalty = np.zeros_like(rel)  # (1 - lambda) * max similarity to the chosen (none yet: 0)
    gain = rel.copy()
    chosen = []
    for step in range(k):
        best = int(np.argmax(gain))  # first maximum: ties keep the ranked order
        chosen.append(best)
        penalty = sim[best] if step == 0 else np.maximum(penalty, sim[best])
        gain = rel - penalty
        gain[chosen] = -np.inf
    return torch.tensor(chosen, dtype=torch.long)


def dpp(relevance: torch.Tensor, similarity: torch.Tensor, k: int, diversity: float,
        eps: float = 1e-10) -> torch.Tensor:
    r"""Greedy MAP inference of a determinantal point process (Chen, Zhang & Zhou 2018, "Fast
    Greedy MAP Inference for Determinantal Point Process to Improve Recommendation
    Diversity", Algorithm 1), with the relevance-quality kernel of their Section 5:

    .. math:: L = \mathrm{Diag}(q)\, S\, \mathrm{Diag}(q), \qquad q_i = \exp(\alpha\, r_i),
              \qquad \alpha = \frac{\theta}{2(1 - \theta)}, \quad \theta = 1 - \text{diversity}

    with :math:`r` the relevance scaled to [0, 1] and :math:`S` the (PSD) cosine similarity.
    Each step adds the item with the largest marginal gain :math:`\log d_i^2`, updating every
    candidate's Cholesky row incrementally (:math:`O(n k)` per step, :math:`O(n k^2)` in all).
    ``diversity=0`` (:math:`\theta = 1`) keeps the order of ``relevance``; the selection stops
    early when no candidate adds volume (all remaining are spanned by the chosen ones); the
    rest is then filled in relevance order.
    """
    k = _check(relevance, similarity, k, diversity)
    order = _ranked(relevance)
    if diversity == 0.0:
        return order[:k]
    theta = 1.0 - diversity
    alpha = theta / (2.0 * (1.0 - theta))
    rel = _unit_relevance(relevance.detach().cpu().numpy().astype(np.float64))
    q = np.exp(alpha * (rel - 1.0))  # scaled by exp(-alpha): the same argmax, no overflow
    kernel = q[:, None] * similarity.detach().cpu().numpy().astype(np.float64) * q[None, :]  # [n, n]
    n = kernel.shape[0]
    cis = np.zeros((k, n))  # incremental Cholesky rows
    d2 = np.diagonal(kernel).copy()  # [n] marginal gains d_i^2
    chosen: list[int] = []
    for step in range(k):
        gains = d2.copy()
        gains[chosen] = -np.inf
        best = int(np.argmax(gains))
        if gains[best] < eps:
            break
        chosen.append(best)
        if step + 1 == k:
            break
        e = (kernel[best] - cis[:step, best] @ cis[:step]) / math.sqrt(d2[best])  # [n]
        cis[step] = e
        d2 = d2 - e * e
    if len(chosen) < k:  # no more volume to add: the rest by relevance
        taken = set(chosen)
        chosen += [int(i) for i in order.tolist() if i not in taken][:k - len(chosen)]
    return torch.tensor(chosen, dtype=torch.long)


def cap_per_group(order: torch.Tensor, groups: list[str | None], cap: int, k: int) -> torch.Tensor:
    """The first ``k`` positions of ``order`` keeping at most ``cap`` items per group (a
    business rule such as "at most 3 items of one category"); an item without a group
    (``None``) is never capped. Fewer than ``k`` come back when the rule leaves fewer."""
    if cap < 1:
        raise ValueError(f"cap must be >= 1, got {cap}")
    counts: dict[str, int] = {}
    kept = []
    for pos in order.tolist():
        group = groups[pos]
        if group is not None:
            if counts.get(group, 0) >= cap:
                continue
            counts[group] = counts.get(group, 0) + 1
        kept.append(pos)
        if len(kept) == k:
            break
    return torch.tensor(kept, dtype=torch.long)


class MMR:
    """:func:`mmr` as an object the ``rerank`` config builds once at load, called per request
    with ``(relevance, similarity, k, diversity)``. (A Hydra ``_partial_`` would re-check
    Hydra's target policy on every call: a SHA-256 of the policy per request.)"""

    name = "mmr"

    def __call__(self, relevance: torch.Tensor, similarity: torch.Tensor, k: int, diversity: float) -> torch.Tensor:
        return mmr(relevance, similarity, k, diversity)


class DPP:
    """:func:`dpp` as an object built once at load (see :class:`MMR`); ``eps``: the smallest
    marginal gain that still adds an item."""

    name = "dpp"

    def __init__(self, eps: float = 1e-10):
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.eps = float(eps)

    def __call__(self, relevance: torch.Tensor, similarity: torch.Tensor, k: int, diversity: float) -> torch.Tensor:
        return dpp(relevance, similarity, k, diversity, eps=self.eps)


def reranker_name(rerank: Callable) -> str:
    """What ``GET /info`` calls a re-ranker: a built-in one's ``name``; a user's function (or
    ``functools.partial``) by the name of what it calls."""
    target = getattr(rerank, "func", rerank)  # a functools.partial: what it calls
    return getattr(rerank, "name", None) or getattr(target, "__name__", type(target).__name__)


RERANKERS = {"mmr": MMR, "dpp": DPP}
"""Re-ranker classes by config name (``conf/rerank`` builds the same classes)."""
