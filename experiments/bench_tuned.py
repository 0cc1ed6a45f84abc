"""Models compared after a hyperparameter grid each, selected on validation only.

For every model, each point of its grid is trained once (seed 0) with ``test=false``: no
test metric is computed while choosing. The point with the best validation Recall@20 is
then trained with every seed and evaluated on the test split once per run. RESULTS.md gets
the grid (validation only) and the final rows (mean ± std over the seeds).

    python experiments/bench_tuned.py --dataset ml100k \
        --grid freedom:model.encoder.modality_loss_weight=0,1e-4,1e-3 freedom:model.encoder.edge_dropout=0.8,0.9 \
               lightgcn:model.l2_weight=1e-2,1e-3,1e-4,1e-5,1e-6 \
        --extra callbacks.early_stopping.patience=50 trainer.max_epochs=1000 --tag tuned --jobs 2
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models import DESCRIPTION, MODELS, _name, report  # noqa: E402
from common import OUT, git_commit, machine, run_parallel, run_train, write_section  # noqa: E402


def parse_grid(specs: list[str]) -> dict[str, list[list[str]]]:
    """``model:key=v1,v2`` items -> model -> list of override lists (the Cartesian product)."""
    axes: dict[str, list[list[str]]] = {}
    for spec in specs:
        model, sep, assignment = spec.partition(":")
        key, eq, values = assignment.partition("=")
        if not sep or not eq or not values:
            raise SystemExit(f"--grid item {spec!r}: expected model:key=value1,value2")
        if model not in dict(MODELS):
            raise SystemExit(f"--grid item {spec!r}: unknown model {model!r}; choose from {sorted(dict(MODELS))}")
        if key == "sampler":
            raise SystemExit(f"--grid item {spec!r}: the sampler is not searched here; give one with --extra sampler=NAME")
        axes.setdefault(model, []).append([f"{key}={v}" for v in values.split(",")])
    return {m: [list(p) for p in itertools.product(*a)] for m, a in axes.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=sorted(DESCRIPTION), default="demo")
    parser.add_argument("--grid", nargs="+", required=True, help="model:key=v1,v2 (one axis each)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the final runs")
    parser.add_argument("--extra", nargs="*", default=[], help="more overrides for every run")
    parser.add_argument("--tag", default="tuned", help="names the runs and the RESULTS section")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (one torch thread each when > 1)")
    args = parser.parse_args()
    grids = parse_grid(args.grid)
    fusions = dict(MODELS)
    sampler = next((o.split("=", 1)[1] for o in args.extra if o.startswith("sampler=")), "uniform")
    base = ["logger=none", f"dataset={args.dataset}", f"sampler={sampler}",
            *[o for o in args.extra if not o.startswith("sampler=")]]

    def point_run(item):
        model, i, point = item
        rec = run_train(f"{args.dataset}_{model}_{args.tag}_grid{i}",
                        base + [f"model={model}", f"fusion={fusions[model]}", "seed=0", "test=false", *point])
        print(model, point, round(rec["metrics"]["val/recall@20"], 4), flush=True)
        return model, point, rec

    items = [(m, i, p) for m, points in grids.items() for i, p in enumerate(points)]
    searched = run_parallel(point_run, items, args.jobs)
    chosen = {m: max((r for r in searched if r[0] == m), key=lambda r: r[2]["metrics"]["val/recall@20"])[1]
              for m in grids}

    def final_run(item):
        model, seed = item
        name = _name(args.dataset, model, fusions[model], sampler, seed, args.tag)
        return model, run_train(name, base + [f"model={model}", f"fusion={fusions[model]}", f"seed={seed}",
                                              *chosen[model]])

    finals = run_parallel(final_run, [(m, s) for m in grids for s in args.seeds], args.jobs)
    results = {f"{m}/{fusions[m]}/{sampler}": [r for mm, r in finals if mm == m] for m in grids}
    (OUT / f"tuned_{args.dataset}_{args.tag}.json").write_text(json.dumps(
        {"chosen": chosen, "grid": [(m, p, r["metrics"]["val/recall@20"]) for m, p, r in searched]}, indent=1))

    command = " ".join(sys.argv[1:])
    lines = [f"## Tuned on validation: {args.dataset} ({args.tag})", "",
             f"- Command: `python experiments/bench_tuned.py {command}`", f"- Machine: {machine()}",
             f"- Date: {time.strftime('%Y-%m-%d')}, code: commit {git_commit()}",
             "- Grid: one run per point (seed 0, `test=false`: no test metric is computed while choosing); "
             "the best validation Recall@20 is chosen, then trained with each seed and tested once per run.",
             f"- s/epoch: median training epoch{f' with {args.jobs} runs at once, one torch thread each' if args.jobs > 1 else ''}.",
             "",
             "| model | grid point | val R@20 (seed 0) | chosen |", "|---|---|---|---|"]
    for model, point, rec in searched:
        lines.append(f"| {model} | `{' '.join(point)}` | {rec['metrics']['val/recall@20']:.4f} | "
                     f"{'yes' if point == chosen[model] else ''} |")
    table = report(args.dataset, results, args.seeds, "", command)
    table = table.split("\n| model |", 1)[1]  # the final rows' table only
    lines += ["", "Chosen points, every seed, tested once:", "", "| model |" + table]
    write_section(f"tuned_{args.dataset}_{args.tag}", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
