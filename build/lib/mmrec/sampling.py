"""Negative samplers for pairwise training.

Every sampler returns ``[B, K]`` item ids for a batch of ``B`` (user, positive item) pairs,
never an item the user has in the training set, and never an item outside the training
matrix's catalogue (items with a training interaction): cold items stay unseen in training,
so what a model does with them at test time comes from content alone. All work is done with tensor operations
on the batch's device, without rejection loops (see :func:`sample_true_negatives`).
"""

from __future__ import annotations

from typing import Callable

import torch

from mmrec.core.interactions import InteractionMatrix

# score_fn(users [B], items [B, M]) -> scores [B, M], using the current step's embeddings.
ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def sample_true_negatives(users: torch.Tensor, k: int, positives: InteractionMatrix) -> torch.Tensor:
    """``[B, k]`` items drawn uniformly from each row's user's non-positive catalogue items
    (the training matrix's catalogue: items with a training interaction).

    Exact and loop-free: draw a rank ``r`` among the user's ``C - deg(u)`` negatives and map
    it to the item id with :meth:`InteractionMatrix.nth_negative`.
    """
    num_neg = positives.num_negatives(users)  # [B]
    if (num_neg <= 0).any():
        bad = int(users[num_neg <= 0][0])
        raise ValueError(f"user {bad} has interacted with every item: no negative exists; drop "
                         f"such users from the dataset.")
    u = torch.rand(len(users), k, device=users.device, dtype=torch.float64)
    ranks = (u * num_neg.unsqueeze(1)).long()  # [B, k] in [0, num_neg)
    ranks = torch.minimum(ranks, (num_neg - 1).unsqueeze(1))
    return positives.nth_negative(users.unsqueeze(1), ranks)


class NegativeSampler:
    """Base class. ``needs_scores`` tells the module whether to pass a ``score_fn``;
    ``synthesizes`` marks samplers that build negative *embeddings* (:meth:`synthesize`)
    instead of returning item ids only."""

    needs_scores: bool = False
    synthesizes: bool = False

    def __init__(self, num_negatives: int = 1):
        if num_negatives < 1:
            raise ValueError(f"num_negatives must be >= 1, got {num_negatives}")
        self.num_negatives = num_negatives

    def sample(self, users: torch.Tensor, pos_items: torch.Tensor, positives: InteractionMatrix,
               score_fn: ScoreFn | None = None) -> torch.Tensor:
        raise NotImplementedError


class UniformSampler(NegativeSampler):
    """``K`` negatives per positive, uniform over the items the user has not interacted with."""

    def sample(self, users, pos_items, positives, score_fn=None):
        return sample_true_negatives(users, self.num_negatives, positives)


class DynamicNegativeSampler(NegativeSampler):
    """Dynamic negative sampling (DNS; Zhang et al., SIGIR 2013, "Optimizing top-n
    collaborative filtering via dynamic negative item sampling").

    Draws ``num_candidates`` true negatives per positive, scores them with the current
    model (the embeddings of the same training step, without gradient) and keeps the
    ``num_negatives`` highest-scored ones — the hardest.
    """

    needs_scores = True

    def __init__(self, num_negatives: int = 1, num_candidates: int = 16):
        super().__init__(num_negatives)
        if num_candidates < num_negatives:
            raise ValueError(f"num_candidates ({num_candidates}) must be >= num_negatives "
                             f"({num_negatives})")
        self.num_candidates = num_candidates

    def sample(self, users, pos_items, positives, score_fn=None):
        if score_fn is None:
            raise ValueError("DynamicNegativeSampler needs score_fn")
        candidates = sample_true_negatives(users, self.num_candidates, positives)  # [B, M]
        with torch.no_grad():
            scores = score_fn(users, candidates)  # [B, M]
        hardest = scores.topk(self.num_negatives, dim=1).indices  # [B, K]
        return candidates.gather(1, hardest)


def _replace_positives(users: torch.Tensor, items: torch.Tensor, positives: InteractionMatrix) -> torch.Tensor:
    """Replace entries of ``items [B, K]`` that are training positives of the row's user by
    uniform true negatives (exact, vectorised)."""
    bad = positives.contains(users.unsqueeze(1).expand_as(items), items)
    if bad.any():
        rows = torch.nonzero(bad, as_tuple=True)
        items = items.clone()
        items[rows] = sample_true_negatives(users[rows[0]], 1, positives)[:, 0]
    return items


