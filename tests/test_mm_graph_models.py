"""LGMRec, DRAGON and ItemKNNCBF: dense reference equations on a tiny graph, the co-occurrence
graph against brute force, the hypergraph contrastive term, missing modalities, cold items, and
short trainings on the small demo."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch

from conftest import random_graph
import torch.nn.functional as F

from mmrec.core.interactions import InteractionMatrix
from mmrec.features.featureset import FeatureSet
from mmrec.fusion import GraphSumFusion
from mmrec.graph.cooccurrence import interaction_sum, user_cooccurrence_topk
from mmrec.models.base import TrainingStep
from mmrec.models.dragon import DRAGON
from mmrec.models.itemknn import ItemKNNCBF
from mmrec.models.lgmrec import LGMRec

U, I, D = 12, 15, 8
COLD = 14  # the item without training interactions in the `graph` fixture
NO_IMAGE = (2, 5)  # items without an image


@pytest.fixture
def graph():
    return random_graph(U, I, cold=COLD)


@pytest.fixture
def features():
    g = torch.Generator().manual_seed(1)
    mask_img = torch.ones(I, dtype=torch.bool)
    mask_img[list(NO_IMAGE)] = False
    return FeatureSet({"image": (torch.randn(I, 6, generator=g) * mask_img[:, None], mask_img),
                       "text": (torch.randn(I, 5, generator=g), torch.ones(I, dtype=torch.bool))})


def _lgmrec(features, **kwargs):
    args = {"embedding_dim": D, "num_ui_layers": 2, "num_mm_layers": 2, "num_hyperedges": 3, "cold_neighbours": 0}
    return LGMRec(U, I, features, partial(GraphSumFusion), **{**args, **kwargs})


def _dragon(features, graph, **kwargs):
    args = {"embedding_dim": D, "knn_k": 3, "user_knn_k": U, "cold_neighbours": 0}
    model = DRAGON(U, I, features, partial(GraphSumFusion, weights={"image": 0.1, "text": 0.9}), **{**args, **kwargs})
    model.prepare(graph)
    return model


def _dense_r(graph) -> torch.Tensor:
    """``[U, I]`` binary training matrix."""
    r = torch.zeros(U, I)
    r[graph.edge_index[0], graph.edge_index[1]] = 1.0
    return r


def _with_image(features, item: int, shift: float) -> FeatureSet:
    img, mask = features["image"]
    img = img.clone()
    img[item] += shift
    return FeatureSet({"image": (img, mask), "text": features["text"]})


def _info_nce_by_hand(a: torch.Tensor, b: torch.Tensor, tau: float) -> float:
    """-1/N sum_n log( exp(cos(a_n, b_n)/tau) / sum_m exp(cos(a_n, b_m)/tau) ), with loops."""
    a, b = a.detach(), b.detach()
    total = 0.0
    for n in range(len(a)):
        sims = [float(F.cosine_similarity(a[n], b[m], dim=0)) / tau for m in range(len(b))]
        total -= sims[n] - math.log(sum(math.exp(s) for s in sims))
    return total / len(a)


# -- shared graph pieces ----------------------------------------------------------------------------

@pytest.mark.parametrize("block", [1, 5, 1024])
def test_user_cooccurrence_topk_matches_brute_force(graph, block):
    r = _dense_r(graph)
    c = r @ r.T
    c.fill_diagonal_(0)
    k = 4
    nbr, counts = user_cooccurrence_topk(*graph.edge_index, U, I, k, block=block)
    assert nbr.shape == counts.shape == (U, k)
    for u in range(U):
        expected = c[u].sort(descending=True).values[:k]
        expected = expected[expected > 0]
        found = nbr[u] >= 0
        assert int(found.sum()) == len(expected)
        assert torch.equal(counts[u][found], expected) and (counts[u][~found] == 0).all()
        chosen = nbr[u][found]
        assert len(set(chosen.tolist())) == len(chosen) and u not in chosen.tolist()
        assert torch.equal(c[u, chosen], counts[u][found])  # each chosen user shares that many items


def test_user_cooccurrence_without_shared_items_has_no_neighbours():
    # two users with disjoint items: no edge between them
    nbr, counts = user_cooccurrence_topk(torch.tensor([0, 1]), torch.tensor([0, 1]), 2, 2, k=3)
    assert (nbr == -1).all() and (counts == 0).all()


def test_interaction_sum_is_r_times_x_and_its_mean(graph):
    x = torch.randn(I, 3, requires_grad=True)
    r = _dense_r(graph)
    deg = r.sum(1, keepdim=True)
    assert torch.allclose(interaction_sum(graph, x), r @ x, atol=1e-5)
    mean = interaction_sum(graph, x, mean=True)
    assert torch.allclose(mean, torch.where(deg > 0, r @ x / deg.clamp_min(1), torch.zeros_like(mean)), atol=1e-5)
    mean.sum().backward()
    assert torch.allclose(x.grad, (r / deg.clamp_min(1)).sum(0).unsqueeze(1).expand(I, 3), atol=1e-5)


# -- LGMRec -----------------------------------------------------------------------------------------

def _lgmrec_dense(model: LGMRec, graph, features) -> tuple[torch.Tensor, torch.Tensor]:
    """LGMRec's evaluation forward from dense matrices (no cold-item estimate)."""
    a = graph.dense_adjacency()
    r = _dense_r(graph)
    deg = r.sum(1, keepdim=True)
    ego = torch.cat([model.user_embedding.weight, model.item_embedding.weight * graph.item_sets.warm[:, None]])
    layers, h = [ego], ego
    for _ in range(model.num_ui_layers):
        h = a @ h
        layers.append(h)
    cge = torch.stack(layers).mean(0)  # [U + I, d]
    mge, ghe = 0.0, 0.0
    for m in model.names:
        x, mask = features[m]
        proj = model.projector.proj[m]
        f = torch.where(mask[:, None], x @ proj.weight.T + proj.bias, model.projector.missing[m])  # [I, d]
        h = torch.cat([r @ f / deg.clamp_min(1), f])
        for _ in range(model.num_mm_layers):
            h = a @ h
        mge = mge + F.normalize(h, dim=1)
        logits = (x @ model.hyperedges[m].weight.T) * mask[:, None]  # [I, A]
        h_i = torch.softmax(logits / model.temperature, 1) * mask[:, None]
        h_u = torch.softmax(r @ logits / model.temperature, 1)
        g_i = cge[U:]
        for _ in range(model.num_hyper_layers):
            lat = h_i.T @ g_i
            g_i, g_u = h_i @ lat, h_u @ lat
        ghe = ghe + torch.cat([g_u, g_i])
    out = cge + mge + model.alpha * F.normalize(ghe, dim=1)
    return out[:U], out[U:]


