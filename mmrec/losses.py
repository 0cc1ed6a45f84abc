"""Training objectives, fully vectorised."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bpr_loss(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> torch.Tensor:
    r"""Bayesian personalised ranking (Rendle et al., UAI 2009) with ``K`` negatives per positive.

    .. math:: \mathcal{L} = -\frac{1}{BK}\sum_{b,k} \log \sigma(\hat y_{b}^{+} - \hat y_{bk}^{-})

    Args:
        pos_scores: ``[B]`` scores of the positive items.
        neg_scores: ``[B, K]`` scores of the negatives (broadcast against the positive).
    """
    return -F.logsigmoid(pos_scores.unsqueeze(1) - neg_scores).mean()


def l2_batch(user_ego: torch.Tensor, pos_ego: torch.Tensor, neg_ego: torch.Tensor) -> torch.Tensor:
    r"""LightGCN's regulariser on the batch's layer-0 embeddings, scaled per example:

    .. math:: \frac{1}{2B}\left(\lVert E_u \rVert^2 + \lVert E_{i^+} \rVert^2
              + \frac{1}{K}\lVert E_{i^-} \rVert^2\right)

    with ``user_ego [B, d]``, ``pos_ego [B, d]``, ``neg_ego [B, K, d]``; the negatives are
    averaged over ``K`` so the weight means the same whatever ``K`` is.
    """
    batch, k = neg_ego.shape[0], neg_ego.shape[1]
    return 0.5 * (user_ego.pow(2).sum() + pos_ego.pow(2).sum() + neg_ego.pow(2).sum() / k) / batch
