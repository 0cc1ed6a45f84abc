"""Recommending from bundles: pipeline quality, new-user fold-in, and latency -> experiments/RESULTS.md.

Usage (from the repository root):

    python experiments/bench_recommend.py pipeline --runs <run folder> [<run folder> ...] --tag ml100k
    python experiments/bench_recommend.py foldin   --runs <run folder> [...] --tag ml100k
    python experiments/bench_recommend.py latency  [--sizes 100000 1000000] [--baby-run <run folder>]

``pipeline``: each run (a finished ``mmrec.train`` run, validation-selected) is exported, and
its test users get recommendations through the serving pipeline in several variants: exact
full ranking, FAISS (HNSW) retrieval + ranking, + MMR at lambda 0.9 / 0.7 / 0.5 (diversity
0.1 / 0.3 / 0.5), + DPP; Recall / NDCG@20 against the test items (training and validation
items excluded, as in evaluation), coverage@20, ILD@20 in content space and cold exposure@20,
and a plot of the accuracy-diversity trade-off.

``foldin``: 20% of the test users (seeded) are treated as new visitors who reveal n = 1, 3,
5 of their training items; Recall / NDCG@20 of the folded-in vector (rules ``mean`` and
``ridge``, and a two-tower bundle's user tower; only the revealed items excluded) against the same users with their trained
vectors (their whole history excluded) and against popularity (revealed items excluded).

``latency``: in one process, one thread: p50 / p99 of ``Recommender.recommend`` for one user
at a time, k = 20, without and with MMR (20 from 200 candidates), exact and FAISS HNSW, on
synthetic 64-d catalogues (and a Baby LightGCN bundle when given); FAISS recall@100 against
exact search, build time and index size.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, ROOT, git_commit, machine, write_section  # noqa: E402

K = 20


def _export(run: Path, out: Path, index: dict | None = None) -> Path:
    from mmrec.export import export_run

    return export_run(run, out, force=True, index=index)


def _test_truth(rec, run: Path):
    """``{user row: set(test item rows)}`` of the run's dataset."""
    from mmrec.data.prepared import load_prepared
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(run / "config.yaml")
    ds = load_prepared(cfg.dataset.root, verify=False)
    users, items = ds.split("test")
    truth: dict[int, set[int]] = {}
    for u, i in zip(users.tolist(), items.tolist()):
        truth.setdefault(u, set()).add(i)
    return truth, ds


def _metrics(lists: list[list[int]], truth: list[set[int]], rec) -> dict[str, float]:
    """Recall / NDCG@20 and coverage, ILD (content space), cold exposure of ``lists``."""
    from mmrec.evaluation import beyond
    from mmrec.evaluation.metrics import ndcg, recall

    top = torch.full((len(lists), K), -1, dtype=torch.long)
    for r, items in enumerate(lists):
        top[r, :len(items)] = torch.tensor(items[:K], dtype=torch.long)
    hits = torch.tensor([[i in t for i in row.tolist()] for row, t in zip(top, truth)])
    num_pos = torch.tensor([len(t) for t in truth])
    cold = torch.as_tensor(np.asarray(rec.popularity) == 0)
    return {"recall@20": float(recall(hits, num_pos, [K]).mean()), "ndcg@20": float(ndcg(hits, num_pos, [K]).mean()),
            "coverage@20": float(beyond.item_coverage(top, [K], rec.num_items)[0]),
            "ild@20": float(beyond.intra_list_diversity(top, [K], rec.similarity_vectors)[0]),
            "cold_exposure@20": float(beyond.cold_exposure(top, [K], cold)[0])}


VARIANTS = [("exact full ranking", "exact", "mmr", 0.0), ("FAISS HNSW32 + ranking", "faiss", "mmr", 0.0),
            ("+ MMR lambda 0.9", "faiss", "mmr", 0.1), ("+ MMR lambda 0.7", "faiss", "mmr", 0.3),
            ("+ MMR lambda 0.5", "faiss", "mmr", 0.5), ("+ DPP (diversity 0.3)", "faiss", "dpp", 0.3),
            ("+ DPP (diversity 0.5)", "faiss", "dpp", 0.5)]