@pytest.mark.parametrize("hyper_layers", [1, 2])
def test_lgmrec_evaluation_matches_the_dense_equations(graph, features, hyper_layers):
    model = _lgmrec(features, num_hyper_layers=hyper_layers).eval()
    with torch.no_grad():
        user, item = model(graph, features)
        ref_user, ref_item = _lgmrec_dense(model, graph, features)
    assert torch.allclose(user, ref_user, atol=1e-5) and torch.allclose(item, ref_item, atol=1e-5)


def test_lgmrec_memberships_are_soft_assignments_and_missing_items_have_none(graph, features):
    model = _lgmrec(features, keep_rate=1.0)
    for mode in (True, False):  # Gumbel-softmax in training, softmax in evaluation
        model.train(mode)
        h_user, h_item = model.memberships(graph, features, "image")
        assert h_user.shape == (U, 3) and h_item.shape == (I, 3)
        assert torch.allclose(h_user.sum(1), torch.ones(U), atol=1e-5)
        present = features["image"][1]
        assert torch.allclose(h_item[present].sum(1), torch.ones(int(present.sum())), atol=1e-5)
        assert (h_item[~present] == 0).all()
    # training draws Gumbel noise: two draws differ; evaluation is deterministic
    model.train()
    draws = [model.memberships(graph, features, "text")[1] for _ in range(2)]
    assert not torch.allclose(*draws)
    model.eval()
    assert torch.equal(*[model.memberships(graph, features, "text")[1] for _ in range(2)])


