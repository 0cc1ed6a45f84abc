"""The user-item bipartite graph with symmetric normalisation, built once per dataset.

With ``R`` the binary ``U x I`` matrix of *training* interactions, the LightGCN-style
normalised adjacency over ``U + I`` nodes is

.. math::
    \\hat A = D^{-1/2} \\begin{pmatrix} 0 & R \\\\ R^\\top & 0 \\end{pmatrix} D^{-1/2}
            = \\begin{pmatrix} 0 & \\tilde R \\\\ \\tilde R^\\top & 0 \\end{pmatrix},
    \\qquad \\tilde R_{ui} = \\frac{R_{ui}}{\\sqrt{d_u d_i}} .

It is stored as its two off-diagonal blocks, ``\\tilde R`` and ``\\tilde R^\\top``, each a
``torch.sparse_csr`` tensor: one hop is ``(h_u, h_i) -> (\\tilde R h_i, \\tilde R^\\top h_u)``.
Measured on Amazon Baby (2 CPU cores), the two block products take 3.4 ms against 8.2 ms
for one product with the full ``(U+I)^2`` CSR matrix and ~45 ms with COO. Because
``\\hat A`` is symmetric, the backward pass of each block product is the other block
(:class:`_BlockSpMM`), so no sparse transpose is ever built during training.

Only training interactions enter the graph: validation and test edges never do.
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch
from torch import nn

from mmrec.core.interactions import InteractionMatrix
from mmrec.core.items import ItemSets


class _BlockSpMM(torch.autograd.Function):
    """``a @ x`` for a constant sparse ``a`` whose transpose ``a_t`` is stored beside it."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, a_t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.a_t = a_t  # a constant: nothing to differentiate
        return torch.sparse.mm(a, x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return None, None, torch.sparse.mm(ctx.a_t, grad.contiguous())


def block_spmm(a: torch.Tensor, a_t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``a @ x`` (sparse x dense) whose gradient w.r.t. ``x`` is ``a_t @ grad``."""
    return _BlockSpMM.apply(a, a_t, x)


def layer_mean(h_user: torch.Tensor, h_item: torch.Tensor, num_layers: int,
               hop: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """LightGCN aggregation: the mean of layers ``0..num_layers`` of repeated ``hop``s,
    :math:`\\frac{1}{K+1}\\sum_{k=0}^{K} \\mathrm{hop}^k(h)`, for users and items at once."""
    sum_u, sum_i = h_user, h_item
    for _ in range(num_layers):
        h_user, h_item = hop(h_user, h_item)
        sum_u, sum_i = sum_u + h_user, sum_i + h_item
    scale = 1.0 / (num_layers + 1)
    return sum_u * scale, sum_i * scale


def _csr(row: torch.Tensor, col: torch.Tensor, value: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        coo = torch.sparse_coo_tensor(torch.stack([row, col]), value, shape, check_invariants=True)
        return coo.coalesce().to_sparse_csr()


def normalized_blocks(users: torch.Tensor, items: torch.Tensor, num_users: int, num_items: int
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(R~ [U, I] CSR, R~^T [I, U] CSR, weight [E])`` for the given (user, item) edges."""
    user_deg = torch.bincount(users, minlength=num_users).float()
    item_deg = torch.bincount(items, minlength=num_items).float()
    # Every endpoint of an edge has degree >= 1: no division by zero. Isolated nodes
    # (cold items) simply have no edges and propagate nothing.
    weight = user_deg[users].rsqrt() * item_deg[items].rsqrt()  # [E]
    return (_csr(users, items, weight, (num_users, num_items)),
            _csr(items, users, weight, (num_items, num_users)), weight)


class BipartiteGraph(nn.Module):
    """Normalised user-item training graph (constant buffers, never saved in checkpoints).

    Attributes:
        norm_ui: ``[U, I]`` sparse CSR :math:`\\tilde R`.
        norm_iu: ``[I, U]`` sparse CSR :math:`\\tilde R^\\top`.
        edge_index: ``[2, E]`` training (user, item) pairs (item ids not offset), for models
            that re-weight or prune edges themselves.
        edge_weight: ``[E]`` symmetric-normalisation weight of each edge.
        item_weight_sum: ``[I]`` :math:`\\sum_u \\tilde R_{ui}` (MMGCN: the bias its items receive).
        item_sets: the split's warm / cold items (:class:`~mmrec.core.items.ItemSets`; built
            from ``train`` when not given).
    """

    norm_ui: torch.Tensor
    norm_iu: torch.Tensor
    edge_index: torch.Tensor
    edge_weight: torch.Tensor
    item_weight_sum: torch.Tensor

    def __init__(self, train: InteractionMatrix, item_sets: ItemSets | None = None):
        super().__init__()
        self.num_users = train.num_users
        self.num_items = train.num_items
        users, items = train.pairs()
        norm_ui, norm_iu, weight = normalized_blocks(users, items, self.num_users, self.num_items)
        self.register_buffer("edge_index", torch.stack([users, items]), persistent=False)
        self.register_buffer("edge_weight", weight, persistent=False)
        self.register_buffer("norm_ui", norm_ui, persistent=False)
        self.register_buffer("norm_iu", norm_iu, persistent=False)
        self.item_sets = item_sets if item_sets is not None else ItemSets.from_training(items, self.num_items)
        if not torch.equal(self.item_sets.warm, torch.bincount(items, minlength=self.num_items) > 0):
            raise ValueError("item_sets.warm must be exactly the items with a training interaction in the graph")
        # The fixed pattern for propagation with learned edge values (GRCN): CSR structure of
        # [U, I] and [I, U]. Edges come user-major with ascending items (InteractionMatrix
        # order), which *is* the [U, I] CSR order: edge-ordered values are its CSR values as
        # they are; the [I, U] pattern keeps the permutation from edge order to its order.
        keys = users * self.num_items + items  # [E]
        if not bool((keys[1:] > keys[:-1]).all()):
            raise ValueError("training pairs must be user-major with ascending items (InteractionMatrix.pairs())")
        for name, rows, n_rows in (("ui", users, self.num_users), ("iu", items, self.num_items)):
            crow = torch.zeros(n_rows + 1, dtype=torch.long)
            crow[1:] = torch.bincount(rows, minlength=n_rows).cumsum(0)
            self.register_buffer(f"{name}_crow", crow, persistent=False)
        iu_order = torch.argsort(items * self.num_users + users)  # [E]: edge index of each [I, U] CSR slot
        self.register_buffer("iu_col", users[iu_order], persistent=False)
        self.register_buffer("iu_perm", iu_order, persistent=False)
        # sum_u R~_ui per item [I]: what a constant message of 1 from every user sums to
        self.register_buffer("item_weight_sum", torch.zeros(self.num_items).index_add_(0, items, weight),
                             persistent=False)

    @property
    def num_nodes(self) -> int:
        return self.num_users + self.num_items

    @property
    def blocks(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.norm_ui, self.norm_iu

    def propagate_pair(self, h_user: torch.Tensor, h_item: torch.Tensor,
                       blocks: tuple[torch.Tensor, torch.Tensor] | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """One hop: ``([U, d], [I, d]) -> (R~ h_item, R~^T h_user)``; ``blocks`` overrides
        the full graph (for example with a pruned one)."""
        ui, iu = blocks if blocks is not None else self.blocks
        return block_spmm(ui, iu, h_item), block_spmm(iu, ui, h_user)

    def propagate(self, x: torch.Tensor) -> torch.Tensor:
        """One hop ``\\hat A x`` for stacked node features ``x`` of shape ``[U+I, d]``."""
        h_user, h_item = self.propagate_pair(*x.split([self.num_users, self.num_items]))
        return torch.cat([h_user, h_item])

    def edge_sums(self, values: torch.Tensor, side: str) -> torch.Tensor:
        """Sum of edge-ordered ``values [E]`` over each user's (``side="user"``, ``[U]``) or
        each item's (``"item"``, ``[I]``) training edges; 0 for a node without edges."""
        index, n = (self.edge_index[0], self.num_users) if side == "user" else (self.edge_index[1], self.num_items)
        return torch.zeros(n, device=values.device, dtype=values.dtype).index_add_(0, index, values)

    def normalized_edge_values(self, weights: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
        """``w_e / sqrt(d_u d_i)`` for edge weights ``[E]``, with weighted degrees
        ``d_v = sum of the weights of v's edges``."""
        users, items = self.edge_index
        du, di = self.edge_sums(weights, "user"), self.edge_sums(weights, "item")  # [U], [I]
        return weights * (du.index_select(0, users) + eps).rsqrt() * (di.index_select(0, items) + eps).rsqrt()

    def _pattern(self, side: str, values: torch.Tensor | None = None) -> torch.Tensor:
        """The ``[U, I]`` (``side="ui"``) or ``[I, U]`` (``"iu"``) CSR matrix of the training
        edges carrying edge-ordered ``values [E]`` (zeros: the bare pattern)."""
        crow = getattr(self, f"{side}_crow")
        col = self.edge_index[1] if side == "ui" else self.iu_col  # edge order is the [U, I] CSR order
        shape = (self.num_users, self.num_items) if side == "ui" else (self.num_items, self.num_users)
        if values is None:
            vals = col.new_zeros(col.shape, dtype=torch.float32)
        else:
            vals = values if side == "ui" else values.index_select(0, self.iu_perm)  # 2.5x faster than [ ]
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            return torch.sparse_csr_tensor(crow, col, vals, shape, check_invariants=False)  # rows of a valid CSR

    def _edge_dot(self, a_user: torch.Tensor, b_item: torch.Tensor) -> torch.Tensor:
        """``[E]`` dot products ``<a_user[u_e], b_item[i_e]>`` in edge order, without
        materialising ``[E, d]`` gathers (sampled dense-dense product on the CSR pattern)."""
        pattern = self._pattern("ui").to(a_user.dtype)
        return torch.sparse.sampled_addmm(pattern, a_user, b_item.T, beta=0.0).values()  # [E], = edge order

    def edge_dot(self, a_user: torch.Tensor, b_item: torch.Tensor) -> torch.Tensor:
        """``[E]`` per-edge dot products ``<a_u, b_i>`` (differentiable in both; the backward
        is two sparse-dense products: no ``[E, d]`` tensor is ever built)."""
        return _EdgeDot.apply(a_user, b_item, self)

    def spmm_values(self, values: torch.Tensor, x: torch.Tensor, side: str) -> torch.Tensor:
        """``W x`` for the training-edge matrix ``W`` with learned ``values [E]``: ``side="ui"``
        gives ``[U, d]`` from item rows ``x``, ``"iu"`` gives ``[I, d]`` from user rows.
        Differentiable in ``values`` and ``x``."""
        return _EdgeValueSpMM.apply(values, x, self, side)

    def propagate_weighted(self, values: torch.Tensor, h_user: torch.Tensor, h_item: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        """One hop over the training edges with per-edge ``values [E]`` (differentiable in
        ``values`` too): ``(W h_item, W^T h_user)``."""
        return self.spmm_values(values, h_item, "ui"), self.spmm_values(values, h_user, "iu")

    def degree_pruned_blocks(self, keep_ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Degree-sensitive edge pruning (FREEDOM): keep ``keep_ratio`` of the edges, drawn
        without replacement with probability proportional to :math:`1/\\sqrt{d_u d_i}` (edges
        between high-degree nodes are dropped most), and re-normalise what is kept."""
        num_keep = max(1, int(round(keep_ratio * self.edge_weight.numel())))
        keep = torch.multinomial(self.edge_weight, num_keep, replacement=False)
        users, items = self.edge_index[:, keep]
        ui, iu, _ = normalized_blocks(users, items, self.num_users, self.num_items)
        return ui, iu

    def dense_adjacency(self) -> torch.Tensor:
        """``[U+I, U+I]`` dense :math:`\\hat A` (for tests and small graphs only)."""
        n_u = self.num_users
        out = torch.zeros(self.num_nodes, self.num_nodes, device=self.edge_weight.device)
        users, items = self.edge_index
        out[users, items + n_u] = self.edge_weight
        out[items + n_u, users] = self.edge_weight
        return out


class _EdgeDot(torch.autograd.Function):
    """``e -> <a[u_e], b[i_e]>``; backward: ``da = G b``, ``db = G^T a`` with ``G`` the edge
    matrix carrying the incoming gradient."""

    @staticmethod
    def forward(ctx, a_user, b_item, graph):  # type: ignore[override]
        ctx.save_for_backward(a_user, b_item)
        ctx.graph = graph
        return graph._edge_dot(a_user, b_item)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        a_user, b_item = ctx.saved_tensors
        graph = ctx.graph
        return (torch.sparse.mm(graph._pattern("ui", grad), b_item.contiguous()),
                torch.sparse.mm(graph._pattern("iu", grad), a_user.contiguous()), None)


class _EdgeValueSpMM(torch.autograd.Function):
    """``W x`` with learned edge values; the pattern is fixed (the training edges), its CSR
    structures and edge-to-CSR permutations precomputed by :class:`BipartiteGraph`, so a call
    only permutes the values. Backward: ``dx = W^T g`` and ``dw_e = <g[row_e], x[col_e]>``
    (a sampled product on the pattern, no ``[E, d]`` gather)."""

    @staticmethod
    def forward(ctx, values, x, graph, side):  # type: ignore[override]
        ctx.save_for_backward(values, x)
        ctx.graph, ctx.side = graph, side
        return torch.sparse.mm(graph._pattern(side, values), x)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        values, x = ctx.saved_tensors
        graph, side = ctx.graph, ctx.side
        grad = grad.contiguous()
        other = "iu" if side == "ui" else "ui"
        grad_x = torch.sparse.mm(graph._pattern(other, values), grad)
        grad_values = graph._edge_dot(grad, x) if side == "ui" else graph._edge_dot(x, grad)
        return grad_values, grad_x, None, None
