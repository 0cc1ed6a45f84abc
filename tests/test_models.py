"""Encoders on tiny random graphs: shapes, gradients, content use, model-specific invariants."""

from functools import partial

import pytest
import torch
import torch.nn.functional as F

from mmrec.core.interactions import InteractionMatrix
from mmrec.features.featureset import FeatureSet
from mmrec.fusion import AttentionFusion, ConcatFusion, GatedFusion, GraphSumFusion, LateFusion
from mmrec.graph.bipartite import BipartiteGraph
from mmrec.graph.knn import cosine_knn, fused_knn_graph
from mmrec.models import FREEDOM, GRCN, LATTICE, MMGCN, VBPR, LightGCN
from mmrec.models.ops import normalize_rows
from mmrec.models.base import TrainingStep

U, I, D = 12, 15, 8


@pytest.fixture
def graph():
    g = torch.Generator().manual_seed(0)
    keys = torch.randperm(U * I, generator=g)[:50]
    return BipartiteGraph(InteractionMatrix(keys // I, keys % I, U, I))


@pytest.fixture
def features():
    g = torch.Generator().manual_seed(1)
    mask_img = torch.ones(I, dtype=torch.bool)
    mask_img[[2, 5]] = False  # two items without an image
    return FeatureSet({"image": (torch.randn(I, 6, generator=g) * mask_img[:, None], mask_img),
                       "text": (torch.randn(I, 5, generator=g), torch.ones(I, dtype=torch.bool))})


def _models(features):
    yield LightGCN(U, I, embedding_dim=D, num_layers=2)
    for fusion in (ConcatFusion, AttentionFusion, GatedFusion, LateFusion):
        yield VBPR(U, I, features, partial(fusion), embedding_dim=D)
    yield MMGCN(U, I, features, partial(LateFusion), embedding_dim=D, num_layers=2)
    yield MMGCN(U, I, features, partial(LateFusion), embedding_dim=D, num_layers=1, concat=True)
    yield FREEDOM(U, I, features, partial(GraphSumFusion, weights={"image": 0.1, "text": 0.9}),
                  embedding_dim=D, knn_k=3, edge_dropout=0.5)
    yield GRCN(U, I, features, partial(LateFusion), embedding_dim=D, num_layers=2)
    yield LATTICE(U, I, features, partial(GraphSumFusion), embedding_dim=D, knn_k=3)


def test_shapes_and_gradients(graph, features):
    for model in _models(features):
        model.train()
        user_emb, item_emb = model(graph, features)
        assert user_emb.shape[0] == U and item_emb.shape[0] == I
        assert user_emb.shape[1] == item_emb.shape[1]
        scores = model.score_all(user_emb, item_emb)
        assert scores.shape == (U, I) and torch.isfinite(scores).all()
        users, items = torch.arange(4), torch.randint(0, I, (4, 3))
        loss = scores.sum()
        step = TrainingStep(users, items, user_emb, item_emb, {}, graph, features)
        terms = model.extra_losses(step)
        assert set(terms) == set(model.loss_terms), type(model).__name__
        loss = loss + sum(model.loss_weights.get(name, 1.0) * term for name, term in terms.items())
        loss.backward()
        trained = [n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
        assert trained, type(model).__name__
        for name, blocks, rows in zip(("user", "item"), model.ego_embeddings(), (U, I)):
            assert blocks and all(b.requires_grad and b.shape[0] == rows for b in blocks), (type(model).__name__, name)
        assert model.state_dict(), "learned weights must be parameters"


def test_content_models_score_cold_items_from_content(graph, features):
    # Item 14 has no interaction at all; changing its features must change its embedding.
    cold = graph.edge_index[1] != 14
    cold_graph = BipartiteGraph(InteractionMatrix(graph.edge_index[0][cold], graph.edge_index[1][cold], U, I))
    for model in list(_models(features))[1:]:
        if isinstance(model, FREEDOM):
            continue  # content enters FREEDOM through its frozen kNN graph: tested below
        if getattr(model, "cold", None) is not None and isinstance(model, MMGCN):
            continue  # MMGCN's cold items take their content neighbours' representation: tested below
        model.eval()
        _, before = model(cold_graph, features)
        img, mask = features["image"]
        img2 = img.clone()
        img2[14] += 5.0
        _, after = model(cold_graph, FeatureSet({"image": (img2, mask), "text": features["text"]}))
        assert not torch.allclose(before[14], after[14]), type(model).__name__


def test_untrained_id_embedding_of_a_cold_item_is_not_scored(graph, features):
    # Item 14 has no training interaction: its own ID embedding is never trained, so it must
    # not enter its representation (warm items' must).
    keep = graph.edge_index[1] != 14
    cold_graph = BipartiteGraph(InteractionMatrix(graph.edge_index[0][keep], graph.edge_index[1][keep], U, I))
    warm = int(cold_graph.edge_index[1][0])
    assert not cold_graph.item_sets.warm[14] and cold_graph.item_sets.warm[warm]
    for model in _models(features):
        model.eval()
        name = type(model).__name__
        with torch.no_grad():
            _, before = model(cold_graph, features)
            ids = model.ego_embeddings()[1][0]
            ids[14] += 3.0
            _, after = model(cold_graph, features)
            assert torch.allclose(before[14], after[14]), name
            ids[warm] += 3.0
            _, after_warm = model(cold_graph, features)
            assert not torch.allclose(after[warm], after_warm[warm]), name


def test_lightgcn_zero_layers_is_matrix_factorisation(graph):
    model = LightGCN(U, I, embedding_dim=D, num_layers=0)
    user_emb, item_emb = model(graph)
    assert torch.equal(user_emb, model.user_embedding.weight)


def test_lightgcn_matches_dense_propagation(graph):
    model = LightGCN(U, I, embedding_dim=D, num_layers=2)
    a = graph.dense_adjacency()
    e0 = torch.cat([model.user_embedding.weight, model.item_embedding.weight]).detach()
    ref = (e0 + a @ e0 + a @ (a @ e0)) / 3
    user_emb, item_emb = model(graph)
    assert torch.allclose(torch.cat([user_emb, item_emb]).detach(), ref, atol=1e-6)


@pytest.mark.parametrize("fusion_cls", [AttentionFusion, GatedFusion, ConcatFusion])
def test_missing_modality_uses_learned_vector_not_zeros(features, fusion_cls):
    fusion = fusion_cls(features.dims, dim=D)
    h, mask = fusion.projector(features)
    assert torch.equal(h[0, 2], fusion.projector.missing["image"].detach()) or h[0, 2].requires_grad
    assert torch.allclose(h[0, 2], fusion.projector.missing["image"])
    # Changing a missing item's (ignored) raw values changes nothing.
    img, m = features["image"]
    img2 = img.clone()
    img2[2] = 100.0
    out1 = fusion(features)
    out2 = fusion(FeatureSet({"image": (img2, m), "text": features["text"]}))
    assert torch.allclose(out1[2], out2[2])


def test_attention_gives_zero_weight_to_missing_modality(features):
    fusion = AttentionFusion(features.dims, dim=D)
    h, mask = fusion.projector(features)
    w = fusion.weights(h, mask)  # [M, I]
    assert torch.allclose(w.sum(0), torch.ones(I))
    assert (w[0, [2, 5]] == 0).all() and (w[1, [2, 5]] == 1).all()


def test_late_fusion_is_weighted_sum_of_modality_scores():
    fusion = LateFusion({"a": 3, "b": 4}, dim=D, learn_weights=False, weights={"a": 0.25, "b": 0.75})
    u = [torch.randn(5, D), torch.randn(5, D)]
    i = [torch.randn(7, D), torch.randn(7, D)]
    users, items = fusion.combine(u, i)
    expected = 0.25 * u[0] @ i[0].T + 0.75 * u[1] @ i[1].T
    assert torch.allclose(users @ items.T, expected, atol=1e-5)


@pytest.mark.parametrize("block", [{"chunk": 4}, {"block_elements": 1}, {}])  # 4 rows; 1 row (bounded block); default
def test_knn_matches_brute_force(features, block):
    values, mask = features["image"]
    nbr = cosine_knn(values, mask, k=3, **block)
    x = torch.nn.functional.normalize(values, dim=1)
    present = torch.nonzero(mask).squeeze(1).tolist()
    for i in range(I):
        if not mask[i]:
            assert (nbr[i] == -1).all()
            continue
        sims = sorted(((float(x[i] @ x[j]), j) for j in present if j != i), reverse=True)[:3]
        assert set(nbr[i].tolist()) == {j for _, j in sims}


def test_fused_knn_graph_is_weighted_sum(features):
    s, s_t = fused_knn_graph(features, {"image": 0.1, "text": 0.9}, k=3)
    dense = s.to_dense()
    assert torch.allclose(dense.T, s_t.to_dense())
    assert (dense[[2, 5]].sum(1) > 0).all()  # items without image still have text neighbours
    img_only, _ = fused_knn_graph(features, {"image": 1.0}, k=3)
    assert img_only.to_dense()[[2, 5]].abs().sum() == 0  # no image edges for missing images


def test_degree_pruning_keeps_share_of_existing_edges(graph):
    torch.manual_seed(0)
    ui, iu = graph.degree_pruned_blocks(0.4)
    kept = ui.to_dense() > 0
    assert int(kept.sum()) == round(0.4 * graph.edge_weight.numel())
    full = torch.zeros(U, I, dtype=torch.bool)
    full[graph.edge_index[0], graph.edge_index[1]] = True
    assert not (kept & ~full).any()
    assert torch.allclose(ui.to_dense().T, iu.to_dense())


def test_freedom_prunes_only_in_training(graph, features):
    model = FREEDOM(U, I, features, partial(GraphSumFusion), embedding_dim=D, knn_k=3, edge_dropout=0.5)
    model.eval()
    a1, a2 = model(graph, features), model(graph, features)
    assert torch.equal(a1[0], a2[0])
    model.train()
    torch.manual_seed(0)
    b1 = model(graph, features)
    torch.manual_seed(1)
    b2 = model(graph, features)
    assert not torch.equal(b1[0], b2[0])


def test_freedom_cold_item_gets_its_content_neighbours(graph, features):
    keep = graph.edge_index[1] != 14
    cold_graph = BipartiteGraph(InteractionMatrix(graph.edge_index[0][keep], graph.edge_index[1][keep], U, I))
    model = FREEDOM(U, I, features, partial(GraphSumFusion), embedding_dim=D, knn_k=3,
                    num_ui_layers=2, edge_dropout=0.5, cold_neighbours=0).eval()
    _, item_emb = model(cold_graph, features)
    ego = model.item_embedding.weight
    neighbours = model.ii_adj.to_dense()[14]
    assert (neighbours > 0).sum() >= 3
    # No user-item edges: the LightGCN part is 0 (its own ID is untrained; with
    # cold_neighbours > 0 it is estimated, see the brute-force test), the item-item part is
    # its content neighbours' (trained) IDs.
    expected = neighbours @ ego
    assert torch.allclose(item_emb[14], expected, atol=1e-6)


def test_grcn_prunes_and_down_weights_by_affinity(graph, features):
    # No routing: random prototypes disagree with some items, so both signs of affinity occur.
    model = GRCN(U, I, features, partial(LateFusion), embedding_dim=D, num_layers=1, routing_iters=0)
    p, h, w = model.edge_weights(graph, features)
    users, items = graph.edge_index
    affinity = (p[:, users] * h[:, items]).sum(2).max(0).values.detach()
    assert (affinity <= 0).any() and (affinity > 0).any()  # both kinds occur at random init
    assert (w[affinity <= 0] == 0).all()  # pruned
    assert torch.allclose(w[affinity > 0], affinity[affinity > 0])  # down-weighted by affinity
    # A pruned edge carries no message: the refined adjacency has 0 there.
    values = graph.normalized_edge_values(w.detach())
    out_u, _ = graph.propagate_weighted(values, torch.zeros(U, I), torch.eye(I))  # [U, I] = refined matrix
    dense = torch.zeros(U, I)
    dense[users, items] = values
    assert torch.allclose(out_u, dense, atol=1e-6)
    assert (out_u[users[affinity <= 0], items[affinity <= 0]] == 0).all()


def test_weighted_propagation_gradcheck(graph):
    w = torch.rand(graph.edge_weight.numel(), dtype=torch.float64, requires_grad=True)
    hu = torch.randn(U, 3, dtype=torch.float64, requires_grad=True)
    hi = torch.randn(I, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: graph.propagate_weighted(a, b, c), (w, hu, hi))


def test_lattice_learned_graph_matches_brute_force_and_trains_projections(graph, features):
    torch.manual_seed(0)
    model = LATTICE(U, I, features, partial(GraphSumFusion), embedding_dim=D, knn_k=3, lambda_coeff=0.5)
    with torch.no_grad():
        model.proj["image"].weight.add_(torch.randn_like(model.proj["image"].weight))  # W changed after the
    before = model.learned_nbr_image.clone()                                            # last refresh
    model.refresh(features)
    values, mask = features["image"]
    h = torch.nn.functional.normalize(model.proj["image"](values), dim=1)
    sim = h @ h.T
    sim.fill_diagonal_(float("-inf"))
    sim[:, ~mask] = float("-inf")
    for i in torch.nonzero(mask).squeeze(1).tolist():  # brute-force kNN over present items
        assert set(model.learned_nbr_image[i].tolist()) == set(sim[i].topk(3).indices.tolist())
    assert (model.learned_nbr_image[~mask] == -1).all()  # missing image: no edges in that graph
    assert not torch.equal(before, model.learned_nbr_image)
    user_emb, item_emb = model(graph, features)
    (item_emb.sum() + user_emb.sum()).backward()
    assert model.proj["image"].weight.grad.abs().sum() > 0 and model.modality_logits.grad is not None


def test_lattice_refresh_is_called_once_per_training_epoch(make_cfg):
    from mmrec.train import train

    calls = []
    original = LATTICE.refresh
    LATTICE.refresh = lambda self, features=None: (calls.append(1), original(self, features))[1]
    try:
        train(make_cfg(["model=lattice", "trainer.max_epochs=2", "logger=none", "callbacks=none", "test=false"]))
    finally:
        LATTICE.refresh = original
    assert len(calls) == 1 + 2  # construction + one per epoch


def test_edge_dot_matches_gather_and_gradcheck(graph):
    users, items = graph.edge_index
    a = torch.randn(U, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(I, 3, dtype=torch.float64, requires_grad=True)
    assert torch.allclose(graph.edge_dot(a, b), (a[users] * b[items]).sum(1))
    assert torch.autograd.gradcheck(lambda x, y: graph.edge_dot(x, y), (a, b))
    w = torch.rand(users.numel(), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v, x: graph.spmm_values(v, x, "iu"), (w, a))


def test_cold_item_neighbours_match_brute_force(graph, features):
    from mmrec.models.base import ColdItemNeighbours

    keep = graph.edge_index[1] % 4 != 0  # a quarter of the items lose all their edges
    cold_graph = BipartiteGraph(InteractionMatrix(graph.edge_index[0][keep], graph.edge_index[1][keep], U, I))
    known = cold_graph.item_sets.warm
    assert (~known).sum() >= 3
    module = ColdItemNeighbours(features, k=3).eval()  # evaluation: training leaves rows as they are
    # the models use it for cold items (MMGCN: whole representation, GRCN: ID part,
    # FREEDOM / LATTICE: user-item part)
    for model in (MMGCN(U, I, features, partial(LateFusion), embedding_dim=D, cold_neighbours=3),
                  GRCN(U, I, features, partial(LateFusion), embedding_dim=D, cold_neighbours=3),
                  FREEDOM(U, I, features, partial(GraphSumFusion), embedding_dim=D, knn_k=3, cold_neighbours=3),
                  LATTICE(U, I, features, partial(GraphSumFusion), embedding_dim=D, knn_k=3, cold_neighbours=3)):
        model.eval()
        with torch.no_grad():
            _, item = model(cold_graph, features)
            model.cold = ColdItemNeighbours(features, k=0)  # off
            _, item_off = model(cold_graph, features)
        assert torch.equal(item[known], item_off[known]) and not torch.allclose(item[~known], item_off[~known])
    emb = torch.randn(I, D)
    out = module(emb, cold_graph.item_sets)
    s = module.adj.to_dense()
    assert torch.equal(out[known], emb[known])  # warm rows untouched
    for i in torch.nonzero(~known).squeeze(1).tolist():
        w = s[i] * known.float()  # similarity to warm neighbours only
        mean = (w @ emb) / w.sum() if w.sum() > 0 else torch.zeros(D)
        length = (w @ emb.norm(dim=1)) / w.sum() if w.sum() > 0 else 0.0
        expected = mean / mean.norm().clamp_min(1e-12) * length  # the mean's direction, their mean length
        assert torch.allclose(out[i], expected, atol=1e-5), i


def test_grcn_routing_stop_gradient_keeps_the_forward(graph, features):
    from torch_geometric.utils import softmax as segment_softmax

    model = GRCN(U, I, features, partial(LateFusion), embedding_dim=D, routing_iters=3)
    p, h = model.prototypes_and_content(graph, features)
    # reference: every round differentiable (the paper's formulation)
    users = graph.edge_index[0]
    for m, (init, h_m) in enumerate(zip(model.prototype_init.unbind(0), h.unbind(0))):
        ref = F.normalize(init, dim=1)
        for _ in range(3):
            a = segment_softmax(graph.edge_dot(ref, h_m), users, num_nodes=U)
            ref = F.normalize(init + graph.spmm_values(a, h_m, "ui"), dim=1)
        assert torch.allclose(p[m], ref, atol=1e-6)
    # gradients still reach the prototypes and the projections through the last round
    p.sum().backward()
    assert model.prototype_init.grad is not None and model.prototype_init.grad.abs().sum() > 0
    assert all(w.grad is not None for w in model.fusion.projector.parameters() if w.dim() == 2)


@pytest.mark.parametrize("concat", [False, True])
def test_mmgcn_tower_equals_dense_equations(graph, concat):
    """The tower against the docstring's equations on the dense normalised adjacency,
    ``h = LeakyReLU(A_hat (X W^T + b))`` with every node's message mapped before aggregation."""
    from mmrec.models.mmgcn import _ModalityGCN

    torch.manual_seed(3)
    tower = _ModalityGCN(U, D, num_layers=2, concat=concat)
    for p in tower.parameters():  # non-zero biases: the bias of aggregated messages is tested too
        torch.nn.init.normal_(p)
    item_x, id_user, id_item = torch.randn(I, D), torch.randn(U, D), torch.randn(I, D)
    x_u, x_i = tower(graph, item_x, id_user, id_item)
    a_hat = graph.dense_adjacency()  # [U+I, U+I]
    x = torch.cat([F.normalize(tower.preference.weight, dim=1), F.normalize(item_x, dim=1)])
    ids = torch.cat([id_user, id_item])
    for layer in range(2):
        h = F.leaky_relu(a_hat @ tower.conv[layer](x))
        s = F.leaky_relu(tower.self_[layer](x)) + ids
        x = F.leaky_relu(tower.combine[layer](torch.cat([h, s], 1))) if concat else F.leaky_relu(h + s)
    torch.testing.assert_close(x_u, x[:U], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x_i, x[U:], atol=1e-5, rtol=1e-5)


def test_forward_rows_equal_the_full_forward(graph, features):
    users, items = torch.tensor([0, 3, 3, 7]), torch.tensor([1, 2, 5, 9, 0])  # items 2, 5: no image
    for model in _models(features):
        model.eval()  # no dropout: both calls see the same function
        with torch.no_grad():
            user_emb, item_emb = model(graph, features)
            u, i = model.forward_rows(graph, features, users, items)
        assert torch.allclose(u, user_emb[users], atol=1e-6), type(model).__name__
        assert torch.allclose(i, item_emb[items], atol=1e-6), type(model).__name__


@pytest.mark.parametrize("fusion", [ConcatFusion, LateFusion])
def test_row_only_training_step_equals_the_full_one(graph, features, fusion):
    from mmrec.lit.module import RecModule
    from mmrec.sampling import UniformSampler

    pairs = InteractionMatrix(*_graph_pairs(graph), U, I)
    module = RecModule(encoder=VBPR(U, I, features, partial(fusion), embedding_dim=D), sampler=UniformSampler(),
                       graph=graph, train_matrix=pairs, features=features, l2_weight=1e-2)
    module.on_train_epoch_start()
    users, pos = _graph_pairs(graph)
    losses, grads = [], []
    for item_local in (True, False):  # the row path, then the full forward
        module.encoder.item_local = item_local
        module.zero_grad()
        torch.manual_seed(7)  # the same negatives in both steps
        loss = module.training_step((users, pos), 0)
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None})
    assert torch.allclose(losses[0], losses[1], atol=1e-6)
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name


def test_l2_term_is_that_of_the_concatenated_ego_tables(graph, features):
    """The module gathers the batch's rows of every layer-0 block (MMGCN: ID + one preference
    table per modality, VBPR: gamma + theta): the same L2 as rows of the concatenated tables."""
    from mmrec.lit.module import RecModule
    from mmrec.losses import bpr_loss, l2_batch
    from mmrec.sampling import UniformSampler

    pairs = InteractionMatrix(*_graph_pairs(graph), U, I)
    users, items = torch.tensor([0, 3, 3, 7]), torch.tensor([[1, 2, 5], [9, 0, 4], [2, 2, 8], [6, 1, 3]])
    for model in _models(features):
        module = RecModule(encoder=model, sampler=UniformSampler(), graph=graph, train_matrix=pairs,
                           features=features, l2_weight=1.0)
        module.on_train_epoch_start()
        u, item_rows = torch.randn(4, 1), torch.randn(4, 3, 1)
        loss = module._step_loss(users, items, u, item_rows)
        user_blocks, item_blocks = model.ego_embeddings()
        user_all, item_all = torch.cat(user_blocks, dim=1), torch.cat(item_blocks, dim=1)  # [U, d_u], [I, d_i]
        scores = (u.unsqueeze(1) * item_rows).sum(-1)  # [4, 3]
        expected = bpr_loss(scores[:, 0], scores[:, 1:]) + l2_batch(user_all[users], item_all[items[:, 0]],
                                                                    item_all[items[:, 1:]])
        assert torch.allclose(loss, expected), type(model).__name__
        assert len(user_blocks) == {"MMGCN": 3, "VBPR": 2}.get(type(model).__name__, 1), type(model).__name__


def _graph_pairs(graph: BipartiteGraph) -> tuple[torch.Tensor, torch.Tensor]:
    return graph.edge_index[0], graph.edge_index[1]


@pytest.mark.parametrize("shape", [(7, 5), (2, 6, 4)])
def test_normalize_rows_equals_f_normalize(shape):
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.double)
    x[(0,) * (len(shape) - 1)] = 0.0  # a zero row: clamped at eps
    x[(1,) * (len(shape) - 1)] = 1e-9  # a tiny row below eps: clamped too
    eps = 1e-6
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    g = torch.randn(*shape, dtype=torch.double)
    ya, yb = normalize_rows(a, eps), F.normalize(b, dim=-1, eps=eps)
    torch.testing.assert_close(ya, yb)
    ya.backward(g)
    yb.backward(g)
    torch.testing.assert_close(a.grad, b.grad)
    t = torch.randn(*shape, dtype=torch.double)
    t[(0,) * (len(shape) - 1)] *= 0.1 / t[(0,) * (len(shape) - 1)].norm()  # norm 0.1, well inside eps=1
    assert torch.autograd.gradcheck(lambda t: normalize_rows(t, 1.0), (t.requires_grad_(),))  # clamped branch
    assert torch.autograd.gradcheck(lambda t: normalize_rows(t, eps), (torch.randn(*shape, dtype=torch.double,
                                                                                     requires_grad=True),))


def test_grcn_routing_round_equals_the_softmax_reference_with_gradients(graph):
    """One routing round (softmax without max shift, aggregated by one sparse product) equals
    the segment-softmax formulation in value and gradient, users without edges included."""
    from torch_geometric.utils import softmax as segment_softmax

    torch.manual_seed(0)
    keep = graph.edge_index[0] != 0  # user 0 loses its edges
    graph = BipartiteGraph(InteractionMatrix(graph.edge_index[0][keep], graph.edge_index[1][keep], U, I))
    users = graph.edge_index[0]
    init = torch.randn(U, D, dtype=torch.double)
    h = F.normalize(torch.randn(I, D, dtype=torch.double), dim=1)
    p = F.normalize(torch.randn(U, D, dtype=torch.double), dim=1)
    grads = []
    for route in (GRCN._route, None):
        xs = [t.clone().requires_grad_() for t in (init, p, h)]
        if route is None:
            a = segment_softmax(graph.edge_dot(xs[1], xs[2]), users, num_nodes=U)
            out = F.normalize(xs[0] + graph.spmm_values(a, xs[2], "ui"), dim=1)
        else:
            out = route(graph, *xs)
        out.backward(torch.linspace(-1, 1, U * D, dtype=torch.double).view(U, D))
        grads.append((out.detach(), *[x.grad for x in xs]))
    for new, ref in zip(*grads):
        torch.testing.assert_close(new, ref)
