"""Models that represent users from their histories (two-tower, SASRec, BERT4Rec): the history
batches, their losses against hand-computed values, the masks, training, export and serving."""

import math

import numpy as np
import pytest
import torch

from conftest import SMALL_DEMO, compose_cfg, train_demo
from mmrec.core.items import ItemSets
from mmrec.core.sequences import UserSequences, pool_history
from mmrec.losses import bce_loss, full_softmax_loss, sampled_softmax_loss
from mmrec.models.base import TrainingContext
from mmrec.models.sequential import BERT4Rec, SASRec, attention_mask, mask_positions


# -- histories ------------------------------------------------------------------------
def _sequences() -> UserSequences:
    # user 0: items 5 (t=3), 2 (t=1), 7 (t=3, valid: after the training item of the same second), 4 (t=9, test)
    # user 1: item 1 (t=2); user 2: nothing
    return UserSequences(users=[0, 0, 0, 0, 1], items=[5, 2, 7, 4, 1], timestamps=[3, 1, 3, 9, 2],
                         splits=[0, 0, 1, 2, 0], num_users=3, num_items=8)


def test_subsampled_histories_keep_the_latest_item_and_vary_in_size():
    from mmrec.models.two_tower import subsample

    torch.manual_seed(0)
    hist = torch.arange(40).repeat(500, 1)  # [500, 40]
    hist[:, :5] = -1  # padding stays padding
    out = subsample(hist)
    kept = (out >= 0).sum(1)
    assert bool((out[:, -1] == 39).all()) and bool((out[:, :5] == -1).all())
    assert bool(((out == hist) | (out == -1)).all())  # items only dropped, never moved
    assert kept.min() <= 3 and kept.max() >= 33  # from a handful to nearly all


def test_history_batches_are_time_ordered_left_padded_and_split_filtered():
    seq = _sequences()
    users = torch.tensor([0, 1, 2])
    assert seq.batch(users, ("train",), 10).tolist() == [[2, 5], [-1, 1], [-1, -1]]
    assert seq.batch(users, ("train", "valid"), 10).tolist() == [[2, 5, 7], [-1, -1, 1], [-1, -1, -1]]
    assert seq.batch(users, ("train", "valid", "test"), 2).tolist() == [[7, 4], [-1, 1], [-1, -1]]  # the latest 2
    assert seq.batch(users, ("train",), 10, exclude=torch.tensor([5, 0, 0])).tolist() == [[2], [1], [-1]]
    assert seq.batch(torch.tensor([1]), ("train",), 10, width=3).tolist() == [[-1, -1, 1]]
    assert seq.lengths(("train", "valid")).tolist() == [3, 1, 0]


def test_mean_and_attention_pooling_by_hand():
    items = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    hist = torch.tensor([[-1, 0, 1], [-1, -1, -1]])
    assert pool_history(hist, items, "mean").tolist() == [[0.5, 1.0], [0.0, 0.0]]
    q = torch.tensor([0.0, math.sqrt(2.0)])  # logits v.q / sqrt(2): 0 and 2
    w = torch.softmax(torch.tensor([0.0, 2.0]), 0)
    expected = w[0] * items[0] + w[1] * items[1]
    assert torch.allclose(pool_history(hist, items, "attention", q)[0], expected)
    assert pool_history(hist, items, "attention", q)[1].tolist() == [0.0, 0.0]  # empty history


# -- losses against hand-computed values ----------------------------------------------
def test_sampled_softmax_with_logq_and_accidental_hits_by_hand():
    scores = torch.tensor([[2.0, 1.0, 0.5], [0.0, 1.0, 3.0]])  # 2 users x 3 candidates
    q = torch.tensor([0.5, 0.25, 0.25])
    # row 0: logits 2 - ln .5, 1 - ln .25, .5 - ln .25; its positive is candidate 0
    l0 = [2 - math.log(0.5), 1 - math.log(0.25), 0.5 - math.log(0.25)]
    l1 = [0 - math.log(0.5), 1 - math.log(0.25), 3 - math.log(0.25)]
    expected = -(l0[0] - math.log(sum(map(math.exp, l0))) + l1[1] - math.log(sum(map(math.exp, l1)))) / 2
    assert sampled_softmax_loss(scores, q.log()).item() == pytest.approx(expected, rel=1e-6)
    # without correction: plain in-batch softmax
    plain = -(2 - math.log(math.exp(2) + math.exp(1) + math.exp(0.5)) + 1 - math.log(1 + math.e + math.exp(3))) / 2
    assert sampled_softmax_loss(scores).item() == pytest.approx(plain, rel=1e-6)
    # candidate 2 is the same item as row 0's positive: not a negative for row 0
    hit = -(2 - math.log(math.exp(2) + math.exp(1)) + 1 - math.log(1 + math.e + math.exp(3))) / 2
    assert sampled_softmax_loss(scores, None, torch.tensor([4, 6, 4])).item() == pytest.approx(hit, rel=1e-6)


