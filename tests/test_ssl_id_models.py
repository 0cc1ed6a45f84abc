"""SimGCL, XSimGCL, LayerGCN and the MF config: dense reference equations on a tiny graph, noise
views, contrastive terms, pruning, cold items, and short trainings on the small demo."""

from __future__ import annotations

import math

import pytest
import torch
from hydra.utils import instantiate

from conftest import compose_cfg, info_nce_by_hand, random_graph
from mmrec.graph.bipartite import BipartiteGraph
from mmrec.losses import bpr_loss
from mmrec.models import LightGCN
from mmrec.models.base import TrainingStep
from mmrec.models.layergcn import LayerGCN
from mmrec.models.simgcl import SimGCL, XSimGCL

U, I, D = 12, 15, 8
COLD = 14  # the item without training interactions in the `graph` fixture


@pytest.fixture
def graph():
    return random_graph(U, I, cold=COLD)


def _models():
    yield SimGCL(U, I, embedding_dim=D, num_layers=2, eps=0.1)
    yield XSimGCL(U, I, embedding_dim=D, num_layers=3, eps=0.2, cl_layer=1)
    yield LayerGCN(U, I, embedding_dim=D, num_layers=3, edge_dropout=0.3)


def _ego(model, graph):
    """``[U + I, d]`` layer-0 embeddings, cold rows zeroed (constants)."""
    items = model.item_embedding.weight * graph.item_sets.warm.unsqueeze(1)
    return torch.cat([model.user_embedding.weight, items]).detach()


def _dense(blocks, num_users: int, num_items: int) -> torch.Tensor:
    """``[U + I, U + I]`` dense adjacency of a pair of ``(R~, R~^T)`` blocks."""
    ui, iu = (b.to_dense() for b in blocks)
    top = torch.cat([torch.zeros(num_users, num_users), ui], dim=1)
    bottom = torch.cat([iu, torch.zeros(num_items, num_items)], dim=1)
    return torch.cat([top, bottom])


def _step(model, graph, users, items):
    user_emb, item_emb, views = model.training_forward(graph)
    return TrainingStep(users, items, user_emb, item_emb, views, graph, None)


# -- SimGCL / XSimGCL ---------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [SimGCL, XSimGCL])
def test_clean_forward_is_the_mean_of_layers_one_to_l_without_the_ego_layer(graph, cls):
    model = cls(U, I, embedding_dim=D, num_layers=2).eval()
    a = graph.dense_adjacency()
    e0 = _ego(model, graph)
    ref = (a @ e0 + a @ (a @ e0)) / 2  # SELFRec / the papers: layer 0 left out
    for _ in range(2):  # no noise: the same every call
        user_emb, item_emb = model(graph)
        assert torch.allclose(torch.cat([user_emb, item_emb]).detach(), ref, atol=1e-6)


def test_noisy_layer_adds_noise_of_length_eps_in_the_embedding_orthant(graph):
    model = SimGCL(U, I, embedding_dim=D, num_layers=3, eps=0.3)
    a = graph.dense_adjacency()
    prev = _ego(model, graph)
    for user_l, item_l in model.layers(graph, model.eps):
        layer = torch.cat([user_l, item_l]).detach()
        clean = a @ prev
        noise = layer - clean  # [U + I, d]
        assert (noise * torch.sign(clean) >= 0).all()  # same orthant as the propagated row
        assert torch.equal(noise[clean == 0], torch.zeros_like(noise[clean == 0]))
        full = (clean != 0).all(dim=1)  # rows with no zero entry get the whole length
        assert full.sum() > 0
        assert torch.allclose(noise[full].norm(dim=1), torch.full((int(full.sum()),), 0.3), atol=1e-5)
        prev = layer


