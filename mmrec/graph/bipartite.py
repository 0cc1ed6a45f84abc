"""The user-item bipartite graph with symmetric normalisation, built once per dataset.

Nodes are users ``0..U-1`` followed by items ``U..U+I-1``. With ``R`` the binary
training interaction matrix,

.. math::
    A = \\begin{pmatrix} 0 & R \\\\ R^\\top & 0 \\end{pmatrix}, \\qquad
    \\hat A = D^{-1/2} A D^{-1/2},

stored as a ``torch.sparse_csr`` tensor (CSR is ~5x faster than COO for ``spmm`` on CPU
here). Because ``\\hat A`` is symmetric, the gradient of ``\\hat A X`` with respect to
``X`` is ``\\hat A G``: :func:`propagate` uses that instead of autograd's transpose of a
sparse matrix, which would be rebuilt at every backward pass.

Only training interactions enter the graph: validation and test edges never do.
"""

from __future__ import annotations

import torch
from torch import nn

from mmrec.data.interactions import InteractionMatrix


class _SymmetricSpMM(torch.autograd.Function):
    """``adj @ x`` for a symmetric constant sparse ``adj``; backward reuses ``adj``."""

    @staticmethod
    def forward(ctx, adj: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.adj = adj  # a constant: nothing to differentiate
        return torch.sparse.mm(adj, x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return None, torch.sparse.mm(ctx.adj, grad.contiguous())


def symmetric_spmm(adj: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return _SymmetricSpMM.apply(adj, x)


def normalized_bipartite_adjacency(train: InteractionMatrix) -> torch.Tensor:
    """``D^{-1/2} A D^{-1/2}`` as a sparse CSR ``[U+I, U+I]`` float32 tensor."""
    users, items = train.pairs()
    n_users, n = train.num_users, train.num_users + train.num_items
    row = torch.cat([users, items + n_users])  # [2E]
    col = torch.cat([items + n_users, users])  # [2E]
    deg = torch.bincount(row, minlength=n).float()
    inv_sqrt = deg.pow(-0.5)
    inv_sqrt[deg == 0] = 0.0  # isolated nodes (cold items, users without training data)
    weight = inv_sqrt[row] * inv_sqrt[col]
    adj = torch.sparse_coo_tensor(torch.stack([row, col]), weight, (n, n)).coalesce()
    return adj.to_sparse_csr()


class BipartiteGraph(nn.Module):
    """Normalised user-item graph (constant buffers only, never saved in checkpoints).

    Attributes:
        adj: ``[U+I, U+I]`` sparse CSR ``\\hat A``.
        edge_index: ``[2, E]`` training (user, item) pairs, item ids not offset — for models
            that re-weight or prune edges themselves.
    """

    adj: torch.Tensor
    edge_index: torch.Tensor

    def __init__(self, train: InteractionMatrix):
        super().__init__()
        self.num_users = train.num_users
        self.num_items = train.num_items
        self.register_buffer("adj", normalized_bipartite_adjacency(train), persistent=False)
        users, items = train.pairs()
        self.register_buffer("edge_index", torch.stack([users, items]), persistent=False)

    @property
    def num_nodes(self) -> int:
        return self.num_users + self.num_items

    def propagate(self, x: torch.Tensor) -> torch.Tensor:
        """One hop ``\\hat A x`` for node features ``x`` of shape ``[U+I, d]``."""
        return symmetric_spmm(self.adj, x)