def phase_pipeline(runs: list[Path], tag: str) -> None:
    from mmrec.serving.bundle import load_bundle
    from mmrec.serving.recommender import Recommender

    rows, points = [], []
    for run in runs:
        bundle_dir = _export(run, OUT / "bundles" / f"{tag}_{run.name}", {"factory": "HNSW32"})
        bundle = load_bundle(bundle_dir)
        recs = {name: Recommender(bundle, index=index, rerank=rerank,
                                  index_params={"ef_search": 256} if index == "faiss" else None)
                for name, index, rerank, _ in VARIANTS}
        first = next(iter(recs.values()))
        truth, ds = _test_truth(first, run)
        users = sorted(truth)
        raw = [first.user_raw[u] for u in users]
        model = bundle.card["model"]
        expected = bundle.card["metrics"].get("test/recall@20")
        for name, _, _, diversity in VARIANTS:
            rec = recs[name]
            start = time.perf_counter()
            lists = [[rec.item_index[r.item] for r in recs_u]
                     for recs_u in rec.recommend(raw, k=K, diversity=diversity)]
            seconds = time.perf_counter() - start
            m = _metrics(lists, [truth[u] for u in users], rec)
            rows.append({"model": model, "variant": name, **m, "ms_per_user": 1000 * seconds / len(users)})
            points.append((model, name, m))
            print(model, name, m, flush=True)
        exact = next(r for r in rows if r["model"] == model and r["variant"] == VARIANTS[0][0])
        rows[-len(VARIANTS)]["check"] = f"evaluation's test R@20: {expected:.4f}" if expected is not None else ""
        ann = next(r for r in rows if r["model"] == model and r["variant"] == VARIANTS[1][0])
        rel = (exact["recall@20"] - ann["recall@20"]) / max(exact["recall@20"], 1e-12)
        rows[-len(VARIANTS) + 1]["check"] = f"{100 * rel:.2f}% below exact (target <= 1%)"
    table = ["| model | pipeline | Recall@20 | NDCG@20 | coverage@20 | ILD@20 (content) | cold exposure@20 | ms / user | note |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['model']} | {r['variant']} | {r['recall@20']:.4f} | {r['ndcg@20']:.4f} | "
                     f"{r['coverage@20']:.4f} | {r['ild@20']:.4f} | {r['cold_exposure@20']:.4f} | "
                     f"{r['ms_per_user']:.2f} | {r.get('check', '')} |")
    plot = ROOT / "docs" / f"pipeline_tradeoff_{tag}.png"
    _plot_tradeoff(points, plot, tag)
    text = f"""## Recommending pipeline on {tag} (`experiments/bench_recommend.py pipeline`)

- Command: `python experiments/bench_recommend.py pipeline --runs {' '.join(str(r.relative_to(ROOT)) if r.is_relative_to(ROOT) else str(r) for r in runs)} --tag {tag}`
- Machine: {machine()}
- Date: {time.strftime('%Y-%m-%d')}, code: commit {git_commit()}
- Each run is a validation-selected checkpoint (seed 0 of the model table above), exported to a bundle; every test user
  gets 20 items from `Recommender.recommend` (training and validation items excluded, as in evaluation) through each
  pipeline; FAISS: HNSW32, efSearch 256, 200 candidates, plus 50 content candidates near the last 10 history items;
  MMR lambda = 1 - diversity; re-ranking over the 200 best candidates, in content space (fused raw features).
  "exact full ranking" must reproduce the evaluation's test Recall@20 (the one ranking path).

{chr(10).join(table)}

![accuracy-diversity trade-off](../docs/{plot.name})
"""
    write_section(f"pipeline_{tag}", text)
    print(text)