def test_full_softmax_masks_the_catalogue_and_bce_by_hand():
    hidden = torch.tensor([[1.0, 0.0]])
    items = torch.tensor([[1.0, 0.0], [0.0, 1.0], [5.0, 0.0]])
    allowed = torch.tensor([True, True, False])  # item 2 is cold: never a candidate in training
    expected = -(1 - math.log(math.e + 1))
    assert full_softmax_loss(hidden, items, torch.tensor([0]), allowed).item() == pytest.approx(expected, rel=1e-6)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    bce = (-math.log(sig(2.0)) - (math.log(1 - sig(1.0)) + math.log(1 - sig(-1.0))) / 2)
    assert bce_loss(torch.tensor([2.0]), torch.tensor([[1.0, -1.0]])).item() == pytest.approx(bce, rel=1e-6)


class _Features:
    dims: dict = {}

    def __len__(self):
        return 0


def _context(seq: UserSequences, num_items: int) -> TrainingContext:
    from mmrec.core.interactions import InteractionMatrix
    from mmrec.graph.bipartite import BipartiteGraph

    users, items = seq.batch(torch.arange(seq.num_users), ("train",), 100), None
    rows = [r[r >= 0].tolist() for r in users]
    u = [i for i, r in enumerate(rows) for _ in r]
    it = [x for r in rows for x in r]
    sets = ItemSets.from_training(it, num_items)
    matrix = InteractionMatrix(u, it, seq.num_users, num_items, catalogue=sets.warm_ids)
    degree = matrix.item_degree().double()
    return TrainingContext(BipartiteGraph(matrix, sets), _Features(), matrix, seq, None,
                           (degree / degree.sum()).log().float())


def _random_sequences(num_users=6, num_items=12, length=9, seed=0) -> UserSequences:
    g = np.random.default_rng(seed)
    items = np.concatenate([g.permutation(num_items)[:length] for _ in range(num_users)])
    users = np.repeat(np.arange(num_users), length)
    times = np.tile(np.arange(length), num_users)
    return UserSequences(users, items, times, np.zeros(len(users)), num_users, num_items)


def test_masked_item_objective_counts_only_hidden_positions():
    torch.manual_seed(0)
    seq = _random_sequences()
    ctx = _context(seq, 12)
    model = BERT4Rec(6, 12, embedding_dim=8, heads=2, layers=1, dropout=0.0, max_len=9, mask_prob=0.3).eval()
    users = torch.arange(6)
    torch.manual_seed(5)
    loss = model.training_loss(users, ctx)["masked_ce"]
    torch.manual_seed(5)  # the same draw, by hand
    tokens = seq.batch(users, ("train",), 9)
    masked = mask_positions(tokens >= 0, 0.3)
    assert masked.any(dim=1).all() and not masked[tokens < 0].any()
    item_emb = model.item_representations(ctx.graph)
    h = model.hidden(tokens.masked_fill(masked, model.mask_token), item_emb)  # [B, W, d]
    logits = h[masked] @ item_emb.T  # [N, I]
    expected = -(logits.log_softmax(-1).gather(1, tokens[masked].unsqueeze(1))).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # the visible positions' targets do not enter: changing a visible item changes the inputs only
    assert masked.sum() < (tokens >= 0).sum()


def test_mask_positions_always_hides_something_and_never_padding():
    valid = torch.tensor([[False, True, True], [False, False, False], [True, True, True]])
    for seed in range(20):
        torch.manual_seed(seed)
        m = mask_positions(valid, 0.01)
        assert not m[~valid].any() and m[0].any() and m[2].any() and not m[1].any()


def test_sasrec_causal_mask_no_position_sees_the_future():
    torch.manual_seed(0)
    model = SASRec(3, 20, embedding_dim=16, heads=2, layers=2, dropout=0.0, max_len=10).eval()
    item_emb = model.item_representations(_context(_random_sequences(3, 20), 20).graph)
    a = torch.tensor([[-1, 3, 4, 5, 6, 7]])
    b = torch.tensor([[-1, 3, 4, 9, 1, 2]])  # differs from position 3 on
    ha, hb = model.hidden(a, item_emb), model.hidden(b, item_emb)
    assert torch.allclose(ha[:, :3], hb[:, :3], atol=1e-6)  # positions 0-2 see nothing of 3-5
    assert not torch.allclose(ha[:, 3:], hb[:, 3:], atol=1e-4)
    mask = attention_mask(a >= 0, causal=True)[0, 0]
    assert not mask.triu(1).any()  # nothing above the diagonal: no future key
    # BERT4Rec is bidirectional: an early position does see later items
    bert = BERT4Rec(3, 20, embedding_dim=16, heads=2, layers=1, dropout=0.0, max_len=10).eval()
    assert not torch.allclose(bert.hidden(a, item_emb)[:, 1], bert.hidden(b, item_emb)[:, 1], atol=1e-4)


