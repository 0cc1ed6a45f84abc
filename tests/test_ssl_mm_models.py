"""BM3 and MGCN: dense reference equations on a tiny graph, bootstrapped / contrastive terms, the
stop-gradient, missing modalities, cold items, and short trainings on the small demo."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch

from conftest import random_graph, info_nce_by_hand
import torch.nn.functional as F

from mmrec.features.featureset import FeatureSet
from mmrec.fusion import AlignedFusion, AttentionFusion
from mmrec.losses import table_norm_loss
from mmrec.models.base import TrainingStep
from mmrec.models.bm3 import BM3
from mmrec.models.mgcn import MGCN

U, I, D = 12, 15, 8
COLD = 14  # the item without training interactions in the `graph` fixture
MISSING_IMAGE = [2, 5]  # items without an image


@pytest.fixture
def graph():
    return random_graph(U, I, cold=COLD)


def _features(image: torch.Tensor | None = None) -> FeatureSet:
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(I, dtype=torch.bool)
    mask[MISSING_IMAGE] = False
    img = torch.randn(I, 6, generator=g) * mask[:, None]
    text = torch.randn(I, 5, generator=g)
    return FeatureSet({"image": (img if image is None else image, mask),
                       "text": (text, torch.ones(I, dtype=torch.bool))})


@pytest.fixture
def features():
    return _features()


def _bm3(features, **kw) -> BM3:
    torch.manual_seed(0)
    return BM3(U, I, features, partial(AlignedFusion), embedding_dim=D, **kw)


def _mgcn(features, **kw) -> MGCN:
    torch.manual_seed(0)
    kw.setdefault("knn_k", 3)
    return MGCN(U, I, features, partial(AttentionFusion, attention_dim=D), embedding_dim=D, **kw)


def _ego(model, graph) -> torch.Tensor:
    """``[U + I, d]`` layer-0 embeddings, cold rows zeroed (constants)."""
    items = model.item_embedding.weight * graph.item_sets.warm.unsqueeze(1)
    return torch.cat([model.user_embedding.weight, items]).detach()


def _layer_mean(a: torch.Tensor, e0: torch.Tensor, layers: int) -> torch.Tensor:
    out, x = e0.clone(), e0
    for _ in range(layers):
        x = a @ x
        out = out + x
    return out / (layers + 1)


def _cos_loss_by_hand(online: torch.Tensor, target: torch.Tensor) -> float:
    """1 - mean_n cos(online_n, target_n), with a loop."""
    sims = [float(online[n] @ target[n] / (online[n].norm() * target[n].norm())) for n in range(len(online))]
    return 1.0 - sum(sims) / len(sims)


def _step(model, graph, features, users, items):
    user_emb, item_emb, views = model.training_forward(graph, features)
    return TrainingStep(users, items, user_emb, item_emb, views, graph, features)


USERS = torch.tensor([0, 1, 3, 3, 7])


def _positives(graph, users=USERS) -> torch.Tensor:
    """``[B, 1]`` one training item of each user (never the cold item)."""
    u, i = graph.edge_index
    return torch.stack([i[u == user][0] for user in users]).unsqueeze(1)


# -- BM3 ----------------------------------------------------------------------------------------

def test_bm3_forward_matches_dense_equations(graph, features):
    model = _bm3(features, num_layers=2, cold_neighbours=0).eval()
    e0 = _ego(model, graph)
    mean = _layer_mean(graph.dense_adjacency(), e0, 2)
    h = mean + torch.cat([torch.zeros(U, D), e0[U:]])  # items: layer mean + own ID
    w, b = model.predictor.weight.detach(), model.predictor.bias.detach()
    ref = h @ w.T + b
    user_emb, item_emb = model(graph, features)
    assert torch.allclose(torch.cat([user_emb, item_emb]).detach(), ref, atol=1e-6)
    # scores are the predictor outputs' dot products
    assert torch.allclose(model.score_all(user_emb, item_emb), ref[:U] @ ref[U:].T, atol=1e-5)


def test_bm3_has_no_negatives_and_its_terms_are_its_loss_terms(graph, features):
    model = _bm3(features, cl_weight=0.7, reg_weight=0.03)
    assert BM3.main_loss == "none" and BM3.uses_content and BM3.supported_fusions == ("aligned",)
    terms = model.extra_losses(_step(model, graph, features, USERS, _positives(graph)))
    assert set(terms) == set(model.loss_terms) == {"reconstruction", "alignment", "masked", "emb_reg"}
    assert model.loss_weights == {"reconstruction": 1.0, "alignment": 0.7, "masked": 0.7, "emb_reg": 0.03}
    assert all(t.ndim == 0 and torch.isfinite(t) for t in terms.values())


def test_bm3_losses_match_hand_computation_without_dropout(graph, features):
    # dropout 0: the target view is the stop-gradient of the online encoder itself
    model = _bm3(features, num_layers=1, dropout=0.0).train()
    items = _positives(graph)
    step = _step(model, graph, features, USERS, items)
    terms = model.extra_losses(step)
    pos = items[:, 0]
    with torch.no_grad():
        h_user, h_item = model.online(graph)
        pred = model.predictor
        rec = _cos_loss_by_hand(pred(h_user)[USERS], h_item[pos]) + _cos_loss_by_hand(pred(h_item)[pos], h_user[USERS])
        align = masked = 0.0
        for name in ("image", "text"):
            values, mask = features[name]
            keep = pos[mask[pos]]  # batch rows whose item has this modality
            proj = model.aligned.projector.proj[name](values[keep])
            align += _cos_loss_by_hand(pred(proj), h_item[keep])
            masked += _cos_loss_by_hand(pred(proj), proj)
        reg = (h_user.norm() + h_item.norm()) / I
    assert terms["reconstruction"].item() == pytest.approx(rec, abs=1e-5)
    assert terms["alignment"].item() == pytest.approx(align, abs=1e-5)
    assert terms["masked"].item() == pytest.approx(masked, abs=1e-5)
    assert terms["emb_reg"].item() == pytest.approx(float(reg), abs=1e-6)
    assert table_norm_loss(torch.ones(2, 2), torch.ones(4, 2)).item() == pytest.approx((2 + 8 ** 0.5) / 4)


def test_bm3_targets_are_stop_gradient_and_dropout_perturbs_them(graph, features):
    model = _bm3(features, dropout=0.5).train()
    items = _positives(graph)
    # alignment: online = predictor(projected features), target = the item's ID view (no gradient)
    step = _step(model, graph, features, USERS, items)
    model.extra_losses(step)["alignment"].backward()
    assert model.user_embedding.weight.grad is None or model.user_embedding.weight.grad.abs().sum() == 0
    assert model.item_embedding.weight.grad is None or model.item_embedding.weight.grad.abs().sum() == 0
    assert model.aligned.projector.proj["text"].weight.grad.abs().sum() > 0
    # reconstruction: the gradient reaches the IDs only through the online (predicted) side
    model.zero_grad()
    step = _step(model, graph, features, USERS, items)
    model.extra_losses(step)["reconstruction"].backward()
    assert model.user_embedding.weight.grad.abs().sum() > 0 and model.predictor.weight.grad.abs().sum() > 0
    # dropout draws a new target view every step; without dropout it is deterministic
    with torch.no_grad():
        a = model.extra_losses(step)["reconstruction"]
        b = model.extra_losses(step)["reconstruction"]
    assert not torch.isclose(a, b)
    model.dropout = 0.0
    with torch.no_grad():
        assert torch.equal(model.extra_losses(step)["reconstruction"], model.extra_losses(step)["reconstruction"])


def test_bm3_missing_modality_rows_are_left_out(graph, features):
    model = _bm3(features, dropout=0.0).train()
    u, i = graph.edge_index
    items = torch.tensor(MISSING_IMAGE + [0, 1])  # two items without an image, two with one
    users = torch.stack([u[i == item][0] for item in items])
    step = _step(model, graph, features, users, items.unsqueeze(1))
    before = model.extra_losses(step)
    with torch.no_grad():  # the learned missing vector is no view of the item: it changes nothing
        model.aligned.projector.missing["image"] += 1.0
    after = model.extra_losses(step)
    for name in ("alignment", "masked"):
        assert torch.allclose(before[name], after[name])
    # the image term counts the rows with an image only, the text term all rows
    with torch.no_grad():
        _, h_item = model.online(graph)
        pred, proj = model.predictor, model.aligned.projector.proj
        image = proj["image"](features["image"][0][items[2:]])
        text = proj["text"](features["text"][0][items])
        align = _cos_loss_by_hand(pred(image), h_item[items[2:]]) + _cos_loss_by_hand(pred(text), h_item[items])
    assert before["alignment"].item() == pytest.approx(align, abs=1e-5)


def test_bm3_cold_item_is_scored_from_content(graph, features):
    assert not graph.item_sets.warm[COLD]
    model = _bm3(features, cold_neighbours=3).eval()
    _, item_emb = model(graph, features)
    # its own untrained ID does not enter its score
    with torch.no_grad():
        model.item_embedding.weight[COLD] += 3.0
        assert torch.allclose(model(graph, features)[1][COLD], item_emb[COLD])
    # without the content estimate every cold item would be the predictor's bias (no content path)
    off = _bm3(features, cold_neighbours=0).eval()
    assert torch.allclose(off(graph, features)[1][COLD], off.predictor.bias)
    # with it, the cold item's score follows its features (through its content neighbours)
    image = features["image"][0].clone()
    image[COLD] = -image[COLD] + 3.0
    other = _bm3(_features(image), cold_neighbours=3).eval()
    other.load_state_dict(model.state_dict())
    _, moved = other(graph, _features(image))
    assert not torch.allclose(moved[COLD], item_emb[COLD])
    warm = graph.item_sets.warm
    assert torch.allclose(moved[warm], item_emb[warm])  # warm items do not depend on the cold estimate


# -- MGCN ---------------------------------------------------------------------------------------

def _dense_knn(values: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """``[I, I]`` D^-1/2 A D^-1/2 of each present item's k most cosine-similar other present items."""
    x = F.normalize(values, dim=1)
    sim = x @ x.T
    sim.fill_diagonal_(-float("inf"))
    sim[:, ~mask] = -float("inf")
    a = torch.zeros(I, I)
    for i in torch.nonzero(mask).squeeze(1):
        a[i, sim[i].topk(k).indices] = 1.0
    deg = a.sum(1)
    inv = torch.where(deg > 0, deg.rsqrt(), torch.zeros_like(deg))
    return inv[:, None] * a * inv[None, :]