def _plot_tradeoff(points, path: Path, tag: str) -> None:
    """Recall@20 against ILD@20: per model, the MMR path and the DPP path, both from the ANN list."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    ax = fig.add_subplot()
    for m, model in enumerate(sorted({p[0] for p in points})):
        mine = {name: met for mod, name, met in points if mod == model}
        start = mine[VARIANTS[1][0]]
        for rerank, style, marker in (("MMR", "-", "o"), ("DPP", "--", "s")):
            chain = [("ANN", start)] + [(name.replace("+ ", "").replace("(diversity ", "d=").rstrip(")")
                                         .replace("lambda ", "λ="), met)
                                        for name, met in mine.items() if rerank in name]
            xs, ys = [c[1]["ild@20"] for c in chain], [c[1]["recall@20"] for c in chain]
            ax.plot(xs, ys, style, marker=marker, color=f"C{m}", label=f"{model}, {rerank}")
            for label, met in chain[1:]:
                ax.annotate(label.split(" ", 1)[-1], (met["ild@20"], met["recall@20"]), textcoords="offset points",
                            xytext=(4, 3), fontsize="x-small", color=f"C{m}")
        exact = mine[VARIANTS[0][0]]
        ax.plot([exact["ild@20"]], [exact["recall@20"]], marker="*", markersize=12, color=f"C{m}", linestyle="none")
    ax.set_xlabel("intra-list diversity@20 (content space)")
    ax.set_ylabel("test Recall@20")
    ax.set_title(f"{tag}: accuracy against diversity of the served lists (star: exact, first dot: ANN)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def phase_foldin(runs: list[Path], tag: str, share: float = 0.2, seed: int = 0) -> None:
    from mmrec.serving.bundle import load_bundle
    from mmrec.serving.recommender import Recommender

    from omegaconf import OmegaConf

    targets = [OmegaConf.load(run / "config.yaml").model.encoder._target_ for run in runs]
    rows = []
    for run in runs:
        bundle = load_bundle(_export(run, OUT / "bundles" / f"{tag}_{run.name}_foldin"))
        rec = Recommender(bundle, content_candidates=50)
        truth, ds = _test_truth(rec, run)
        train_u, train_i = ds.split("train")
        train_of: dict[int, list[int]] = {}
        for u, i in zip(train_u.tolist(), train_i.tolist()):
            train_of.setdefault(u, []).append(i)
        rng = np.random.default_rng(seed)
        users = sorted(u for u in truth if len(train_of.get(u, [])) >= 5)
        hidden = sorted(rng.choice(users, size=max(1, int(share * len(users))), replace=False).tolist())
        model = bundle.card["model"]
        if targets.count(bundle.card["model_target"]) > 1:  # several runs of one model: tell them apart
            model += f" ({run.name})"
        gold = [truth[u] for u in hidden]
        trained = [[rec.item_index[r.item] for r in recs] for recs in rec.recommend([rec.user_raw[u] for u in hidden], k=K)]
        rows.append({"model": model, "n": "all (trained vector)", "variant": "trained", **_metrics(trained, gold, rec)})
        popularity = np.argsort(-np.asarray(rec.popularity), kind="stable")
        for n in (1, 3, 5):
            revealed = {u: rng.choice(train_of[u], size=n, replace=False).tolist() for u in hidden}
            # a two-tower bundle also serves visitors through its user tower (the serving default for it)
            rules = ("mean", "ridge") + (("tower",) if "tower_weight" in bundle.arrays else ())
            for rule in rules:
                rec.visitors.fold_in_rule = rule  # the visitor encoder reads it per request
                lists = [[rec.item_index[r.item] for r in rec.recommend_for_items([rec.item_raw[i] for i in revealed[u]], k=K)]
                         for u in hidden]
                rows.append({"model": model, "n": n, "variant": f"fold-in ({rule})", **_metrics(lists, gold, rec)})
            pop = [[int(i) for i in popularity if i not in set(revealed[u]) and rec.rankable[int(i)]][:K] for u in hidden]
            rows.append({"model": model, "n": n, "variant": "popularity", **_metrics(pop, gold, rec)})
        print(pd.DataFrame(rows).to_string(), flush=True)
    table = ["| model | revealed items | vector | Recall@20 | NDCG@20 | coverage@20 |", "|---|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['model']} | {r['n']} | {r['variant']} | {r['recall@20']:.4f} | {r['ndcg@20']:.4f} | "
                     f"{r['coverage@20']:.4f} |")
    text = f"""## New users by fold-in on {tag} (`experiments/bench_recommend.py foldin`)

- Command: `python experiments/bench_recommend.py foldin --runs {' '.join(str(r.relative_to(ROOT)) if r.is_relative_to(ROOT) else str(r) for r in runs)} --tag {tag}`
- Machine: {machine()}
- Date: {time.strftime('%Y-%m-%d')}, code: commit {git_commit()}
- {int(share * 100)}% of the test users with at least 5 training items (seed {seed}) act as new visitors: they reveal n of their
  training items (drawn at random), get 20 items from `recommend_for_items` (only the revealed items excluded: the
  service knows nothing else of them), and are judged on their test items. "trained vector": the same users as known
  users (their trained vectors, whole history excluded). "popularity": the most popular items minus the revealed ones.
  "fold-in (tower)": a two-tower model's user tower over the revealed items, run at request time (the serving default
  for its bundles); mean / ridge fold its item vectors in as for the graph models.