def test_simgcl_bpr_tables_are_clean_and_views_are_two_noise_draws(graph):
    model = SimGCL(U, I, embedding_dim=D, num_layers=2, eps=0.1).train()
    user_emb, item_emb, views = model.training_forward(graph)
    clean_u, clean_i = model(graph)
    assert torch.equal(user_emb, clean_u) and torch.equal(item_emb, clean_i)
    (ua, ia), (ub, ib) = views["view_a"], views["view_b"]
    assert torch.equal(ib[COLD], torch.zeros(D))
    assert not torch.allclose(ua, ub) and not torch.allclose(ua, clean_u)
    assert torch.equal(ia[COLD], torch.zeros(D))  # cold: zero ID, no edges, no noise


def test_simgcl_contrastive_term_is_infonce_over_distinct_users_and_positives(graph):
    model = SimGCL(U, I, embedding_dim=D, num_layers=2, eps=0.1, temperature=0.2)
    users = torch.tensor([0, 3, 3, 5, 0])
    items = torch.tensor([[1, 2], [1, 6], [4, 2], [7, 9], [4, 3]])  # positives 1, 4, 7 (negatives not contrasted)
    step = _step(model, graph, users, items)
    cl = model.extra_losses(step)["cl"]
    (ua, ia), (ub, ib) = step.views["view_a"], step.views["view_b"]
    du, di = [0, 3, 5], [1, 4, 7]
    expected = (info_nce_by_hand(ua[du].detach(), ub[du].detach(), 0.2)
                + info_nce_by_hand(ia[di].detach(), ib[di].detach(), 0.2))
    assert cl.item() == pytest.approx(expected, rel=1e-5)
    with_repeats = (info_nce_by_hand(ua[users].detach(), ub[users].detach(), 0.2)
                    + info_nce_by_hand(ia[items[:, 0]].detach(), ib[items[:, 0]].detach(), 0.2))
    assert with_repeats != pytest.approx(expected, rel=1e-3)  # the distinct rows matter
    cl.backward()
    assert model.user_embedding.weight.grad.abs().sum() > 0


def test_xsimgcl_bpr_tables_are_the_noisy_layer_mean_and_the_view_is_layer_l_star(graph):
    model = XSimGCL(U, I, embedding_dim=D, num_layers=3, eps=0.2, cl_layer=2).train()
    torch.manual_seed(5)
    user_emb, item_emb, views = model.training_forward(graph)
    torch.manual_seed(5)
    layers = model.layers(graph, 0.2)  # the same noise draws
    assert torch.allclose(user_emb, sum(u for u, _ in layers) / 3)
    assert torch.allclose(item_emb, sum(i for _, i in layers) / 3)
    assert torch.allclose(views["cl_view"][0], layers[1][0]) and torch.allclose(views["cl_view"][1], layers[1][1])
    clean_u, _ = model(graph)
    assert not torch.allclose(user_emb, clean_u)  # training scores the noisy forward


def test_xsimgcl_l_star_zero_contrasts_with_the_ego_layer(graph):
    model = XSimGCL(U, I, embedding_dim=D, num_layers=2, cl_layer=0)
    _, _, views = model.training_forward(graph)
    assert torch.equal(views["cl_view"][0], model.user_embedding.weight)
    assert torch.equal(views["cl_view"][1], model.item_embedding.weight * graph.item_sets.warm.unsqueeze(1))
    with pytest.raises(ValueError):
        XSimGCL(U, I, num_layers=2, cl_layer=3)


def test_xsimgcl_contrastive_term_is_cross_layer_infonce(graph):
    model = XSimGCL(U, I, embedding_dim=D, num_layers=2, temperature=0.15)
    users, items = torch.tensor([2, 2, 7]), torch.tensor([[3, 0], [5, 0], [3, 1]])
    step = _step(model, graph, users, items)
    cl = model.extra_losses(step)["cl"]
    lu, li = step.views["cl_view"]
    expected = (info_nce_by_hand(step.user_emb[[2, 7]].detach(), lu[[2, 7]].detach(), 0.15)
                + info_nce_by_hand(step.item_emb[[3, 5]].detach(), li[[3, 5]].detach(), 0.15))
    assert cl.item() == pytest.approx(expected, rel=1e-5)


# -- LayerGCN -----------------------------------------------------------------------------------