def _mgcn_by_hand(model: MGCN, graph, features) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ui [U + I, d], side [U + I, d])`` of the paper's equations, dense, modality by modality."""
    with torch.no_grad():
        e0 = _ego(model, graph)
        ui = _layer_mean(graph.dense_adjacency(), e0, model.num_ui_layers)
        r = graph.dense_adjacency()[:U, U:]  # [U, I] normalised R~
        views, masks = [], []
        for k, name in enumerate(("image", "text")):
            values, mask = features[name]
            proj = model.fusion.projector.proj[name](values)
            proj = torch.where(mask[:, None], proj, model.fusion.projector.missing[name])
            x = e0[U:] * torch.sigmoid(model.purifier[k](proj))
            s = _dense_knn(values, mask, 3)
            for _ in range(model.num_ii_layers):
                x = s @ x
            views.append(torch.cat([r @ x, x]))
            masks.append(torch.cat([torch.ones(U, dtype=torch.bool), mask]))
        att = model.fusion
        logits = torch.stack([torch.tanh(att.key(v)) @ att.query for v in views])  # [M, N]
        logits = logits.masked_fill(~torch.stack(masks), -float("inf"))
        alpha = torch.softmax(logits, dim=0)
        common = alpha[0, :, None] * views[0] + alpha[1, :, None] * views[1]
        side = common.clone()
        for k in range(2):
            side += masks[k][:, None] * torch.sigmoid(model.preference[k](ui)) * (views[k] - common)
        return ui, side / 3


