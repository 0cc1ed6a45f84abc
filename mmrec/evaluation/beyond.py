"""Beyond-accuracy metrics: pure functions of the top-k lists that were shown.

Every function takes

* ``top``: ``[num_users, max_k]`` item ids ranked for each evaluated user (training items
  already excluded, as for accuracy); ``-1`` marks an empty slot (an item that could not be
  ranked, e.g. a cold item for an ID-only model, is never shown);
* ``ks``: the cut-offs,

plus the item facts a metric needs, and returns one value per cut-off, ``[len(ks)]``
(float64). They describe the recommender as a whole (which items reach people, how popular,
how alike), so unlike the accuracy metrics they are not means of independent per-user values
that could be averaged over batches: they need every list at once.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from mmrec.evaluation.metrics import first_k_sums


def _slots(top: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``k`` slots of every list: ``(ids [U, k] with empty slots as 0, valid [U, k])``."""
    head = top[:, :k]
    valid = head >= 0
    return head.clamp_min(0), valid


def exposure(top: torch.Tensor, k: int, num_items: int) -> torch.Tensor:
    """``[num_items]`` how often each item is shown in the first ``k`` slots of all lists."""
    ids, valid = _slots(top, k)
    return torch.bincount(ids[valid], minlength=num_items)


def _per_user_mean(top: torch.Tensor, ks: Sequence[int], slot_value: torch.Tensor) -> torch.Tensor:
    """Mean over users of the mean ``slot_value [U, max_k]`` of each list's first ``k`` valid
    slots (users whose first ``k`` slots are all empty are left out)."""
    valid = (top >= 0).to(torch.float64)
    n = first_k_sums(valid, ks)  # [U, len(ks)]
    sums = first_k_sums(slot_value.to(torch.float64) * valid, ks)  # [U, len(ks)]
    has = n > 0
    per_user = torch.where(has, sums / n.clamp_min(1), torch.zeros_like(sums))
    return per_user.sum(0) / has.sum(0).clamp_min(1)  # [len(ks)]


def item_coverage(top: torch.Tensor, ks: Sequence[int], num_items: int,
                  items: torch.Tensor | None = None) -> torch.Tensor:
    """Catalogue coverage: distinct items shown in the first ``k`` slots / catalogue size
    (Ge et al. 2010, "Beyond accuracy"; RecBole's ``ItemCoverage``). ``items`` (``[I]`` bool)
    restricts both counts to a group, e.g. the share of cold items shown to anyone."""
    out = []
    for k in ks:
        shown = exposure(top, k, num_items) > 0  # [I]
        if items is None:
            out.append(shown.sum() / num_items)
        else:
            out.append((shown & items).sum() / items.sum().clamp_min(1))
    return torch.stack(out).to(torch.float64)


def gini_index(top: torch.Tensor, ks: Sequence[int], num_items: int) -> torch.Tensor:
    r"""Gini index of item exposure over the whole catalogue (unshown items count as 0):

    .. math:: G = \frac{\sum_{j=1}^{n} (2j - n - 1)\, c_{(j)}}{n \sum_j c_j}

    with :math:`c_{(j)}` the exposure counts in ascending order and :math:`n = |I|`
    (RecBole's ``GiniIndex``; Elliot's ``Gini``). 0: every item shown equally often; 1 - k/|I|:
    every user shown the same k items."""
    n = num_items
    weights = 2.0 * torch.arange(1, n + 1, dtype=torch.float64) - n - 1  # [n]
    out = []
    for k in ks:
        counts = torch.sort(exposure(top, k, n).to(torch.float64)).values  # [n] ascending
        total = counts.sum()
        out.append((weights.to(counts.device) * counts).sum() / (n * total) if total > 0 else counts.new_zeros(()))
    return torch.stack(out)


def shannon_entropy(top: torch.Tensor, ks: Sequence[int], num_items: int) -> torch.Tensor:
    r"""Normalised Shannon entropy of item exposure,
    :math:`-\sum_i p_i \log p_i / \log |I|` with :math:`p_i` item i's share of all shown slots
    (1: uniform over the whole catalogue; 0: one item shown everywhere). RecBole's
    ``ShannonEntropy`` instead divides the (natural-log) entropy by the number of distinct items
    shown, not by a logarithm, which favours showing few items: two items shown equally often
    score :math:`\ln 2 / 2 \approx 0.35`, a thousand shown equally often
    :math:`\ln 1000 / 1000 \approx 0.007`."""
    out = []
    for k in ks:
        counts = exposure(top, k, num_items).to(torch.float64)
        total = counts.sum()
        p = counts[counts > 0] / total.clamp_min(1)
        h = -(p * p.log()).sum()
        out.append(h / math.log(num_items) if num_items > 1 else h * 0)
    return torch.stack(out)


def average_popularity(top: torch.Tensor, ks: Sequence[int], item_degree: torch.Tensor) -> torch.Tensor:
    """Mean training degree (users who interacted with the item in training) of the shown items,
    per list, averaged over users (Abdollahpouri et al. 2019; RecBole's ``AveragePopularity``)."""
    return _per_user_mean(top, ks, item_degree[top.clamp_min(0)])