def _layergcn_reference(model, graph, a: torch.Tensor) -> torch.Tensor:
    """Dense layer refinement: h_l = cos(A h_{l-1}, e0) * A h_{l-1} per node; sum of h_1..h_L."""
    e0 = _ego(model, graph)
    h, out = e0, torch.zeros_like(e0)
    for _ in range(model.num_layers):
        p = a @ h
        alpha = (p * e0).sum(1) / (p.norm(dim=1) * e0.norm(dim=1)).clamp_min(1e-8)  # [N]
        h = alpha.unsqueeze(1) * p
        out = out + h
    return out


def test_layergcn_eval_matches_dense_layer_refinement(graph):
    model = LayerGCN(U, I, embedding_dim=D, num_layers=3, edge_dropout=0.3).eval()
    user_emb, item_emb = model(graph)
    ref = _layergcn_reference(model, graph, graph.dense_adjacency())
    assert torch.allclose(torch.cat([user_emb, item_emb]).detach(), ref, atol=1e-6)
    again = model(graph)  # no pruning in evaluation
    assert torch.equal(again[0], user_emb)


def test_layergcn_trains_on_the_pruned_graph(graph):
    model = LayerGCN(U, I, embedding_dim=D, num_layers=2, edge_dropout=0.3).train()
    torch.manual_seed(3)
    blocks = model.pruned_blocks(graph)
    torch.manual_seed(3)
    user_emb, item_emb = model(graph)
    ref = _layergcn_reference(model, graph, _dense(blocks, U, I))
    assert torch.allclose(torch.cat([user_emb, item_emb]).detach(), ref, atol=1e-6)
    full = _layergcn_reference(model, graph, graph.dense_adjacency())
    assert not torch.allclose(ref, full, atol=1e-4)
    kept = blocks[0].to_dense() > 0
    assert int(kept.sum()) < graph.edge_weight.numel()
    assert not (kept & ~(graph.dense_adjacency()[:U, U:] > 0)).any()  # only training edges survive


def test_layergcn_without_dropout_trains_on_the_full_graph(graph):
    model = LayerGCN(U, I, embedding_dim=D, num_layers=2, edge_dropout=0.0).train()
    train_u, _ = model(graph)
    eval_u, _ = model.eval()(graph)
    assert torch.equal(train_u, eval_u)


def test_layergcn_mixes_degree_sensitive_and_uniform_pruning(graph, monkeypatch):
    import mmrec.models.layergcn as layergcn

    calls = {"degree": 0, "uniform": 0}
    monkeypatch.setattr(layergcn, "dropped_edge_blocks",
                        lambda g, rate: calls.__setitem__("uniform", calls["uniform"] + 1) or g.blocks)
    monkeypatch.setattr(BipartiteGraph, "degree_pruned_blocks",
                        lambda self, keep: calls.__setitem__("degree", calls["degree"] + 1) or self.blocks)
    torch.manual_seed(0)
    for share, check in ((0.0, lambda c: c["uniform"] == 0), (1.0, lambda c: c["degree"] == 0),
                         (0.5, lambda c: 60 < c["uniform"] < 140 and 60 < c["degree"] < 140)):
        calls.update(degree=0, uniform=0)
        model = LayerGCN(U, I, embedding_dim=D, edge_dropout=0.2, random_prune_share=share)
        for _ in range(200):
            model.pruned_blocks(graph)
        assert check(calls), (share, calls)


def test_layergcn_degree_pruning_keeps_the_share_of_edges(graph):
    model = LayerGCN(U, I, embedding_dim=D, edge_dropout=0.4, random_prune_share=0.0)
    ui, iu = model.pruned_blocks(graph)
    assert int((ui.to_dense() > 0).sum()) == round(0.6 * graph.edge_weight.numel())
    assert torch.allclose(ui.to_dense().T, iu.to_dense())


# -- shared: contract, cold items, gradients ----------------------------------------------------