def test_left_padding_does_not_change_a_users_representation():
    torch.manual_seed(0)
    ctx = _context(_random_sequences(3, 20), 20)
    for model in (SASRec(3, 20, embedding_dim=16, dropout=0.0, max_len=10),
                  BERT4Rec(3, 20, embedding_dim=16, dropout=0.0, max_len=10)):
        model.eval()
        item_emb = model.item_representations(ctx.graph)
        short = model.user_representations(torch.tensor([[3, 4, 5]]), item_emb, torch.tensor([0]))
        padded = model.user_representations(torch.tensor([[-1, -1, 3, 4, 5]]), item_emb, torch.tensor([0]))
        assert torch.allclose(short, padded, atol=1e-5)


def test_two_tower_loss_is_the_logq_corrected_in_batch_softmax_of_its_towers(make_cfg):
    from mmrec.train import build_module

    cfg = make_cfg(["model=two_tower", "logger=none"])
    objects = build_module(cfg)
    module = objects["module"]
    model, ctx = module.encoder, module._context()
    users, pos = torch.tensor([0, 1, 2, 3]), torch.tensor([5, 7, 5, 9])
    torch.manual_seed(0)
    loss = model.training_loss((users, pos), ctx)["loss"]
    item_emb = model.item_representations(ctx.graph, ctx.features)
    u = model.user_representations(ctx.sequences.batch(users, ("train",), model.max_len, exclude=pos), item_emb, users)
    degree = ctx.train_matrix.item_degree().double()
    log_q = (4 * degree / degree.sum()).log()[pos].float()  # 4 pairs drawn: the expected copies of each item
    logits = u @ item_emb[pos].T / model.temperature - log_q  # [4, 4]
    logits[0, 2] = logits[2, 0] = float("-inf")  # rows 0 and 2 share item 5: not each other's negative
    expected = torch.nn.functional.cross_entropy(logits, torch.arange(4))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # the user tower never reads the positive it is trained to predict
    hist = ctx.sequences.batch(users, ("train",), model.max_len, exclude=pos)
    assert not (hist == pos.unsqueeze(1)).any()


