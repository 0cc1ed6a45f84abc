import pytest
import torch

from mmrec.core.interactions import InteractionMatrix
from mmrec.graph.bipartite import BipartiteGraph


def _graph(seed=0, users=9, items=7, nnz=25):
    g = torch.Generator().manual_seed(seed)
    u, i = torch.randint(0, users, (nnz,), generator=g), torch.randint(0, items, (nnz,), generator=g)
    return BipartiteGraph(InteractionMatrix(u, i, users, items))


def test_normalisation_matches_dense_reference():
    graph = _graph()
    a = graph.dense_adjacency()
    binary = (a > 0).float()
    deg = binary.sum(1)
    inv = torch.where(deg > 0, deg.pow(-0.5), torch.zeros_like(deg))
    assert torch.allclose(a, inv[:, None] * binary * inv[None, :], atol=1e-6)
    assert torch.allclose(a, a.T)


def test_propagate_and_its_gradient_match_dense():
    graph = _graph(1)
    a = graph.dense_adjacency()
    x = torch.randn(graph.num_nodes, 4, requires_grad=True)
    w = torch.randn(graph.num_nodes, 4)
    (graph.propagate(x) * w).sum().backward()
    x_ref = x.detach().clone().requires_grad_(True)
    ((a @ x_ref) * w).sum().backward()
    assert torch.allclose(graph.propagate(x.detach()), a @ x.detach(), atol=1e-6)
    assert torch.allclose(x.grad, x_ref.grad, atol=1e-6)


def test_graph_buffers_are_not_checkpointed():
    assert _graph().state_dict() == {}


def test_graph_requires_user_major_pairs(monkeypatch):
    """Edge order is used as the [U, I] CSR order (no permutation): other orders are refused."""
    train = InteractionMatrix([0, 0, 1, 2], [1, 3, 0, 2], 3, 4)
    users, items = train.pairs()
    assert BipartiteGraph(train).num_users == 3
    monkeypatch.setattr(InteractionMatrix, "pairs", lambda self: (users.flip(0), items.flip(0)))
    with pytest.raises(ValueError, match="user-major"):
        BipartiteGraph(train)