def test_lgmrec_membership_dropout_only_in_training(graph, features):
    model = _lgmrec(features, keep_rate=0.5).train()
    _, h_item = model.memberships(graph, features, "text")
    assert (h_item == 0).any()  # dropped entries; the rest are scaled by 1 / keep_rate
    assert (h_item.sum(1) > 1.0 + 1e-4).any()


def test_lgmrec_hyper_cl_is_infonce_over_distinct_users_and_positives(graph, features):
    # evaluation mode: no Gumbel noise or dropout, whose all-dropped rows are ~0 vectors (where the
    # eps of normalisation and of F.cosine_similarity differ)
    model = _lgmrec(features).eval()
    user_emb, item_emb, views = model.training_forward(graph, features)
    users = torch.tensor([0, 3, 3, 5])
    items = torch.tensor([[1, 7], [4, 2], [4, 9], [6, 0]])
    terms = model.extra_losses(TrainingStep(users, items, user_emb, item_emb, views, graph, features))
    assert set(terms) == set(model.loss_terms) == {"hyper_cl"}
    (gu_v, gi_v), (gu_t, gi_t) = views["hyper"]
    u, i = torch.tensor([0, 3, 5]), torch.tensor([1, 4, 6])
    expected = _info_nce_by_hand(gu_v[u], gu_t[u], 0.2) + _info_nce_by_hand(gi_v[i], gi_t[i], 0.2)
    assert float(terms["hyper_cl"]) == pytest.approx(expected, rel=1e-4)


def test_lgmrec_modality_weights_scale_the_sums(features):
    equal = LGMRec(U, I, features, partial(GraphSumFusion), embedding_dim=D)
    assert torch.allclose(equal.modality_scale, torch.ones(2))  # the reference's plain sums
    skewed = LGMRec(U, I, features, partial(GraphSumFusion, weights={"image": 1.0, "text": 3.0}), embedding_dim=D)
    assert torch.allclose(skewed.modality_scale, torch.tensor([0.5, 1.5]))


# -- DRAGON -----------------------------------------------------------------------------------------