def short_head(item_degree: torch.Tensor, share: float = 0.8) -> torch.Tensor:
    """``[I]`` bool: the most popular items that together cover ``share`` of the training
    interactions (ties in degree broken by item id). The rest is the long tail."""
    order = torch.sort(item_degree, descending=True, stable=True).indices  # [I]
    covered = item_degree[order].cumsum(0).to(torch.float64)  # [I]
    # an item is in the head while the share covered *before* it is below `share`
    before = covered - item_degree[order]
    head = torch.zeros_like(item_degree, dtype=torch.bool)
    head[order[before < share * covered[-1]]] = True
    return head


def long_tail_share(top: torch.Tensor, ks: Sequence[int], long_tail: torch.Tensor) -> torch.Tensor:
    """APLT (Abdollahpouri et al. 2019): the share of each list's items that are in the long
    tail (``long_tail`` ``[I]`` bool: outside :func:`short_head`), averaged over users."""
    return _per_user_mean(top, ks, long_tail[top.clamp_min(0)])


def novelty(top: torch.Tensor, ks: Sequence[int], item_degree: torch.Tensor, num_users: int) -> torch.Tensor:
    r"""Mean self-information of the shown items, :math:`-\log_2(|U_i| / |U|)` with
    :math:`|U_i|` the training users of item i (Zhou et al. 2010; Elliot's ``EFD`` family),
    per list, averaged over users. An item without training users (cold) counts as one
    seen by a single user, :math:`\log_2 |U|`, the largest finite value."""
    info = -torch.log2(item_degree.clamp_min(1).to(torch.float64) / num_users)  # [I]
    return _per_user_mean(top, ks, info[top.clamp_min(0)])


def cold_exposure(top: torch.Tensor, ks: Sequence[int], cold: torch.Tensor) -> torch.Tensor:
    """The share of all shown slots given to cold items (``cold`` ``[I]`` bool: no training
    interaction): whether content actually brings new items to people."""
    out = []
    for k in ks:
        ids, valid = _slots(top, k)
        out.append((cold[ids] & valid).sum() / valid.sum().clamp_min(1))
    return torch.stack(out).to(torch.float64)


def intra_list_diversity(top: torch.Tensor, ks: Sequence[int], item_vectors: torch.Tensor,
                         block: int = 1024) -> torch.Tensor:
    r"""Intra-list diversity (Ziegler et al. 2005; RecBole / Elliot ``ILD``-style): the mean
    pairwise cosine distance :math:`1 - \cos(v_i, v_j)` over the pairs of each list, averaged
    over users with at least two shown items (0 when no list has two).

    With unit rows, the sum of the cosines over the ordered pairs ``i != j`` of a list is
    :math:`\lVert\sum_i v_i\rVert^2 - \sum_i \lVert v_i\rVert^2`, so no ``k x k`` Gram matrix
    and no ``[U, k, D]`` gather is built: the list sums are a sparse product of a ``block`` of
    users' list-membership rows with the item vectors, block by block (memory ``block x D``,
    whatever the number of users). ``item_vectors`` ``[I, D]`` are L2-normalised here; a zero
    row (an item with no content) has cosine 0 to everything (distance 1).
    """
    unit = item_vectors.float()
    norm = unit.norm(dim=1, keepdim=True)
    # [I, D + 1]: the unit vectors and their squared norms (1, or 0 for an empty row)
    stacked = torch.cat([unit / norm.clamp_min(1e-12), (norm > 0).to(unit.dtype)], dim=1)
    del unit, norm
    num_items = item_vectors.shape[0]
    totals = torch.zeros(len(ks), dtype=torch.float64)  # sum over users of their ILD, per cut-off
    counted = torch.zeros(len(ks), dtype=torch.float64)  # users with >= 2 shown items
    for start in range(0, top.shape[0], block):
        rows = top[start:start + block]
        for j, k in enumerate(ks):
            ids, valid = _slots(rows, k)
            n = valid.sum(1)  # [b] shown items
            crow = torch.zeros(len(rows) + 1, dtype=torch.long, device=top.device)
            crow[1:] = n.cumsum(0)
            cols = ids[valid].long()  # row-major: the CSR order (a list holds each item once)
            members = torch.sparse_csr_tensor(crow, cols, torch.ones(len(cols), dtype=stacked.dtype, device=top.device),
                                              (len(rows), num_items), check_invariants=False)  # [b, I] sparse
            sums = torch.sparse.mm(members, stacked)  # [b, D + 1]
            pair_cos = sums[:, :-1].pow(2).sum(1, dtype=torch.float64) - sums[:, -1].double()  # [b]
            n = n.to(torch.float64)
            has = n >= 2
            ild = 1.0 - pair_cos / (n * (n - 1)).clamp_min(1)
            totals[j] += torch.where(has, ild, torch.zeros_like(ild)).sum()
            counted[j] += has.sum()
    return totals / counted.clamp_min(1)
