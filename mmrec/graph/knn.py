"""Item-item kNN graphs from content features, built once and frozen (FREEDOM, LATTICE).

For modality ``m`` with features :math:`f_i` (present items only), each item links to its
``k`` most cosine-similar other items: :math:`A^m_{ij} = 1` if ``j`` is among them. As in
FREEDOM, the graph is normalised with the row degree,
:math:`S^m = D^{-1/2} A^m D^{-1/2}`, and modalities are fused by a weighted sum
:math:`S = \\sum_m w_m S^m`. Items whose modality is missing get no edges in that
modality's graph (never a zero vector compared by cosine, which would give NaN).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F


def cosine_knn(values: torch.Tensor, mask: torch.Tensor, k: int, chunk: int | None = None,
               block_elements: int = 1 << 25) -> torch.Tensor:
    """``[I, k]`` indices of each item's ``k`` most cosine-similar *other* present items;
    ``-1`` where there is no neighbour (missing items, or fewer than ``k + 1`` present).

    Rows are compared ``chunk`` at a time against every present item; by default ``chunk`` keeps
    the ``[chunk, P]`` similarity block at ``block_elements`` floats (128 MB), so memory stays
    bounded at any catalogue size instead of growing with ``P``."""
    x = F.normalize(values.float(), dim=1)
    n = x.shape[0]
    out = torch.full((n, k), -1, dtype=torch.long, device=values.device)
    present = torch.nonzero(mask).squeeze(1)
    if present.numel() <= 1:
        return out
    k_eff = min(k, present.numel() - 1)
    if chunk is None:
        chunk = max(1, min(4096, block_elements // present.numel()))
    xp = x[present]
    for start in range(0, present.numel(), chunk):
        rows = present[start:start + chunk]
        sim = x[rows] @ xp.T  # [c, P]
        diag = torch.arange(len(rows), device=values.device)
        sim[diag, diag + start] = float("-inf")  # no self loops
        out[rows, :k_eff] = present[sim.topk(k_eff, dim=1).indices]
    return out


def knn_adjacency(values: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """Normalised kNN adjacency ``D^-1/2 A D^-1/2`` as a sparse COO ``[I, I]`` tensor."""
    n = values.shape[0]
    nbr = cosine_knn(values, mask, k)  # [I, k]
    rows = torch.arange(n, device=values.device).unsqueeze(1).expand_as(nbr)
    keep = nbr >= 0
    rows, cols = rows[keep], nbr[keep]
    deg = torch.bincount(rows, minlength=n).float()
    inv = torch.where(deg > 0, deg.rsqrt(), torch.zeros_like(deg))
    # indices built here are in range by construction: no invariant check (stated, so torch does not warn)
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), inv[rows] * inv[cols], (n, n),
                                   check_invariants=False).coalesce()


def fused_knn_graph(features, weights: dict[str, float], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``S = sum_m w_m S^m`` for the modalities in ``weights``; returns ``(S, S^T)`` as CSR."""
    total = None
    for name, w in weights.items():
        values, mask = features[name]
        adj = knn_adjacency(values, mask, k) * float(w)
        total = adj if total is None else (total + adj).coalesce()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return total.to_sparse_csr(), total.t().coalesce().to_sparse_csr()