def _dragon_dense(model: DRAGON, graph, features, user_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """DRAGON's forward from dense matrices (no cold-item estimate)."""
    a = graph.dense_adjacency()
    r = _dense_r(graph)
    c = r @ r.T
    c.fill_diagonal_(0)
    w = torch.zeros(U, U)
    for u in range(U):
        shared = c[u].nonzero().squeeze(1)
        if len(shared):
            top = shared[c[u, shared].argsort(descending=True)[:user_k]]
            w[u, top] = torch.softmax(c[u, top], 0)
    content, _ = model.projector(features)
    users, items = [], []
    for k, m in enumerate(model.names):
        x = torch.cat([F.normalize(model.preference[m], dim=1), F.normalize(content[k], dim=1)])
        h, total = x, x
        for _ in range(model.num_ui_layers):
            h = a @ h
            total = total + h
        users.append(model.modality_weight[:, k:k + 1] * total[:U])
        items.append(total[U:])
    user, item = torch.cat(users, 1), torch.cat(items, 1)
    s = model.ii_adj.to_dense()
    neighbours = item
    for _ in range(model.num_ii_layers):
        neighbours = s @ neighbours
    return user + w @ user, item + neighbours


def test_dragon_matches_the_dense_equations(graph, features):
    model = _dragon(features, graph).eval()  # user_knn_k = U: every co-occurring user (no ties to break)
    with torch.no_grad():
        user, item = model(graph, features)
        ref_user, ref_item = _dragon_dense(model, graph, features, U)
    assert user.shape == (U, 2 * D) and item.shape == (I, 2 * D)
    assert torch.allclose(user, ref_user, atol=1e-5) and torch.allclose(item, ref_item, atol=1e-5)


def test_dragon_user_graph_is_the_softmax_of_the_top_k_counts(graph, features):
    model = _dragon(features, graph, user_knn_k=2)
    w = model.uu_adj.to_dense()
    r = _dense_r(graph)
    c = r @ r.T
    c.fill_diagonal_(0)
    nbr, counts = user_cooccurrence_topk(*graph.edge_index, U, I, 2)
    for u in range(U):
        keep = nbr[u] >= 0
        assert int((w[u] > 0).sum()) == int(keep.sum()) <= 2
        if keep.any():
            assert torch.allclose(w[u, nbr[u][keep]], torch.softmax(counts[u][keep], 0))
            assert w[u].sum() == pytest.approx(1.0)
    assert torch.equal(model.uu_adj_t.to_dense(), w.T)


def test_dragon_needs_fit_before_forward(features, graph):
    model = DRAGON(U, I, features, partial(GraphSumFusion), embedding_dim=D, knn_k=3)
    with pytest.raises(RuntimeError, match="prepare"):
        model(graph, features)


def test_dragon_has_no_item_parameters_and_regularises_user_ones(graph, features):
    model = _dragon(features, graph)
    users, items = model.ego_embeddings()
    assert [b.shape for b in users] == [(U, D), (U, D), (U, 2)] and all(b.requires_grad for b in users)
    assert items == ()
    # the training module's L2 term then has no item part
    from mmrec.lit.module import RecModule
    from mmrec.sampling import UniformSampler

    module = RecModule(encoder=model, sampler=UniformSampler(), graph=graph, train_matrix=InteractionMatrix(*graph.edge_index, U, I), features=features,
                       l2_weight=1.0)
    module.on_train_epoch_start()
    batch_users, batch_items = torch.tensor([0, 1]), torch.tensor([[0, 2], [1, 3]])
    u, rows = torch.zeros(2, 2 * D), torch.zeros(2, 2, 2 * D)
    loss = module._step_loss(batch_users, batch_items, u, rows)
    user_all = torch.cat(users, dim=1)
    assert torch.allclose(loss, torch.log(torch.tensor(2.0)) + 0.5 * user_all[batch_users].pow(2).sum() / 2)


# -- ItemKNNCBF -------------------------------------------------------------------------------------

def test_itemknn_scores_are_summed_masked_cosines(graph, features):
    weights = {"image": 0.25, "text": 0.75}
    model = ItemKNNCBF(U, I, features, partial(GraphSumFusion, weights=weights))
    user, item = model(graph, features)
    scores = model.score_all(user, item)
    assert torch.isfinite(scores).all()
    r = _dense_r(graph)
    for u in (0, 4, 9):
        for i in range(I):
            expected = 0.0
            for j in r[u].nonzero().squeeze(1).tolist():
                for m, w in weights.items():
                    x, mask = features[m]
                    if mask[i] and mask[j]:  # a modality either item lacks adds nothing
                        expected += w * float(F.cosine_similarity(x[i], x[j], dim=0))
            assert float(scores[u, i]) == pytest.approx(expected, abs=1e-5)


def test_itemknn_is_not_trained_and_scores_cold_items_by_content(graph, features):
    model = ItemKNNCBF(U, I, features, partial(GraphSumFusion))
    assert not model.trainable and not list(model.parameters())
    user, before = model(graph, features)
    _, after = model(graph, _with_image(features, COLD, 5.0))
    scores_before, scores_after = model.score_all(user, before), model.score_all(user, after)
    assert not torch.allclose(scores_before[:, COLD], scores_after[:, COLD])
    assert torch.equal(scores_before[:, :COLD], scores_after[:, :COLD])  # only the changed item moves


# -- all three: shapes, gradients, cold items -------------------------------------------------------

def _models(features, graph):
    yield _lgmrec(features, cold_neighbours=3)
    yield _dragon(features, graph, user_knn_k=4, cold_neighbours=3)
    yield ItemKNNCBF(U, I, features, partial(GraphSumFusion))


def test_shapes_gradients_and_loss_terms(graph, features):
    for model in _models(features, graph):
        if not model.trainable:
            continue
        name = type(model).__name__
        model.train()
        user, item, views = model.training_forward(graph, features)
        assert user.shape[0] == U and item.shape[0] == I and user.shape[1] == item.shape[1], name
        users, items = torch.arange(4), torch.randint(0, COLD, (4, 3))
        terms = model.extra_losses(TrainingStep(users, items, user, item, views, graph, features))
        assert set(terms) == set(model.loss_terms), name
        loss = model.score_pairs(user[users].unsqueeze(1), item[items]).sum() \
            + sum(model.loss_weights.get(n, 1.0) * t for n, t in terms.items())
        loss.backward()
        trained = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        untrained = {n for n, _ in model.named_parameters()} - trained
        # every parameter learns, except the missing-modality vector of a modality no item lacks
        assert untrained <= {"projector.missing.text"}, (name, untrained)


def test_cold_items_are_scored_from_content(graph, features):
    for model in _models(features, graph):
        model.eval()
        with torch.no_grad():
            _, before = model(graph, features)
            _, after = model(graph, _with_image(features, COLD, 5.0))
        assert not torch.allclose(before[COLD], after[COLD]), type(model).__name__


def test_untrained_id_of_a_cold_item_is_not_used(graph, features):
    model = _lgmrec(features, cold_neighbours=3).eval()
    with torch.no_grad():
        _, before = model(graph, features)
        model.item_embedding.weight[COLD] += 3.0
        _, after = model(graph, features)
    assert torch.allclose(before, after)


@pytest.mark.parametrize("make", [lambda f, g: _lgmrec(f, cold_neighbours=3),
                                  lambda f, g: _dragon(f, g, cold_neighbours=3)], ids=["lgmrec", "dragon"])
def test_cold_item_estimate_changes_only_cold_rows_and_only_in_evaluation(graph, features, make):
    model = make(features, graph)
    from mmrec.models.base import ColdItemNeighbours

    model.eval()
    with torch.no_grad():
        user, item = model(graph, features)
        model.cold = ColdItemNeighbours(features, k=0)  # off
        user_off, item_off = model(graph, features)
    warm = graph.item_sets.warm
    assert torch.equal(user, user_off) and torch.allclose(item[warm], item_off[warm], atol=1e-6)
    assert not torch.allclose(item[COLD], item_off[COLD])


def test_values_of_a_missing_modality_are_never_read(graph, features):
    # an item without an image: whatever its image row holds, nothing changes (it is masked)
    for model in _models(features, graph):
        model.eval()
        with torch.no_grad():
            user, item = model(graph, features)
            user2, item2 = model(graph, _with_image(features, NO_IMAGE[0], 5.0))
        assert torch.equal(user, user2) and torch.equal(item, item2), type(model).__name__


def test_missing_modalities_give_finite_representations(graph, features):
    for model in _models(features, graph):
        model.eval()
        with torch.no_grad():
            user, item = model(graph, features)
        assert torch.isfinite(user).all() and torch.isfinite(item).all(), type(model).__name__
        for i in NO_IMAGE:
            assert item[i].abs().sum() > 0, type(model).__name__


@pytest.mark.parametrize("kwargs", [{"num_hyper_layers": 0}, {"keep_rate": 0.0}, {"temperature": 0.0},
                                    {"num_ui_layers": -1}])
def test_lgmrec_rejects_bad_arguments(features, kwargs):
    with pytest.raises(ValueError):
        _lgmrec(features, **kwargs)


# -- end to end on the small demo -------------------------------------------------------------------

@pytest.mark.parametrize("model", ["lgmrec", "dragon", "itemknn_cbf"])
def test_short_training_on_the_small_demo(make_cfg, model):
    from mmrec.train import train

    metrics, objects = train(make_cfg([f"model={model}", "trainer.max_epochs=2", "logger=none"]))
    assert 0.0 <= metrics["val/recall@20"] <= 1.0 and 0.0 <= metrics["test/ndcg@20"] <= 1.0
    assert metrics["test/cold/recall@20"] > 0.0  # content models rank cold items
    if model == "lgmrec":  # its own term is part of the objective and logged (last epoch's mean)
        assert objects["module"].epoch_losses()["train/hyper_cl"] > 0
