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


def test_embedding_noise_has_length_eps_and_keeps_the_sign():
    from mmrec.graph.views import embedding_noise

    torch.manual_seed(0)
    x = torch.randn(50, 8)
    noisy = embedding_noise(x, 0.1)
    delta = noisy - x
    assert torch.allclose(delta.norm(dim=1), torch.full((50,), 0.1), atol=1e-6)
    assert bool(((delta * x) >= 0).all())  # the noise lies in the embedding's own orthant


def test_noisy_layers_without_noise_are_plain_propagation():
    from mmrec.graph.views import noisy_layers

    graph = _graph(2)
    u, i = torch.randn(graph.num_users, 4), torch.randn(graph.num_items, 4)
    layers = noisy_layers(u, i, 2, graph.propagate_pair, eps=0.0)
    dense = graph.dense_adjacency()
    x1 = dense @ torch.cat([u, i])
    x2 = dense @ x1
    assert torch.allclose(torch.cat(layers[0]), x1, atol=1e-5) and torch.allclose(torch.cat(layers[1]), x2, atol=1e-5)
    torch.manual_seed(1)
    noisy = noisy_layers(u, i, 2, graph.propagate_pair, eps=0.2)
    length = (noisy[0][0] - layers[0][0]).norm(dim=1)
    isolated = layers[0][0].abs().sum(1) == 0  # sign(0) = 0: a user without edges gets no noise
    assert bool(isolated.any()) and torch.allclose(length[~isolated], torch.full_like(length[~isolated], 0.2), atol=1e-5)
    assert bool((length[isolated] == 0).all())


def test_dropped_edge_blocks_keep_a_share_and_renormalise():
    from mmrec.graph.bipartite import normalized_blocks
    from mmrec.graph.views import dropped_edge_blocks

    torch.manual_seed(0)
    ui, iu = dropped_edge_blocks(_graph(3), 0.5)
    kept = ui.to_sparse_coo().coalesce()
    total = _graph(3).edge_weight.numel()
    assert 0 < kept.values().numel() < total
    users, items = kept.indices()
    expected, _, _ = normalized_blocks(users, items, _graph(3).num_users, _graph(3).num_items)
    assert torch.allclose(kept.values(), expected.to_sparse_coo().coalesce().values())
    assert torch.equal(iu.to_dense(), ui.to_dense().T)
