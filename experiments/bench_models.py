"""All models on one dataset: overall, warm-item and cold-item quality, speed, memory.

Usage (from the repository root):

    python experiments/bench_models.py --dataset demo             # 3 seeds per model
    python experiments/bench_models.py --dataset ml100k           # prepares ml100k first (modality_encoder=offline)
    python experiments/bench_models.py --dataset demo --seeds 0   # quick
    python experiments/bench_models.py --dataset ml100k --models lightgcn vbpr/concat \
        --samplers uniform dns popularity in_batch mixgcf           # samplers: quality and cost

Each run: `python -m mmrec.train dataset=<d> model=<m> seed=<s>` with the model's default
fusion, early stopping on validation Recall@20, the test split evaluated once on the
selected checkpoint. Cold items have no training interaction; their test metrics count only
cold relevant items in the full ranking.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, git_commit, machine, mean_std, run_parallel, run_train, write_section  # noqa: E402

# pop and random are reference points, evaluated without training (no epochs, no s/epoch); ials is
# fitted in closed form when the run is built (no epochs either)
MODELS = [("pop", "none"), ("random", "none"), ("ials", "none"), ("lightgcn", "none"), ("vbpr", "concat"), ("vbpr", "attention"), ("mmgcn", "late"),
          ("grcn", "late"), ("freedom", "graph_sum"), ("lattice", "graph_sum"),
          # users represented from their histories: content two-tower, sequential (ID-only and with content)
          ("two_tower", "concat"), ("sasrec", "none"), ("sasrec", "concat"), ("bert4rec", "none"),
          # self-supervised and newer rows (issue 27): ID-only, then multimodal; itemknn_cbf is a content kNN
          # baseline scored without training
          ("mf", "none"), ("simgcl", "none"), ("xsimgcl", "none"), ("layergcn", "none"),
          ("bm3", "aligned"), ("mgcn", "attention"), ("lgmrec", "graph_sum"), ("dragon", "graph_sum"),
          ("itemknn_cbf", "graph_sum")]
DESCRIPTION = {
    "baby": "Amazon Baby 5-core in the MMRec split (19,445 users, 7,050 items, 119,674 / 20,559 / 20,559 "
            "training / validation / test interactions; `dataset=baby`), interactions only (no item features are "
            "reachable here, so only ID-only models). Early stopping after 20 validations without improvement "
            "(MMRec's stopping_step), at most 1000 epochs.",
    "demo": "Demo: 1,000 users, 800 items, 12 latent styles, 10% cold items (validation/test only); "
            "64-d deterministic image and text features.",
    "ml100k": "MovieLens-100k (MMRec split 75k/12k/13k): 943 users, 1,682 items; image = EfficientNet-Lite0 "
              "(ImageNet) features of the 466 real posters (the other items: missing image, masked), text = "
              "all-MiniLM-L6-v2 of plot summary + genres + cast + director (`modality_encoder=offline`). Cold "
              "items are the test/validation items that happen to have no training interaction.",
    "ml100k_cold": "MovieLens-100k as `ml100k` (same posters and plot-text features, `modality_encoder=offline`) "
                   "with 10% of the movies (168) held out of training entirely (`dataset=ml100k_cold`: their "
                   "interactions moved to validation/test), so the cold columns measure content on cold items.",
    "ml100k_seq": "MovieLens-100k, time-ordered leave-last-out split (`dataset=ml100k_seq`): per user the latest "
                  "rating by timestamp is test, the one before it validation (ties in time broken by a seeded "
                  "random order), the rest training: 943 validation and 943 test interactions. Same posters and "
                  "plot-text features (`modality_encoder=offline`). Sequence models read each user's history in "
                  "time order (training items at validation, training + validation at test); the others see sets.",
}


def prepare_ml100k(dataset: str = "ml100k") -> str:
    """Prepare ``dataset`` (ml100k or ml100k_cold) with the offline modality encoders; returns a
    Markdown table of its stages."""
    import subprocess

    from common import ROOT

    cmd = [sys.executable, "-m", "mmrec.prepare", f"dataset={dataset}", "modality_encoder=offline",
           "prepare.progress=false", "dataset.source.progress=false"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stdout[-3000:] + proc.stderr[-3000:])
    summary = json.loads((ROOT / "data" / dataset / "prepare_summary.json").read_text())
    lines = [f"### Preparing {dataset} with the offline modality encoders", "",
             f"Command: `python -m mmrec.prepare dataset={dataset} modality_encoder=offline` (wall time per "
             "stage; 0 s = already done)", "",
             "| stage | seconds | summary |", "|---|---:|---|"]
    for rec in summary["stages"]:
        detail = ", ".join(f"{k}={v}" for k, v in rec["summary"].items() if not isinstance(v, (dict, list)))
        lines.append(f"| {rec['stage']} | {rec['seconds']:.1f} | {detail} |")
    return "\n".join(lines) + "\n"


def _name(dataset: str, model: str, fusion: str, sampler: str, seed: int, tag: str = "") -> str:
    return f"{dataset}_{model}_{fusion}_{sampler}{'_' + tag if tag else ''}_s{seed}"


def collect(dataset: str, rows: list[tuple[str, str, str]], seeds: list[int], tag: str = "") -> dict[str, list[dict]]:
    """Completed runs of ``rows`` x ``seeds`` found under logs/bench (for --report-only); a run
    stopped by a signal (its metrics.json says ``interrupted``) is not complete: left out, named."""
    results = {}
    for model, fusion, sampler in rows:
        runs = []
        for seed in seeds:
            path = OUT / _name(dataset, model, fusion, sampler, seed, tag) / "metrics.json"
            if path.exists():
                record = json.loads(path.read_text())
                if record.get("interrupted"):
                    print(f"left out {path.parent}: interrupted ({record['interrupted']}) after "
                          f"{record.get('epochs_trained')} epochs; move it away and rerun that seed", file=sys.stderr)
                    continue
                runs.append(record)
        if runs:
            results[f"{model}/{fusion}/{sampler}"] = runs
    return results


ILD_SPACE = ("`ild_content`: in the dataset's content space, each modality L2-normalised and concatenated, the same for "
             "every model; `ild_emb` (the model's item vectors) only where a dataset has no features")


def report(dataset: str, results: dict[str, list[dict]], seeds: list[int], note: str = "",
           command: str = "") -> str:
    title = f"All models on {dataset}" if all(k.endswith("/uniform") for k in results) else \
        f"Negative samplers on {dataset}"
    if dataset == "baby":
        title = "Self-supervised models on Baby"
    title += f" ({command.split('--tag ')[1].split()[0]})" if "--tag " in command else ""
    lines = [f"## {title}", "",
             f"- Command: `python experiments/bench_models.py {command}`",
             f"- Machine: {machine()}", f"- Date: {time.strftime('%Y-%m-%d')}, code: commit {git_commit()}",
             f"- {DESCRIPTION[dataset]} Defaults of each model config; mean ± std over the seeds each row lists; "
             "negatives drawn from items with a training interaction only. s/epoch = median training epoch; "
             "RSS = the run's peak.",
             "- Beyond accuracy, on the test lists (top 20 of every test user, training and validation items "
             "excluded): coverage = share of the catalogue shown to anyone; Gini of the item exposure (0 = even, "
             "1 = the same items for all); avg pop = mean number of training users of the shown items; novelty = mean "
             "-log2(share of users who had the item in training); ILD = mean pairwise cosine distance within a list "
             f"({ILD_SPACE}); cold exp = share of the shown slots that go to cold items. "
             "`pop` and `random` are evaluated without training, `ials` is fitted in closed form by the `implicit` "
             "package (no epochs).", "",
             "| model | fusion | sampler | seeds | val R@20 | test R@10 | test NDCG@10 | test R@20 | test NDCG@20 "
             "| test warm R@20 | test cold R@20 "
             "| coverage@20 | Gini@20 | avg pop@20 | novelty@20 | ILD@20 | cold exp@20 "
             "| epochs to best | s/epoch | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, runs in results.items():
        model, fusion, sampler = key.split("/")

        def col(*names: str, digits: int = 4) -> str:
            """mean ± std of the first of ``names`` that the runs report (ILD: content, else embeddings)."""
            for name in names:
                vals = [r["metrics"][name] for r in runs if name in r["metrics"]]
                if vals:
                    return mean_std(vals, digits)
            return "n/a"

        bests = [r["best_epoch"] for r in runs if r.get("best_epoch") is not None]
        epochs = [r["perf"]["train_epoch_s_median"] for r in runs if r["perf"].get("train_epoch_s_median") is not None]
        best = f"{statistics.mean(bests):.0f}" if bests else "–"
        epoch_s = f"{statistics.median(epochs):.2f}" if epochs else "–"
        rss = max(r["perf"]["peak_rss_mb"] for r in runs)
        lines.append(f"| {model} | {fusion} | {sampler} | {len(runs)} | {col('val/recall@20')} | "
                     f"{col('test/recall@10')} | {col('test/ndcg@10')} | {col('test/recall@20')} | "
                     f"{col('test/ndcg@20')} | {col('test/warm/recall@20')} | {col('test/cold/recall@20')} | "
                     f"{col('test/coverage@20', digits=3)} | {col('test/gini@20', digits=3)} | "
                     f"{col('test/avg_pop@20', digits=1)} | {col('test/novelty@20', digits=2)} | "
                     f"{col('test/ild_content@20', 'test/ild_emb@20', digits=3)} | "
                     f"{col('test/cold_exposure@20', digits=4)} | {best} | {epoch_s} | {rss:.0f} |")
    if dataset == "baby":
        lines += ["", baby_targets(results)]
    return "\n".join(lines) + "\n" + (("\n" + note) if note else "")


# Published test Recall@20 / NDCG@20 on Baby (MMRec split), as issue 27 lists them; the papers select on
# test (their logs report the best test epoch), ours select on validation
BABY_PUBLISHED = {"xsimgcl": (0.0887, 0.0397), "layergcn": (0.0820, 0.0355), "lightgcn": (0.0754, 0.0328)}
# mmrec's own LightGCN reference (4 layers, validation-selected, 3 seeds: section "LightGCN on Amazon Baby")
BABY_LIGHTGCN = 0.0766


def baby_targets(results: dict[str, list[dict]]) -> str:
    """One line per ID-only model: our validation-selected test Recall@20 against the published figure (the
    size of any shortfall) and against mmrec's LightGCN."""
    lines = ["| model | test R@20 (ours, val-selected) | published R@20 (test-selected) | ours / published "
             "| ours / mmrec LightGCN 0.0766 |", "|---|---|---|---|---|"]
    for key, runs in results.items():
        model = key.split("/")[0]
        vals = [r["metrics"]["test/recall@20"] for r in runs]
        mean = statistics.mean(vals)
        pub = BABY_PUBLISHED.get(model)
        lines.append(f"| {model} | {mean_std(vals)} | {pub[0] if pub else '–'} | "
                     f"{f'{mean / pub[0]:.3f}' if pub else '–'} | {mean / BABY_LIGHTGCN:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=sorted(DESCRIPTION), default="demo")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", default=None, help="subset, e.g. lightgcn vbpr/concat")
    parser.add_argument("--samplers", nargs="+", default=["uniform"], help="conf/sampler choices")
    parser.add_argument("--extra", nargs="*", default=[], help="more overrides for every run")
    parser.add_argument("--tag", default="", help="names the runs and the RESULTS section of an --extra variant")
    parser.add_argument("--report-only", action="store_true", help="rebuild the table from completed runs")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (one torch thread each when > 1)")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    note = ""
    if args.dataset.startswith("ml100k") and not args.report_only:
        note = prepare_ml100k(args.dataset)
        (OUT / f"{args.dataset}_prepare.md").write_text(note)
    elif args.dataset.startswith("ml100k") and (OUT / f"{args.dataset}_prepare.md").exists():
        note = (OUT / f"{args.dataset}_prepare.md").read_text()
    rows = [(m, f, smp) for m, f in MODELS if args.models is None or m in args.models or f"{m}/{f}" in args.models
            for smp in args.samplers]
    section = f"models_{args.dataset}" if args.samplers == ["uniform"] else f"samplers_{args.dataset}"
    section += f"_{args.tag}" if args.tag else ""
    if args.report_only:
        results = collect(args.dataset, rows, args.seeds, args.tag)
    else:
        def one_run(item):
            (model, fusion, sampler), seed = item
            rec = run_train(_name(args.dataset, model, fusion, sampler, seed, args.tag),
                            [f"dataset={args.dataset}", f"model={model}", f"fusion={fusion}",
                             f"sampler={sampler}", f"seed={seed}", "logger=none", *args.extra])
            print(model, fusion, sampler, seed, {k: round(v, 4) for k, v in rec["metrics"].items()
                                                 if "recall@20" in k}, flush=True)
            return rec

        items = [(row, seed) for row in rows for seed in args.seeds]
        recs = run_parallel(one_run, items, args.jobs)
        results = {}
        for (row, _), rec in zip(items, recs):
            results.setdefault("/".join(row), []).append(rec)
        (OUT / f"{section}.json").write_text(json.dumps(results, indent=1))
    command = " ".join(a for a in sys.argv[1:] if a != "--report-only")
    text = report(args.dataset, results, args.seeds, note if section == f"models_{args.dataset}" else "", command)
    if args.extra:
        text = text.replace("Defaults of each model config;", f"Each model's defaults plus `{' '.join(args.extra)}`;")
    if args.jobs > 1:
        text = text.replace("s/epoch = median training epoch;",
                            f"s/epoch = median training epoch with {args.jobs} runs at once, one torch thread each;")
    elif os.environ.get("OMP_NUM_THREADS"):
        text = text.replace("s/epoch = median training epoch;", "s/epoch = median training epoch, one run at a time "
                            f"with OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']};")
    write_section(section, text)
    print(text)


if __name__ == "__main__":
    main()