def test_mgcn_forward_matches_dense_equations(graph, features):
    model = _mgcn(features, num_ui_layers=2, num_ii_layers=1, cold_neighbours=0).eval()
    ui, side = _mgcn_by_hand(model, graph, features)
    user_emb, item_emb = model(graph, features)
    assert torch.allclose(torch.cat([user_emb, item_emb]).detach(), ui + side, atol=1e-5)
    got_ui, got_side = model.views(graph, features)
    assert torch.allclose(got_ui.detach(), ui, atol=1e-6) and torch.allclose(got_side.detach(), side, atol=1e-5)


def test_mgcn_missing_modality_gets_no_attention_and_no_part(graph, features):
    model = _mgcn(features, cold_neighbours=0).eval()
    projected, mask = model.fusion.projector(features)
    _, before = model(graph, features)
    with torch.no_grad():
        # the learned missing vector gates an item that has no image edges: nothing changes
        model.fusion.projector.missing["image"] += 5.0
    _, after = model(graph, features)
    assert torch.allclose(before, after, atol=1e-6)
    # nor do the (ignored) raw values of a missing image
    image = features["image"][0].clone()
    image[MISSING_IMAGE] = 9.0
    other = _mgcn(_features(image), cold_neighbours=0).eval()
    other.load_state_dict(model.state_dict())
    assert torch.allclose(other(graph, _features(image))[1], after, atol=1e-6)