class PopularitySampler(NegativeSampler):
    """Negatives drawn with probability proportional to ``(training degree + 1) ** alpha``
    (popular items are harder negatives; ``alpha = 0`` is uniform). Draws that hit a
    training positive are replaced by uniform true negatives, so the distribution over a
    user's negatives is the popularity one up to that (rare) correction.

    Args:
        num_negatives: K negatives per positive.
        alpha: popularity exponent.
    """

    def __init__(self, num_negatives: int = 1, alpha: float = 0.75):
        super().__init__(num_negatives)
        self.alpha = alpha

    def sample(self, users, pos_items, positives, score_fn=None):
        weights = torch.zeros(positives.num_items, device=users.device)
        weights[positives.catalogue] = (positives.item_degree()[positives.catalogue].float() + 1.0).pow(self.alpha)  # [I]
        draws = torch.multinomial(weights, len(users) * self.num_negatives, replacement=True)
        return _replace_positives(users, draws.view(len(users), self.num_negatives), positives)


class InBatchSampler(NegativeSampler):
    """In-batch negatives: row ``b`` takes the positives of rows ``b+1 .. b+K`` (mod B) of the
    same batch, which follows item popularity at no sampling cost. Entries that are training
    positives of the row's user are replaced by uniform true negatives."""

    def sample(self, users, pos_items, positives, score_fn=None):
        batch = len(users)
        offsets = torch.arange(1, self.num_negatives + 1, device=users.device)  # [K]
        idx = (torch.arange(batch, device=users.device).unsqueeze(1) + offsets) % batch  # [B, K]
        return _replace_positives(users, pos_items[idx], positives)


class MixingHardNegativeSampler(NegativeSampler):
    """Hard-negative synthesis in the spirit of MixGCF (Huang et al., KDD 2021).

    For each positive, ``num_candidates`` true negatives are drawn; *positive mixing* blends
    positive information into each candidate, ``e'_n = a e_p + (1 - a) e_n`` with
    ``a ~ U(0, max_mix)`` per candidate, using the embeddings of the same training step;
    the ``num_negatives`` synthetic candidates that score highest for the user are kept.

    Deviation from MixGCF: mixing and selection act on the final (layer-aggregated)
    embeddings rather than per propagation layer, so any encoder can use it. The selected
    candidates' item ids are returned too, so the L2 term regularises their ego embeddings.
    """

    needs_scores = True
    synthesizes = True

    def __init__(self, num_negatives: int = 1, num_candidates: int = 16, max_mix: float = 1.0):
        super().__init__(num_negatives)
        if num_candidates < num_negatives:
            raise ValueError(f"num_candidates ({num_candidates}) must be >= num_negatives ({num_negatives})")
        self.num_candidates = num_candidates
        self.max_mix = max_mix

    def sample(self, users, pos_items, positives, score_fn=None):
        return sample_true_negatives(users, self.num_negatives, positives)

    def synthesize(self, users: torch.Tensor, pos_items: torch.Tensor, positives: InteractionMatrix,
                   user_rows: torch.Tensor, item_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(negative embeddings [B, K, d], candidate ids [B, K])`` from the step's embeddings;
        gradients flow into the mixed embeddings as in MixGCF."""
        cand = sample_true_negatives(users, self.num_candidates, positives)  # [B, M]
        a = torch.rand(cand.shape, device=users.device).unsqueeze(2) * self.max_mix  # [B, M, 1]
        mixed = a * item_emb[pos_items].unsqueeze(1) + (1 - a) * item_emb[cand]  # [B, M, d]
        with torch.no_grad():
            scores = (user_rows.unsqueeze(1) * mixed).sum(-1)  # [B, M]
            hardest = scores.topk(self.num_negatives, dim=1).indices  # [B, K]
        picked = hardest.unsqueeze(2).expand(-1, -1, mixed.shape[2])
        return mixed.gather(1, picked), cand.gather(1, hardest)
