"""Training and evaluating the learned ranking stage (:mod:`mmrec.serving.two_stage`).

Without leakage, in three steps:

1. **Train-only view.** Candidates and features come from the run's model (fitted on the
   training interactions; its epoch selected on validation, as for every run) and from the
   training histories alone: co-occurrence, popularity, item ages and a history model's user
   vectors (:func:`train_view`). No validation interaction is in any of them (tested).
2. **Ranker.** LightGBM ``lambdarank`` learns to order each validation user's candidates,
   labels = the user's validation items. Its hyper-parameters (a small grid, the number of
   boosting rounds by early stopping) are chosen on held-out validation users (user folds,
   each held out in turn); the chosen setting is refitted on all of them (:func:`fit_ranker`).
3. **Test.** The bundle's own view (training + validation histories, as at serving) ranks
   each test user: the union by the ranker, every other item after it in the model's order,
   training and validation items excluded: the same full-ranking evaluation as every run
   (:func:`evaluate_bundle`), so "model alone" and "union + ranker" are compared on one ruler.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from mmrec.serving.two_stage import SOURCES, StageData, TwoStage, _group_codes

log = logging.getLogger(__name__)


@dataclass
class RankerSettings:
    """The ``ranker`` choice of ``python -m mmrec.export`` (``conf/ranker/lightgbm.yaml``).

    Args:
        sizes: candidates proposed per source (:data:`~mmrec.serving.two_stage.SOURCES`).
        recent: latest history items the content and co-occurrence sources start from.
        neighbours: co-occurrence neighbours kept per item.
        folds: validation users are cut into this many folds: each setting is early-stopped
            and scored on each fold held out in turn.
        grid: LightGBM parameters tried (lists: every combination).
        max_rounds, early_stopping: boosting rounds at most, and rounds without a held-out gain.
        eval_at: the NDCG cut-off that early stopping and the choice use.
        seed: of the folds and of LightGBM.
        batch_users: users whose candidates are computed at once.
    """

    sizes: dict[str, int] = field(default_factory=lambda: {"model": 100, "content": 50, "cooccurrence": 50,
                                                           "popular": 20})
    recent: int = 10
    neighbours: int = 50
    folds: int = 5
    grid: dict[str, list] = field(default_factory=lambda: {"num_leaves": [7, 15, 31], "learning_rate": [0.05],
                                                           "min_child_samples": [20, 100]})
    max_rounds: int = 500
    early_stopping: int = 30
    eval_at: int = 20
    seed: int = 0
    batch_users: int = 256


def csr_with_times(interactions: pd.DataFrame, splits: tuple[int, ...], num_users: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(indptr [U + 1], items, times)`` of each user's interactions in ``splits``, oldest
    first (ties by item), one entry per (user, item): the histories of a view."""
    known = interactions[interactions["split"].isin(list(splits))]
    known = known.sort_values(["user", "timestamp", "item"], kind="stable").drop_duplicates(["user", "item"])
    indptr = np.zeros(num_users + 1, dtype=np.int64)
    indptr[1:] = np.cumsum(np.bincount(known["user"].to_numpy(), minlength=num_users))
    return indptr, known["item"].to_numpy().astype(np.int64), known["timestamp"].to_numpy().astype(np.float64)


def item_groups(items: pd.DataFrame, column: str | None) -> torch.Tensor | None:
    """Integer group codes of an items-table column (the category-match feature), or ``None``."""
    if not column:
        return None
    codes, _ = _group_codes(items[column].astype(str))  # as export writes the bundle's group column
    return torch.as_tensor(codes)


def view(run, splits: tuple[int, ...], user_split: str, neighbours: int, group_column: str | None = None
         ) -> tuple[StageData, torch.Tensor]:
    """``(StageData, user vectors [U, d])`` of ``run`` from the interactions of ``splits``
    (``(0,)``: the train-only view; ``(0, 1)``: what the bundle holds); ``user_split``: the
    ranked split whose known history a history model's user vectors come from."""
    ds, features = run.data.dataset, run.data.features
    with torch.no_grad():
        user_vectors, item_vectors = run.vectors(user_split)
    indptr, indices, times = csr_with_times(ds.interactions, splits, ds.num_users)
    unrankable = run.unrankable_items()
    rankable = torch.ones(ds.num_items, dtype=torch.bool) if unrankable is None else ~unrankable.cpu()
    content = features.content_vectors()
    data = StageData.build(item_vectors.detach().float().cpu(), None if content is None else content.float(),
                           dict(features.dims), indptr, indices, times, rankable,
                           item_groups(ds.items, group_column), neighbours)
    return data, user_vectors.detach().float().cpu()


def train_view(run, settings: RankerSettings, group_column: str | None = None) -> tuple[StageData, torch.Tensor]:
    """The view the ranker learns on: training interactions only."""
    return view(run, (0,), "valid", settings.neighbours, group_column)


