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
    averaged over ``K`` so the weight means the same whatever ``K`` is (``K = 0``: no term).
    """
    batch, k = neg_ego.shape[0], neg_ego.shape[1]
    neg = neg_ego.pow(2).sum() / k if k else neg_ego.new_zeros(())
    return 0.5 * (user_ego.pow(2).sum() + pos_ego.pow(2).sum() + neg) / batch


def sampled_softmax_loss(scores: torch.Tensor, log_q: torch.Tensor | None = None,
                         candidates: torch.Tensor | None = None) -> torch.Tensor:
    r"""Sampled softmax over a shared candidate set (in-batch negatives, Yi et al., RecSys 2019),
    with the logQ correction of the candidates' sampling probabilities:

    .. math:: \mathcal{L} = -\frac1B \sum_b \log
              \frac{e^{s_{bb} - \log q_b}}{\sum_{j} e^{s_{bj} - \log q_j}}

    Args:
        scores: ``[B, N]`` scores (already divided by the temperature) of every row's user
            against the ``N >= B`` candidates; row ``b``'s positive is candidate ``b``.
        log_q: ``[N]`` log of each candidate's (expected) frequency among the candidates
            (``None``: no correction). Popular items appear as negatives more often than
            they would under a uniform draw; subtracting :math:`\log q_j` removes that bias.
        candidates: ``[N]`` item ids of the candidates: another row's copy of a row's own
            positive item is not a negative for it (an "accidental hit") and is left out.
    """
    batch = scores.shape[0]
    logits = scores if log_q is None else scores - log_q.unsqueeze(0)  # [B, N]
    if candidates is not None:
        same = candidates.unsqueeze(0) == candidates[:batch].unsqueeze(1)  # [B, N]
        same[:, :batch].fill_diagonal_(False)  # the row's own positive stays
        logits = logits.masked_fill(same, float("-inf"))
    return F.cross_entropy(logits, torch.arange(batch, device=scores.device))


def full_softmax_loss(hidden: torch.Tensor, item_emb: torch.Tensor, targets: torch.Tensor,
                      allowed: torch.Tensor | None = None) -> torch.Tensor:
    r"""Cross-entropy over the whole catalogue (SASRec+ of Klenitskiy & Vasilev 2023; BERT4Rec):

    .. math:: \mathcal{L} = -\frac1N \sum_n \log \frac{e^{h_n^\top e_{t_n}}}{\sum_{i \in \mathcal{C}} e^{h_n^\top e_i}}

    Args:
        hidden: ``[N, d]`` the representations of the N predicted positions.
        item_emb: ``[I, d]`` item representations (output layer tied to them).
        targets: ``[N]`` the item at each position.
        allowed: ``[I]`` bool, the catalogue :math:`\mathcal C` (cold items are never shown to a
            model in training, not even as negatives); ``None``: every item.
    """
    logits = hidden @ item_emb.T  # [N, I]
    if allowed is not None:
        logits = logits.masked_fill(~allowed.unsqueeze(0), float("-inf"))
    return F.cross_entropy(logits, targets)


def bce_loss(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> torch.Tensor:
    r"""Binary cross-entropy with sampled negatives (SASRec as published):
    :math:`-\log\sigma(s^+) - \frac1K\sum_k \log(1 - \sigma(s^-_k))`, averaged.

    Args:
        pos_scores: ``[N]``; neg_scores: ``[N, K]``.
    """
    return (-F.logsigmoid(pos_scores) - F.logsigmoid(-neg_scores).mean(dim=1)).mean()


# -- self-supervised objectives -------------------------------------------------------------------

def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    r"""InfoNCE between two views of the same ``N`` nodes, the other nodes of the batch as negatives
    (SGL, Wu et al. 2021; SimGCL / XSimGCL, Yu et al. 2022 / 2023):

    .. math:: \mathcal{L} = -\frac1N \sum_n \log
              \frac{e^{s(a_n, b_n)/\tau}}{\sum_{m} e^{s(a_n, b_m)/\tau}}, \qquad
              s(x, y) = \frac{x^\top y}{\lVert x\rVert \lVert y\rVert}

    One ``[N, N]`` product and a ``logsumexp`` (cross-entropy) for all pairs at once.

    Args:
        a, b: ``[N, d]`` the two views (row ``n`` of each is the same node).
        temperature: :math:`\tau > 0`.
    """
    a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    logits = a @ b.T / temperature  # [N, N]
    return F.cross_entropy(logits, torch.arange(len(a), device=a.device))


def cosine_alignment(online: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    r"""Negative-free alignment (BYOL, Grill et al. 2020; BM3, Zhou et al. 2023): one minus the
    mean cosine similarity of each row with its target, the target treated as a constant:

    .. math:: \mathcal{L} = 1 - \frac1N\sum_n \frac{o_n^\top \mathrm{sg}(t_n)}{\lVert o_n\rVert\,\lVert t_n\rVert}

    Args:
        online: ``[N, d]`` the predicted (online) view; gradients flow into it.
        target: ``[N, d]`` the target view (detached here: the stop-gradient of bootstrapping).
    """
    return 1.0 - F.cosine_similarity(online, target.detach(), dim=-1).mean()


def table_norm_loss(*tables: torch.Tensor) -> torch.Tensor:
    r"""MMRec's ``EmbLoss`` (BM3's regulariser): the sum of the Frobenius norms (not squared) of
    whole representation tables, divided by the number of rows of the last one:

    .. math:: \mathcal{L} = \frac{1}{N_{last}} \sum_t \lVert T_t \rVert_F

    Args:
        tables: ``[N_t, d]`` tables (e.g. all users' and all items' propagated representations).
    """
    if not tables:
        raise ValueError("table_norm_loss needs at least one table")
    return sum(t.norm() for t in tables) / tables[-1].shape[0]
