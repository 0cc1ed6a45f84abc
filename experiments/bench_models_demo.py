"""All models on the demo dataset: overall, warm-item and cold-item quality, speed, memory.

Usage (from the repository root):

    python experiments/bench_models_demo.py               # 3 seeds per model
    python experiments/bench_models_demo.py --seeds 0     # quick

Each run: `python -m mmrec.train dataset=demo model=<m> seed=<s>` with the model's default
fusion, early stopping on validation Recall@20, the test split evaluated once on the
selected checkpoint. Cold items (10% of the demo's items) have no training interaction;
their test metrics count only cold relevant items in the full ranking.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, git_commit, machine, mean_std, run_train, write_section  # noqa: E402

MODELS = [("lightgcn", "none"), ("vbpr", "concat"), ("vbpr", "attention"), ("mmgcn", "late"),
          ("grcn", "late"), ("freedom", "graph_sum")]


def collect(seeds: list[int]) -> dict[str, list[dict]]:
    """Completed runs of ``MODELS`` x ``seeds`` found under logs/bench (for --report-only)."""
    results = {}
    for model, fusion in MODELS:
        runs = []
        for seed in seeds:
            path = OUT / f"demo_{model}_{fusion}_s{seed}" / "metrics.json"
            if path.exists():
                runs.append(json.loads(path.read_text()))
        if runs:
            results[f"{model}/{fusion}"] = runs
    return results


def report(results: dict[str, list[dict]], seeds: list[int]) -> str:
    lines = ["## All models on the demo dataset", "",
             f"- Command: `python experiments/bench_models_demo.py --seeds {' '.join(map(str, seeds))}`",
             f"- Machine: {machine()}", f"- Date: {time.strftime('%Y-%m-%d')}, code: commit {git_commit()}",
             "- Demo: 1,000 users, 800 items, 12 latent styles, 10% cold items (validation/test only); "
             "64-d deterministic image and text features. Defaults of each model config; "
             "mean ± std over the seeds each row lists. Timing is not reported here (runs shared the CPU "
             "with other benchmarks); see the Baby speed tables.", "",
             "| model | fusion | seeds | val R@20 | test R@20 | test NDCG@20 | test warm R@20 | test cold R@20 | epochs to best |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key, runs in results.items():
        model, fusion = key.split("/")

        def col(name: str) -> str:
            vals = [r["metrics"][name] for r in runs if name in r["metrics"]]
            return mean_std(vals) if vals else "n/a"

        best = statistics.mean(r["best_epoch"] for r in runs)
        lines.append(f"| {model} | {fusion} | {len(runs)} | {col('val/recall@20')} | {col('test/recall@20')} | "
                     f"{col('test/ndcg@20')} | {col('test/warm/recall@20')} | {col('test/cold/recall@20')} | "
                     f"{best:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--report-only", action="store_true", help="rebuild the table from completed runs")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        results = collect(args.seeds)
    else:
        results = {}
        for model, fusion in MODELS:
            runs = []
            for seed in args.seeds:
                rec = run_train(f"demo_{model}_{fusion}_s{seed}", [f"model={model}", f"fusion={fusion}",
                                                                   f"seed={seed}", "logger=none"])
                runs.append(rec)
                print(model, fusion, seed, {k: round(v, 4) for k, v in rec["metrics"].items()
                                            if "recall@20" in k}, flush=True)
            results[f"{model}/{fusion}"] = runs
        (OUT / "models_demo.json").write_text(json.dumps(results, indent=1))
    text = report(results, args.seeds)
    write_section("models_demo", text)
    print(text)


if __name__ == "__main__":
    main()