def _rows(run, stage: TwoStage, user_vectors: torch.Tensor, users: np.ndarray, label_split: int, batch: int
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(features [P, F], labels [P], group sizes [n], users with candidates [n])`` of
    ``users``' candidates, labelled by their ``label_split`` interactions."""
    inter = run.data.dataset.interactions
    truth = inter[inter["split"] == label_split]
    keys = np.unique(truth["user"].to_numpy() * stage.data.num_items + truth["item"].to_numpy())
    xs, ys, sizes, kept = [], [], [], []
    for start in range(0, len(users), batch):
        us = users[start:start + batch]
        c = stage.candidates(user_vectors[torch.as_tensor(us)], [stage.data.history(int(u)) for u in us])
        row = us[c.pairs[:, 0].numpy()]
        key = row * stage.data.num_items + c.pairs[:, 1].numpy()
        ys.append(np.isin(key, keys).astype(np.float32))
        xs.append(c.features)
        counts = np.bincount(c.pairs[:, 0].numpy(), minlength=len(us))
        sizes.append(counts[counts > 0])
        kept.append(us[counts > 0])
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(sizes), np.concatenate(kept)


def _only_positive_groups(x, y, sizes):
    """The groups (users) with at least one relevant candidate: the others teach lambdarank nothing."""
    ends = np.cumsum(sizes)
    has = np.add.reduceat(y, ends - sizes) > 0 if len(sizes) else np.zeros(0, bool)
    keep = np.repeat(has, sizes)
    return x[keep], y[keep], sizes[has]


def _grid(grid: dict[str, list]) -> list[dict[str, Any]]:
    combos: list[dict[str, Any]] = [{}]
    for key, values in grid.items():
        combos = [{**c, key: v} for c in combos for v in (values if isinstance(values, (list, tuple)) else [values])]
    return combos


def fit_ranker(run, settings: RankerSettings, group_column: str | None = None):
    """Fit the LightGBM ranker of ``run`` (see the module docstring); returns ``(booster,
    report)``. Validation users are cut into ``settings.folds`` folds; every grid setting is
    fitted on all folds but one and early-stopped on the held-out one, in turn; the setting
    with the best mean held-out NDCG is refitted on every validation user for the mean of its
    best round counts. The report holds the chosen setting and the out-of-fold full-ranking
    metrics of the validation users (each ranked by the fold model that did not see it),
    against the model alone."""
    import lightgbm as lgb

    start = time.perf_counter()
    data, user_vectors = train_view(run, settings, group_column)
    stage = TwoStage(data, settings.sizes, settings.recent)
    inter = run.data.dataset.interactions
    users = np.unique(inter.loc[inter["split"] == 1, "user"].to_numpy())
    if len(users) < 2 * settings.folds:
        raise ValueError(f"the ranker learns from validation users and {run.data.dataset.root} has {len(users)}: "
                         f"too few for {settings.folds} folds (ranker.folds)")
    fold_of = np.random.default_rng(settings.seed).permutation(len(users)) % settings.folds  # [n] user -> fold
    x, y, sizes, kept = _rows(run, stage, user_vectors, users, 1, settings.batch_users)
    group_fold = fold_of[np.searchsorted(users, kept)]  # [groups] fold of each user with candidates
    threads = max(1, torch.get_num_threads())
    base = {"objective": "lambdarank", "metric": "ndcg", "eval_at": [settings.eval_at], "verbosity": -1,
            "seed": settings.seed, "deterministic": True, "force_row_wise": True, "num_threads": threads}
    names = stage.feature_names

    def part(select_groups: np.ndarray):
        rows = np.repeat(select_groups, sizes)
        return _only_positive_groups(x[rows], y[rows], sizes[select_groups])

    tried = []
    for params in _grid(settings.grid):
        scores, rounds, boosters = [], [], []
        for f in range(settings.folds):
            (xf, yf, gf), (xe, ye, ge) = part(group_fold != f), part(group_fold == f)
            booster = lgb.train({**base, **params}, lgb.Dataset(xf, yf, group=gf, feature_name=names),
                                num_boost_round=settings.max_rounds,
                                valid_sets=[lgb.Dataset(xe, ye, group=ge, feature_name=names)],
                                callbacks=[lgb.early_stopping(settings.early_stopping, verbose=False)])
            scores.append(float(booster.best_score["valid_0"][f"ndcg@{settings.eval_at}"]))
            rounds.append(int(booster.best_iteration))
            boosters.append(booster)
        tried.append({"params": params, "rounds": int(round(float(np.mean(rounds)))), "fold_rounds": rounds,
                      "held_out_ndcg": round(float(np.mean(scores)), 5), "boosters": boosters})
        log.info("ranker %s: held-out candidate NDCG@%d %.4f (mean of %d folds), rounds %s", params, settings.eval_at,
                 np.mean(scores), settings.folds, rounds)
    best = max(tried, key=lambda t: t["held_out_ndcg"])
    # out-of-fold full rankings of the validation users: each by the fold model that did not see it
    k = settings.eval_at
    model_only = _evaluate_users(run, lambda us, out=None: user_vectors[us] @ data.item_vectors.T, torch.as_tensor(users))
    evaluation = run.evaluator.start("valid", _two_stage_scorer(stage, user_vectors), run.unrankable_items())
    for f, booster in enumerate(best["boosters"]):
        stage.ranker = lambda features, b=booster: b.predict(features, num_iteration=b.best_iteration)
        fold_users = torch.as_tensor(users[fold_of == f])
        for begin in range(0, len(fold_users), 256):
            evaluation.update(fold_users[begin:begin + 256])
    two = evaluation.compute()
    x_all, y_all, g_all = part(np.ones(len(sizes), dtype=bool))
    final = lgb.train({**base, **best["params"]}, lgb.Dataset(x_all, y_all, group=g_all, feature_name=names),
                      num_boost_round=max(1, best["rounds"]))
    report = {
        "kind": "lightgbm", "objective": "lambdarank", "features": names, "sizes": stage.sizes,
        "recent": settings.recent, "neighbours": settings.neighbours, "params": best["params"],
        "rounds": best["rounds"], "folds": settings.folds,
        "tried": [{k_: v for k_, v in t.items() if k_ != "boosters"} for t in tried],
        "validation_users": int(len(users)),
        "held_out": {f"model/recall@{k}": model_only[f"recall@{k}"], f"model/ndcg@{k}": model_only[f"ndcg@{k}"],
                     f"ranker/recall@{k}": two[f"recall@{k}"], f"ranker/ndcg@{k}": two[f"ndcg@{k}"]},
        "fit_rows": int(len(y)), "fit_seconds": round(time.perf_counter() - start, 2),
    }
    log.info("ranker: validation users out of fold recall@%d %.4f (model alone %.4f) with %s, %d rounds", k,
             two[f"recall@{k}"], model_only[f"recall@{k}"], best["params"], best["rounds"])
    return final, report


def _two_stage_scorer(stage: TwoStage, user_vectors: torch.Tensor):
    """A :data:`~mmrec.evaluation.evaluator.ScoreFn` ranking by :meth:`TwoStage.scores`, each
    user's view history excluded from the candidates."""
    def score(users: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        us = users.tolist()
        return stage.scores(user_vectors[users], [stage.data.history(u) for u in us])[0]
    return score


def _evaluate_users(run, score_fn, users: torch.Tensor, split: str = "valid", lists: bool = False) -> dict[str, float]:
    evaluation = run.evaluator.start(split, score_fn, run.unrankable_items(), lists)
    for begin in range(0, len(users), 256):
        evaluation.update(users[begin:begin + 256])
    return evaluation.compute()


def evaluate_bundle(run, bundle, k: int = 20) -> dict[str, Any]:
    """Test metrics of the bundle's model alone and of its union + ranker (both full
    rankings, training and validation items excluded, beyond-accuracy included), and each
    candidate source's recall@its size of the test items, and the union's."""
    from mmrec.serving.two_stage import load_two_stage

    stage = load_two_stage(bundle)
    user_vectors = torch.from_numpy(np.array(bundle.arrays["user_vectors"], dtype=np.float32))
    users = run.evaluator.users("test")
    model_only = _evaluate_users(run, lambda us, out=None: user_vectors[us] @ stage.data.item_vectors.T, users,
                                 "test", lists=True)
    two = _evaluate_users(run, _two_stage_scorer(stage, user_vectors), users, "test", lists=True)
    # recall of each source's proposals (and of their union) of the test items
    inter = run.data.dataset.interactions
    test = inter[inter["split"] == 2]
    keys = np.unique(test["user"].to_numpy() * stage.data.num_items + test["item"].to_numpy())
    found = np.zeros(len(SOURCES) + 1)
    us_all = users.numpy()
    for begin in range(0, len(us_all), 256):
        us = us_all[begin:begin + 256]
        c = stage.candidates(user_vectors[torch.as_tensor(us)], [stage.data.history(int(u)) for u in us])
        key = us[c.pairs[:, 0].numpy()] * stage.data.num_items + c.pairs[:, 1].numpy()
        hit = np.isin(key, keys)
        found[:-1] += c.proposed.numpy()[hit].sum(0)
        found[-1] += hit.sum()
    total = max(len(keys), 1)
    sources = {f"{s}@{stage.sizes[s]}": float(found[j] / total) for j, s in enumerate(SOURCES) if stage.sizes[s]}
    sources["union"] = float(found[-1] / total)
    return {"model": model_only, "two_stage": two, "source_recall": sources}