def test_mixed_negatives_logq_is_the_expected_count_under_both_draws(make_cfg):
    from mmrec.train import build_module

    module = build_module(make_cfg(["model=two_tower", "model.encoder.uniform_negatives=3", "logger=none"]))["module"]
    model, ctx = module.encoder, module._context()
    users, pos = torch.tensor([0, 1]), torch.tensor([5, 7])
    torch.manual_seed(3)
    loss = model.training_loss((users, pos), ctx)["loss"]
    torch.manual_seed(3)  # the same uniform draw, by hand
    catalogue = ctx.train_matrix.catalogue
    cand = torch.cat([pos, catalogue[torch.randint(len(catalogue), (3,))]])  # [2 + 3]
    item_emb = model.item_representations(ctx.graph, ctx.features)
    u = model.user_representations(ctx.sequences.batch(users, ("train",), model.max_len, exclude=pos), item_emb, users)
    degree = ctx.train_matrix.item_degree().double()
    q = 2 * degree / degree.sum() + 3 / len(catalogue)  # B p_j + M / C
    logits = u @ item_emb[cand].T / model.temperature - q[cand].log().float()  # [2, 5]
    same = cand.unsqueeze(0) == pos.unsqueeze(1)
    same[0, 0] = same[1, 1] = False
    expected = torch.nn.functional.cross_entropy(logits.masked_fill(same, float("-inf")), torch.arange(2))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_sasrec_bce_option_uses_sampled_true_negatives():
    torch.manual_seed(0)
    seq = _random_sequences(num_users=4, num_items=30, length=8)
    ctx = _context(seq, 30)
    model = SASRec(4, 30, embedding_dim=8, heads=2, layers=1, dropout=0.0, max_len=8, loss="bce", negatives=2).eval()
    users = torch.arange(4)
    torch.manual_seed(1)
    loss = model.training_loss(users, ctx)["bce"]
    torch.manual_seed(1)
    s = seq.batch(users, ("train",), 9)
    inputs, targets = s[:, :-1], s[:, 1:]
    use = (inputs >= 0) & (targets >= 0)
    item_emb = model.item_representations(ctx.graph)
    h = model.hidden(inputs, item_emb)[use]
    row = users.unsqueeze(1).expand_as(use)[use]
    ranks = (torch.rand(len(row), 2) * ctx.train_matrix.num_negatives(row).unsqueeze(1)).long()
    neg = ctx.train_matrix.nth_negative(row.unsqueeze(1), ranks)
    assert not ctx.train_matrix.contains(row.unsqueeze(1), neg).any()  # never one of the user's items
    pos_s, neg_s = (h * item_emb[targets[use]]).sum(-1), torch.einsum("nd,nkd->nk", h, item_emb[neg])
    expected = (-torch.nn.functional.logsigmoid(pos_s) - torch.nn.functional.logsigmoid(-neg_s).mean(1)).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_a_batch_without_next_item_pairs_gives_a_zero_loss_not_nan_and_such_users_are_not_drawn(make_cfg):
    seq = UserSequences([0, 1, 0, 1], [3, 4, 5, 6], [1, 1, 2, 2], [0, 0, 1, 1], 2, 8)  # one training item each
    ctx = _context(seq, 8)
    out = SASRec(2, 8, embedding_dim=8, heads=2, layers=1).training_loss(torch.tensor([0, 1]), ctx)
    assert out["loss"].item() == 0.0 and out["loss"].requires_grad
    with pytest.raises(ValueError, match="max_len must be >= 2"):
        BERT4Rec(2, 8, max_len=1)
    from mmrec.train import build_module

    objects = build_module(make_cfg(["model=sasrec", "logger=none"]))
    dm = objects["datamodule"]
    drawn = torch.cat(list(dm.train_dataloader()))
    counts = dm.data.train_matrix.counts()
    assert dm.min_history == 2 and bool((counts[drawn] >= 2).all())
    assert sorted(drawn.tolist()) == torch.nonzero(counts >= 2).squeeze(1).tolist()


# -- end to end: train, evaluate through the one Evaluator, export, serve ----------------
@pytest.fixture(scope="module")
def history_runs(tmp_path_factory, data_dir):
    from mmrec.export import export_run

    root = tmp_path_factory.mktemp("history")
    runs = {}
    for model, extra in (("two_tower", []), ("sasrec", ["fusion=concat"]), ("bert4rec", [])):
        run, objects = train_demo(root, data_dir, model, extra)
        runs[model] = (run, export_run(run), objects)
    return runs


@pytest.mark.parametrize("model", ["two_tower", "sasrec", "bert4rec"])
def test_served_lists_are_the_evaluated_ranking(history_runs, model):
    from mmrec.serving.recommender import Recommender

    run, bundle, objects = history_runs[model]
    module = objects["module"]
    rec = Recommender.load(bundle, content_candidates=0)
    users = torch.tensor([0, 3, 7])
    top, _ = module.recommend(users, 10, "known")  # the evaluation's ranking of test time
    served = [[r.item for r in lst] for lst in rec.recommend([rec.user_raw[u] for u in users.tolist()], k=10)]
    assert served == [[rec.item_raw[i] for i in row] for row in top.tolist()]


def test_content_sequential_model_ranks_cold_items_and_id_only_does_not(history_runs):
    sasrec_content = history_runs["sasrec"][2]["module"]
    bert_ids = history_runs["bert4rec"][2]["module"]
    assert sasrec_content.unrankable_items() is None  # fusion=concat: cold items have content
    assert bert_ids.unrankable_items() is not None and bool(bert_ids.unrankable_items().any())
    assert history_runs["sasrec"][2]["encoder"].uses_content and not history_runs["bert4rec"][2]["encoder"].uses_content


def test_new_visitors_go_through_the_trained_user_tower(history_runs):
    from mmrec.serving.recommender import Recommender

    run, bundle, objects = history_runs["two_tower"]
    module = objects["module"]
    rec = Recommender.load(bundle)
    assert rec.fold_in_rule == "tower"  # auto: the bundle has a user tower
    # a known user's vector in the bundle is the tower over their known history; a visitor
    # who liked the same items (oldest first) gets the same vector at request time
    for user in (0, 5, 11):
        liked = module.sequences.batch(torch.tensor([user]), ("train", "valid"), module.encoder.max_len)[0]
        liked = liked[liked >= 0]
        visitor = rec.user_vector_for_items(liked.numpy())
        assert torch.allclose(visitor, rec.user_vectors[user], atol=1e-5)
    raw = [rec.item_raw[i] for i in liked.tolist()]
    lists = rec.recommend_for_items(raw, k=5)
    assert len(lists) == 5 and not set(r.item for r in lists) & set(raw)
    assert Recommender.load(bundle, fold_in="mean").fold_in_rule == "mean"


