"""iALS: implicit alternating least squares, fitted by the ``implicit`` package."""

from __future__ import annotations

import numpy as np
import torch

from mmrec.graph.bipartite import BipartiteGraph
from mmrec.models.base import GraphRecommender


class IALS(GraphRecommender):
    r"""iALS (Hu, Koren & Volinsky, "Collaborative Filtering for Implicit Feedback Datasets",
    ICDM 2008), the matrix-factorisation baseline that stays competitive when tuned (Rendle et
    al., "Revisiting the Performance of iALS on Item Recommendation Benchmarks", RecSys 2022).

    .. math::
        \min_{P, Q} \sum_{u, i} c_{ui} (p_{ui} - \mathbf e_u^\top \mathbf e_i)^2
        + \lambda \Big(\sum_u \|\mathbf e_u\|^2 + \sum_i \|\mathbf e_i\|^2\Big),
        \quad p_{ui} = [r_{ui} > 0], \quad c_{ui} = 1 + \alpha r_{ui}

    over all user-item pairs of the training split (``r_ui = 1`` for an interaction), solved by
    alternating least squares with the conjugate-gradient solver of the well-kept ``implicit``
    package (not hand-written here). It learns in closed-form sweeps, not by gradient steps:
    ``trainable = False``, and :meth:`fit` runs once when the run is built (training and export
    alike; with a seed the factors are the same). Scores are dot products; cold items (no
    training interaction) have no factors and are never recommended, as for every ID-only model.

    Args:
        num_users, num_items: numbers of users and items.
        factors: latent dimension :math:`d`.
        regularization: :math:`\lambda`.
        alpha: confidence weight :math:`\alpha` of an observed interaction.
        iterations: ALS sweeps (users, then items, per sweep).
        seed: seeds the initial factors (None: unseeded).
    """

    trainable = False

    def __init__(self, num_users: int, num_items: int, factors: int = 64, regularization: float = 0.01,
                 alpha: float = 1.0, iterations: int = 15, seed: int | None = 0):
        super().__init__()
        if factors < 1 or iterations < 1 or regularization < 0 or alpha <= 0:
            raise ValueError(f"iALS needs factors >= 1, iterations >= 1, regularization >= 0 and alpha > 0; got "
                             f"{factors}, {iterations}, {regularization}, {alpha}")
        self.num_users, self.num_items = num_users, num_items
        self.factors, self.regularization, self.alpha = factors, regularization, alpha
        self.iterations, self.seed = iterations, seed
        # fitted factors: constants of the model once fit() has run (not learned by gradients)
        self.register_buffer("user", torch.zeros(num_users, factors))  # [U, d]
        self.register_buffer("item", torch.zeros(num_items, factors))  # [I, d]

    def fit(self, graph: BipartiteGraph) -> None:
        """Fit the factors on the training interactions of ``graph`` (its ``edge_index``)."""
        import scipy.sparse as sp
        from implicit.cpu.als import AlternatingLeastSquares

        users, items = graph.edge_index.cpu().numpy()
        ones = np.ones(len(users), dtype=np.float32)
        user_items = sp.csr_matrix((ones, (users, items)), shape=(self.num_users, self.num_items))
        als = AlternatingLeastSquares(factors=self.factors, regularization=self.regularization, alpha=self.alpha,
                                      iterations=self.iterations, random_state=self.seed,
                                      num_threads=torch.get_num_threads(), calculate_training_loss=False)
        als.fit(user_items, show_progress=False)
        self.user.copy_(torch.from_numpy(np.asarray(als.user_factors, dtype=np.float32)))
        self.item.copy_(torch.from_numpy(np.asarray(als.item_factors, dtype=np.float32)))

    def forward(self, graph: BipartiteGraph, features=None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.user, self.item  # [U, d], [I, d]

    def ego_embeddings(self) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        return (), ()
