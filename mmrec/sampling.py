"""Negative samplers for pairwise training.

Every sampler returns ``[B, K]`` item ids for a batch of ``B`` (user, positive item) pairs,
never an item the user has in the training set. All work is done with tensor operations
on the batch's device, without rejection loops (see :func:`sample_true_negatives`).
"""

from __future__ import annotations

from typing import Callable

import torch

from mmrec.data.interactions import InteractionMatrix

# score_fn(users [B], items [B, M]) -> scores [B, M], using the current step's embeddings.
ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def sample_true_negatives(users: torch.Tensor, k: int, positives: InteractionMatrix) -> torch.Tensor:
    """``[B, k]`` items drawn uniformly from each row's user's non-positive items.

    Exact and loop-free: draw a rank ``r`` among the user's ``I - deg(u)`` negatives and map
    it to the item id with :meth:`InteractionMatrix.nth_negative`.
    """
    num_neg = positives.num_items - positives.counts(users)  # [B]
    if (num_neg <= 0).any():
        bad = int(users[num_neg <= 0][0])
        raise ValueError(f"user {bad} has interacted with every item: no negative exists; drop "
                         f"such users from the dataset.")
    u = torch.rand(len(users), k, device=users.device, dtype=torch.float64)
    ranks = (u * num_neg.unsqueeze(1)).long()  # [B, k] in [0, num_neg)
    ranks = torch.minimum(ranks, (num_neg - 1).unsqueeze(1))
    return positives.nth_negative(users.unsqueeze(1), ranks)


class NegativeSampler:
    """Base class. ``needs_scores`` tells the module whether to pass a ``score_fn``."""

    needs_scores: bool = False

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