{chr(10).join(table)}
"""
    write_section(f"foldin_{tag}", text)
    print(text)


def _synthetic_bundle(num_items: int, dim: int = 64, num_users: int = 10_000, seed: int = 0) -> Path:
    from mmrec.serving.bundle import write_bundle

    out = OUT / "bundles" / f"synthetic_{num_items}"
    if (out / "manifest.json").is_file():
        return out
    rng = np.random.default_rng(seed)
    # items: a mixture of 256 clusters (real catalogues are not isotropic noise); users near clusters too
    centres = rng.standard_normal((256, dim)).astype(np.float32)
    items = (centres[rng.integers(0, 256, num_items)] + 0.7 * rng.standard_normal((num_items, dim))).astype(np.float32)
    users = (centres[rng.integers(0, 256, num_users)] + 0.7 * rng.standard_normal((num_users, dim))).astype(np.float32)
    history_len = 20
    indptr = np.arange(0, (num_users + 1) * history_len, history_len, dtype=np.int64)
    indices = rng.integers(0, num_items, num_users * history_len).astype(np.int64)
    arrays = {"user_vectors": users, "item_vectors": items, "item_rankable": np.ones(num_items, dtype=bool),
              "item_popularity": rng.integers(1, 100, num_items).astype(np.int64), "history_indptr": indptr,
              "history_indices": indices}
    item_table = pd.DataFrame({"item": np.arange(num_items), "raw_id": [f"i{i}" for i in range(num_items)],
                               "title": [f"item {i}" for i in range(num_items)], "text": "", "image": ""})
    user_table = pd.DataFrame({"user": np.arange(num_users), "raw_id": [f"u{u}" for u in range(num_users)]})
    write_bundle(out, arrays, item_table, user_table, {"model": "synthetic", "dataset": f"synthetic_{num_items}"},
                 {"num_users": num_users, "num_items": num_items, "dim": dim, "score": "dot"}, force=True)
    return out


def _latency(rec, users: list[str], diversity: float, repeats: int) -> dict[str, float]:
    for u in users[:20]:  # warm-up
        rec.recommend([u], k=K, diversity=diversity)
    times = []
    for r in range(repeats):
        u = users[r % len(users)]
        start = time.perf_counter()
        rec.recommend([u], k=K, diversity=diversity)
        times.append(1000 * (time.perf_counter() - start))
    times.sort()
    return {"p50": times[len(times) // 2], "p99": times[int(0.99 * (len(times) - 1))]}


def phase_latency(sizes: list[int], baby_run: Path | None, repeats: int) -> None:
    import faiss
    import psutil

    from mmrec.core.interactions import RowItems
    from mmrec.serving.bundle import load_bundle
    from mmrec.serving.index import ExactIndex, FaissIndex
    from mmrec.serving.recommender import Recommender

    torch.set_num_threads(1)
    build_threads = faiss.omp_get_max_threads()
    catalogues = []
    if baby_run is not None:
        catalogues.append(("Baby LightGCN (7,050 items)", _export(baby_run, OUT / "bundles" / "baby_lightgcn")))
    catalogues += [(f"synthetic {n:,} items", _synthetic_bundle(n)) for n in sizes]
    rows, recall_rows = [], []
    for name, path in catalogues:
        bundle = load_bundle(path, verify=False)
        users = [bundle.users["raw_id"][i] for i in np.random.default_rng(1).integers(0, len(bundle.users), 500)]
        num_items = len(bundle.items)
        # latency: one thread; the FAISS index is built with every core first (its build time is in the next table)
        for index in ("exact", "faiss"):
            faiss.omp_set_num_threads(build_threads)
            rec = Recommender(bundle, index=index, content_candidates=0,
                              index_params={"factory": "HNSW32", "ef_search": 128} if index == "faiss" else None)
            faiss.omp_set_num_threads(1)
            reps = repeats if (index == "faiss" or num_items <= 200_000) else max(50, repeats // 10)
            for diversity, label in ((0.0, "top-20"), (0.3, "MMR 20 of 200")):
                lat = _latency(rec, users, diversity, reps)
                rows.append({"catalogue": name, "index": index, "list": label, **lat})
                print(rows[-1], flush=True)
        # recall against exact search, per factory and knob
        exact = ExactIndex(rec.item_vectors, rec.rankable)
        queries = rec.user_vectors[torch.as_tensor([rec.user_index[u] for u in users[:200]])].float()
        none = RowItems([np.zeros(0, dtype=np.int64)] * len(queries), num_items)
        truth, _ = exact.search(queries, 100, none)
        lists = max(64, min(4096, int(4 * num_items ** 0.5)))
        for factory, mips, knob, values in (("HNSW32", "l2", "efSearch", (64, 128, 256, 512)),
                                            ("HNSW32", "ip", "efSearch", (64, 128, 256, 512)),
                                            (f"IVF{lists},Flat", "l2", "nprobe", (8, 16, 32, 64))):
            faiss.omp_set_num_threads(build_threads)
            rss = psutil.Process().memory_info().rss
            built = FaissIndex(rec.item_vectors, rec.rankable, factory, mips=mips)
            rss_mb = (psutil.Process().memory_info().rss - rss) / 2**20
            size_mb = len(faiss.serialize_index(built.index)) / 2**20
            faiss.omp_set_num_threads(1)
            for value in values:
                faiss.ParameterSpace().set_index_parameter(built.index, knob, value)
                start = time.perf_counter()
                found, _ = built.search(queries, 100, none)
                ms = 1000 * (time.perf_counter() - start) / len(queries)
                recall = np.mean([len(set(a.tolist()) & set(b.tolist())) / 100 for a, b in zip(truth, found)])
                recall_rows.append({"catalogue": name, "index": f"{factory} ({mips}) {knob}={value}", "recall@100": recall,
                                    "ms_per_query": ms, "build_s": built.build_seconds, "index_mb": size_mb,
                                    "rss_mb": rss_mb})
                print(recall_rows[-1], flush=True)
            del built
    lat_table = ["| catalogue | retrieval | list | p50 ms | p99 ms |", "|---|---|---|---|---|"]
    for r in rows:
        lat_table.append(f"| {r['catalogue']} | {r['index']} | {r['list']} | {r['p50']:.2f} | {r['p99']:.2f} |")
    rec_table = [f"| catalogue | index | recall@100 vs exact | ms / query (k=100, 1 thread) | build s ({build_threads} threads) "
                 f"| index MB | RSS growth MB |", "|---|---|---|---|---|---|---|"]
    for r in recall_rows:
        rec_table.append(f"| {r['catalogue']} | {r['index']} | {r['recall@100']:.4f} | {r['ms_per_query']:.2f} | "
                         f"{r['build_s']:.1f} | {r['index_mb']:.0f} | {r['rss_mb']:.0f} |")
    text = f"""## Recommending latency, in process (`experiments/bench_recommend.py latency`)

