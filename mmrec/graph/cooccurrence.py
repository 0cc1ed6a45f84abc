"""Products with the binary interaction matrix: users' sums / means over their training items
(LGMRec, ItemKNNCBF) and user-user co-occurrence graphs (DRAGON, DualGNN), blockwise and sparse.

With ``R`` the binary ``U x I`` matrix of training interactions, the co-occurrence of two users
is the number of items both interacted with, :math:`C = R R^\\top` (diagonal removed). Each user
keeps its ``k`` users with the largest :math:`C_{uv} > 0`. ``C`` itself is never stored: a block
of ``b`` users is one sparse-dense product :math:`R\\,R_{b}^\\top` (``[U, b]``), reduced to its
top-``k`` before the next block, so memory is ``O(U b)`` whatever the number of users.
"""

from __future__ import annotations

import warnings

import torch

from mmrec.graph.bipartite import BipartiteGraph, block_spmm


def interaction_sum(graph: BipartiteGraph, x: torch.Tensor, mean: bool = False) -> torch.Tensor:
    """``[U, d]`` sums :math:`R\\,x` of item rows ``x [I, d]`` over each user's training items, or
    their means :math:`D_u^{-1} R\\,x` (``mean``; 0 for a user without training items).

    Computed from the graph's normalised block :math:`\\tilde R = D_u^{-1/2} R D_i^{-1/2}` as
    :math:`D_u^{1/2}\\,\\tilde R\\,(D_i^{1/2} x)` (mean: :math:`D_u^{-1/2}` in front), so the
    product and its backward are the graph's CSR products (no binary copy of ``R`` is kept).
    """
    ones = graph.edge_weight.new_ones(graph.edge_weight.shape)  # [E]
    du, di = graph.edge_sums(ones, "user"), graph.edge_sums(ones, "item")  # [U], [I]
    out = block_spmm(graph.norm_ui, graph.norm_iu, x * di.sqrt().unsqueeze(1))  # [U, d]
    scale = torch.where(du > 0, du.rsqrt(), torch.zeros_like(du)) if mean else du.sqrt()
    return out * scale.unsqueeze(1)


def user_cooccurrence_topk(users: torch.Tensor, items: torch.Tensor, num_users: int, num_items: int, k: int,
                           block: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Each user's ``k`` most co-occurring other users.

    Args:
        users, items: ``[E]`` the training (user, item) pairs (each pair once).
        num_users, num_items: sizes of the graph.
        k: neighbours kept per user.
        block: users per block (memory: a ``[U, block]`` dense tensor).

    Returns:
        ``(neighbours [U, k], counts [U, k])``: neighbour ids by decreasing count (``-1`` where a
        user co-occurs with fewer than ``k`` users) and their numbers of shared items (``0`` there).
        Ties among equal counts are broken by ``torch.topk``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    device = users.device
    neighbours = torch.full((num_users, k), -1, dtype=torch.long, device=device)
    counts = torch.zeros(num_users, k, device=device)
    k_eff = min(k, num_users - 1)
    if k_eff < 1 or users.numel() == 0:
        return neighbours, counts
    ones = torch.ones(users.numel(), device=device)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        # the training pairs are in range by construction: no invariant check (stated, so torch does not warn)
        r = torch.sparse_coo_tensor(torch.stack([users, items]), ones, (num_users, num_items),
                                    check_invariants=False).coalesce().to_sparse_csr()  # R [U, I]
    for start in range(0, num_users, block):
        stop = min(start + block, num_users)
        inside = (users >= start) & (users < stop)
        r_block_t = torch.zeros(num_items, stop - start, device=device)  # R_b^T [I, b]
        r_block_t[items[inside], users[inside] - start] = 1.0
        c = torch.sparse.mm(r, r_block_t).T.contiguous()  # [b, U]: shared items of block user j and every user
        rows = torch.arange(stop - start, device=device)
        c[rows, rows + start] = 0.0  # no self loops
        value, index = c.topk(k_eff, dim=1)  # [b, k_eff], by decreasing count
        found = value > 0
        neighbours[start:stop, :k_eff] = torch.where(found, index, torch.full_like(index, -1))
        counts[start:stop, :k_eff] = torch.where(found, value, torch.zeros_like(value))
    return neighbours, counts