def test_a_visitor_through_the_http_api_gets_the_user_tower_ranking(history_runs):
    """End to end: the served page's POST /recommendations for liked items ranks the catalogue
    by the trained user tower's vector for those items."""
    from fastapi.testclient import TestClient

    from mmrec.serving.app import create_app
    from mmrec.serving.recommender import Recommender

    run, bundle, objects = history_runs["two_tower"]
    module = objects["module"]
    liked = [3, 8, 21]
    with torch.no_grad():
        item_emb = module.encoder.item_representations(module.graph, module.features)
        u = module.encoder.user_representations(torch.tensor([liked]), item_emb, torch.tensor([0]))  # [1, d]
        scores = (u @ item_emb.T)[0]
    scores[liked] = float("-inf")
    if module.unrankable_items() is not None:
        scores[module.unrankable_items()] = float("-inf")
    expected = scores.topk(5).indices.tolist()
    app = create_app(lambda: Recommender.load(bundle, content_candidates=0))
    with TestClient(app) as client:
        item_raw = client.app.state.recommender.item_raw
        items = client.post("/recommendations", json={"items": [item_raw[i] for i in liked], "k": 5}).json()["items"]
    assert [r["item"] for r in items] == [item_raw[i] for i in expected]


def test_mean_fold_in_bundle_refuses_the_tower(history_runs):
    from mmrec.serving.recommender import Recommender

    with pytest.raises(ValueError, match="no user tower"):
        Recommender.load(history_runs["sasrec"][1], fold_in="tower")


def test_scored_samplers_are_refused_for_history_models(tmp_path):
    from mmrec.config_check import ConfigError, check_config

    cfg = compose_cfg(["model=sasrec", "sampler=dns", f"paths.data_dir={tmp_path}"] + SMALL_DEMO)
    with pytest.raises(ConfigError, match="sampler=uniform"):
        check_config(cfg)
    cfg = compose_cfg(["model=sasrec", "model.encoder.loss=softmax", f"paths.data_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="losses"):
        check_config(cfg)


def test_history_masking_is_configurable_for_repeat_consumption(make_cfg):
    from mmrec.core.interactions import InteractionMatrix
    from mmrec.evaluation.evaluator import HISTORY, Evaluator

    # user 0 consumed item 1 in training and again in test (a repeat); the model scores item 1 first
    train = InteractionMatrix([0, 0], [1, 2], 1, 4)
    test = InteractionMatrix([0], [1], 1, 4)
    splits = {"train": train, "valid": InteractionMatrix([], [], 1, 4), "test": test}
    scores = torch.tensor([[0.0, 3.0, 2.0, 1.0]])
    score_fn = lambda users, out=None: scores[users].clone()  # noqa: E731
    masked = Evaluator(splits, ItemSets(torch.ones(4, dtype=torch.bool)), ks=[1])
    repeats = Evaluator(splits, ItemSets(torch.ones(4, dtype=torch.bool)), ks=[1], history={s: () for s in HISTORY})
    assert masked.evaluate(score_fn, "test")["recall@1"] == 0.0  # a known item is never ranked
    assert repeats.evaluate(score_fn, "test")["recall@1"] == 1.0
    from mmrec.train import build_module

    module = build_module(make_cfg(["evaluation.mask_history=false", "logger=none"]))["module"]
    assert all(module.evaluator.history(s) == [] for s in ("valid", "test"))


def test_id_dropout_leaves_out_whole_id_rows_in_training_only(make_cfg):
    from mmrec.train import build_module

    module = build_module(make_cfg(["model=two_tower", "model.encoder.id_dropout=0.5", "logger=none"]))["module"]
    model, graph, features = module.encoder, module.graph, module.features
    with torch.no_grad():
        content = torch.nn.functional.normalize(model.fusion(features), dim=1)  # the tower without IDs
        model.eval()
        evaluated = model.item_representations(graph, features)
        model.train()
        torch.manual_seed(0)
        trained = model.item_representations(graph, features)
    warm = graph.item_sets.warm
    no_id = torch.isclose(trained, content, atol=1e-6).all(1)
    assert 0.35 < no_id[warm].float().mean() < 0.65  # about half the warm items lost their ID this step
    assert bool(no_id[~warm].all())  # cold items never had one
    assert not bool(torch.isclose(evaluated, content, atol=1e-6).all(1)[warm].any())  # evaluation: every ID kept