- Command: `python experiments/bench_recommend.py latency --sizes {' '.join(map(str, sizes))}{' --baby-run ' + str(baby_run) if baby_run else ''} --repeats {repeats}`
- Machine: {machine()}
- Date: {time.strftime('%Y-%m-%d')}, code: commit {git_commit()}
- One thread (torch and FAISS) while timing; one user per call of `Recommender.recommend(k=20)`, its history excluded
  (20 items per synthetic user); {repeats} calls after 20 warm-up calls (exact search above 200k items: fewer); 200 model
  candidates; MMR over the 200 best candidates to 20 (diversity 0.3). Synthetic catalogues: 64-d vectors drawn around 256
  cluster centres, 10,000 users. FAISS rows of the latency table: HNSW32, efConstruction 200, efSearch 128, inner
  product as L2 on augmented vectors (`mips=l2`, the default); `ip`: FAISS's inner-product metric on the raw vectors.

{chr(10).join(lat_table)}

FAISS against exact search (200 users, top 100, nothing excluded):

{chr(10).join(rec_table)}

Targets (issue #15): p99 <= 2 ms at 7k items and <= 5 ms at 100k with MMR to 20 from 200 candidates; FAISS
recall@100 >= 0.98 at 1M items.
"""
    write_section("recommend_latency", text)
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("phase", choices=["pipeline", "foldin", "latency"])
    parser.add_argument("--runs", nargs="*", type=Path, default=[], help="finished mmrec.train run folders")
    parser.add_argument("--tag", default="ml100k", help="names the RESULTS section and the plot")
    parser.add_argument("--sizes", nargs="*", type=int, default=[100_000, 1_000_000], help="synthetic catalogue sizes")
    parser.add_argument("--baby-run", type=Path, default=None, help="a LightGCN run on Baby (latency at 7k items)")
    parser.add_argument("--repeats", type=int, default=1000, help="timed calls per latency row")
    args = parser.parse_args()
    if args.phase in ("pipeline", "foldin") and not args.runs:
        parser.error(f"{args.phase} needs --runs")
    for run in args.runs:
        if not (run / "metrics.json").is_file():
            parser.error(f"{run}: not a finished run folder (no metrics.json)")
    if args.phase == "pipeline":
        phase_pipeline([r.resolve() for r in args.runs], args.tag)
    elif args.phase == "foldin":
        phase_foldin([r.resolve() for r in args.runs], args.tag)
    else:
        phase_latency(args.sizes, args.baby_run, args.repeats)


if __name__ == "__main__":
    main()