def test_mgcn_losses_match_hand_computation(graph, features):
    model = _mgcn(features, temperature=0.3, cl_weight=0.05, reg_weight=1e-3).train()
    items = torch.cat([_positives(graph), torch.tensor([[0], [4], [6], [8], [9]])], dim=1)  # [B, 2]
    step = _step(model, graph, features, USERS, items)
    terms = model.extra_losses(step)
    assert set(terms) == set(model.loss_terms) == {"cl", "emb_reg"}
    assert model.loss_weights == {"cl": 0.05, "emb_reg": 1e-3}
    ui, side = _mgcn_by_hand(model, graph, features)
    users = torch.unique(USERS)  # user 3 is drawn twice: one row
    pos = torch.unique(items[:, 0]) + U
    cl = info_nce_by_hand(side[pos], ui[pos], 0.3) + info_nce_by_hand(side[users], ui[users], 0.3)
    assert terms["cl"].item() == pytest.approx(cl, abs=1e-4)
    final = ui + side
    u, p, n = final[USERS], final[items[:, 0] + U], final[items[:, 1] + U]
    reg = 0.5 * (u.pow(2).sum() + p.pow(2).sum() + n.pow(2).sum()) / len(USERS)
    assert terms["emb_reg"].item() == pytest.approx(float(reg), rel=1e-4)


def test_mgcn_gradients_reach_every_part(graph, features):
    model = _mgcn(features).train()
    items = torch.cat([_positives(graph), torch.tensor([[0], [4], [6], [8], [9]])], dim=1)
    step = _step(model, graph, features, USERS, items)
    scores = model.score_pairs(step.user_emb[USERS].unsqueeze(1), step.item_emb[items])
    loss = -F.logsigmoid(scores[:, 0] - scores[:, 1]).mean() + sum(model.extra_losses(step).values())
    loss.backward()
    for name in ("user_embedding.weight", "item_embedding.weight", "purifier.0.weight", "purifier.1.weight",
                 "preference.0.weight", "fusion.key.weight", "fusion.query", "fusion.projector.proj.text.weight"):
        assert model.get_parameter(name).grad.abs().sum() > 0, name
    assert model.item_embedding.weight.grad[COLD].abs().sum() == 0  # a cold item's ID is never trained


def test_mgcn_cold_item_is_scored_from_content(graph, features):
    model = _mgcn(features, cold_neighbours=3).eval()
    _, item_emb = model(graph, features)
    with torch.no_grad():  # its own untrained ID does not enter its representation
        model.item_embedding.weight[COLD] += 3.0
        assert torch.allclose(model(graph, features)[1][COLD], item_emb[COLD])
    # it is not the same as an item with no content (its item-item view is its neighbours')
    off = _mgcn(features, cold_neighbours=0).eval()
    assert off(graph, features)[1][COLD].abs().sum() > 0
    # its features choose its neighbours: changing them changes its score
    image, text = features["image"][0].clone(), features["text"][0].clone()
    image[COLD], text[COLD] = -image[COLD] + 3.0, -text[COLD]
    moved_features = FeatureSet({"image": (image, features["image"][1]), "text": (text, features["text"][1])})
    other = _mgcn(moved_features, cold_neighbours=3).eval()
    other.load_state_dict(model.state_dict())
    _, moved = other(graph, moved_features)
    assert not torch.allclose(moved[COLD], item_emb[COLD])


# -- training through mmrec.train ---------------------------------------------------------------

@pytest.mark.parametrize("model", ["bm3", "mgcn"])
def test_short_training_on_the_small_demo(make_cfg, model):
    from mmrec.train import train

    metrics, objects = train(make_cfg([f"model={model}", "trainer.max_epochs=2", "logger=none"]))
    encoder = objects["module"].encoder
    assert 0.0 <= metrics["val/recall@20"] <= 1.0 and "test/cold/recall@20" in metrics
    losses = objects["module"].epoch_losses()
    for name in encoder.loss_terms:
        assert math.isfinite(losses[f"train/{name}"]), name
    if model == "bm3":
        assert losses["train/bpr"] == 0.0  # no negatives: BM3's own terms are its objective
