"""Graph views for self-supervised objectives: perturbed embeddings and perturbed graphs.

A *view* is a second (randomly perturbed) encoding of the same nodes; a contrastive objective
(:func:`mmrec.losses.info_nce`) pulls a node's views together and pushes the batch's other
nodes away. Views are drawn in training steps only, from the run's seeded generator.

* :func:`embedding_noise`: SimGCL / XSimGCL's uniform noise of fixed length on the same sign
  (orthant) as the embedding, added at every propagation layer (:func:`noisy_layers`).
* :func:`dropped_edge_blocks`: uniform edge dropout (SGL's ED), re-normalised.
* Degree-sensitive edge pruning (FREEDOM, LayerGCN) is
  :meth:`mmrec.graph.bipartite.BipartiteGraph.degree_pruned_blocks`.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from mmrec.graph.bipartite import BipartiteGraph, normalized_blocks


def embedding_noise(x: torch.Tensor, eps: float) -> torch.Tensor:
    r"""``x`` plus SimGCL's random noise (Yu et al. 2022, Eq. 7):

    .. math:: \Delta = \epsilon \cdot \mathrm{sign}(x) \odot \frac{\bar\Delta}{\lVert\bar\Delta\rVert_2},
              \quad \bar\Delta \sim U(0, 1)^d

    a vector of length :math:`\epsilon` per row, in the orthant of the row itself, so that the
    perturbation rotates the embedding by a small angle and never flips it.
    """
    noise = F.normalize(torch.rand_like(x), dim=-1)
    return x + torch.sign(x) * noise * eps


def noisy_layers(h_user: torch.Tensor, h_item: torch.Tensor, num_layers: int,
                 hop: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]], eps: float
                 ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Layers ``1..num_layers`` of LightGCN propagation with :func:`embedding_noise` added after
    every hop (``eps = 0``: plain propagation): ``[(users_l [U, d], items_l [I, d]), ...]``. The
    layer-0 embeddings are not perturbed (SimGCL, XSimGCL)."""
    layers = []
    for _ in range(num_layers):
        h_user, h_item = hop(h_user, h_item)
        if eps > 0:
            h_user, h_item = embedding_noise(h_user, eps), embedding_noise(h_item, eps)
        layers.append((h_user, h_item))
    return layers


def dropped_edge_blocks(graph: BipartiteGraph, drop_rate: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The training graph with each edge dropped independently with probability ``drop_rate``
    and the rest re-normalised by their new degrees (SGL's edge dropout): ``(R~ [U, I], R~^T)``."""
    users, items = graph.edge_index
    keep = torch.rand(users.shape, device=users.device) >= drop_rate
    ui, iu, _ = normalized_blocks(users[keep], items[keep], graph.num_users, graph.num_items)
    return ui, iu