def test_extra_losses_return_exactly_the_loss_terms_and_gradients_flow(graph):
    users, items = torch.tensor([0, 1, 2, 3]), torch.tensor([[0, 5], [2, 6], [3, 7], [4, 8]])
    for model in _models():
        model.train()
        step = _step(model, graph, users, items)
        terms = model.extra_losses(step)
        assert set(terms) == set(model.loss_terms), type(model).__name__
        assert set(model.loss_weights) <= set(model.loss_terms)
        scores = (step.user_emb[users].unsqueeze(1) * step.item_emb[items]).sum(-1)
        loss = bpr_loss(scores[:, 0], scores[:, 1:]) + sum(model.loss_weights[t] * v for t, v in terms.items())
        assert torch.isfinite(loss)
        loss.backward()
        for blocks in model.ego_embeddings():
            assert all(b.grad is not None and torch.isfinite(b.grad).all() and b.grad.abs().sum() > 0
                       for b in blocks), type(model).__name__
    assert SimGCL(U, I).loss_terms == ("cl",) and XSimGCL(U, I).loss_terms == ("cl",)
    assert LayerGCN(U, I).loss_terms == ()


def test_cold_items_score_zero_and_their_ids_are_never_trained(graph):
    assert not graph.item_sets.warm[COLD]
    users, items = torch.tensor([0, 1, 2, 3]), torch.tensor([[0, 5], [2, 6], [3, 7], [4, 8]])
    for model in _models():
        name = type(model).__name__
        model.eval()
        _, item_emb = model(graph)
        assert torch.equal(item_emb[COLD], torch.zeros(D)), name  # ID-only: "unknown"
        with torch.no_grad():
            model.item_embedding.weight[COLD] += 3.0  # its untrained ID never enters
        assert torch.equal(model(graph)[1][COLD], torch.zeros(D)), name
        model.train()
        step = _step(model, graph, users, items)
        assert torch.equal(step.item_emb[COLD], torch.zeros(D)), name
        scores = (step.user_emb[users].unsqueeze(1) * step.item_emb[items]).sum(-1)
        loss = bpr_loss(scores[:, 0], scores[:, 1:]) + sum(model.extra_losses(step).values())
        loss.backward()
        assert torch.equal(model.item_embedding.weight.grad[COLD], torch.zeros(D)), name


@pytest.mark.parametrize("kwargs", [dict(num_layers=0), dict(eps=-0.1), dict(temperature=0.0),
                                    dict(cl_weight=-1.0)])
def test_noise_models_reject_bad_arguments(kwargs):
    for cls in (SimGCL, XSimGCL):
        with pytest.raises(ValueError):
            cls(U, I, **kwargs)


@pytest.mark.parametrize("kwargs", [dict(num_layers=0), dict(edge_dropout=1.0), dict(random_prune_share=1.5)])
def test_layergcn_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        LayerGCN(U, I, **kwargs)


# -- configs and training -----------------------------------------------------------------------

def test_mf_config_is_lightgcn_without_propagation(graph):
    cfg = compose_cfg(["model=mf"])
    model = instantiate(cfg.model.encoder, num_users=U, num_items=I)
    assert type(model) is LightGCN and model.num_layers == 0
    user_emb, item_emb = model(graph)
    assert torch.equal(user_emb, model.user_embedding.weight)
    assert torch.equal(item_emb, model.item_embedding.weight * graph.item_sets.warm.unsqueeze(1))


@pytest.mark.parametrize("model", ["simgcl", "xsimgcl", "layergcn", "mf"])
def test_short_training_on_the_small_demo(make_cfg, model):
    from mmrec.train import train

    metrics, objects = train(make_cfg([f"model={model}", "trainer.max_epochs=2", "logger=none"]))
    assert 0.0 <= metrics["val/recall@20"] <= 1.0 and 0.0 <= metrics["test/ndcg@20"] <= 1.0
    losses = objects["module"].epoch_losses()
    if model in ("simgcl", "xsimgcl"):
        assert losses["train/cl"] > 0  # the contrastive term is computed and logged
    assert math.isfinite(losses["train/loss"])
