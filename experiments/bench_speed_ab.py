"""Training speed of two commits, interleaved, on Amazon Baby with random features.

This VM's speed drifts by 10-15% over an hour (the same GEMM ran at 76 and at 124 GFLOP/s
on one day), so two speed tables taken at different times cannot show a change of a few
percent. This script checks out ``--base`` into a temporary git worktree and alternates
its runs with runs of this checkout (base, head, head, base, ...; uncommitted changes count
as head's and the table marks it ``+dirty``), one fresh process per run, with the settings
of ``bench_multimodal_speed_baby.py``. The table gives each side's median seconds per
training epoch over all its runs, and the range of the per-repeat changes (each repeat's
head median against the base median of the same repeat), which shows the noise.

    python experiments/bench_speed_ab.py --base 8bf1829 --models mmgcn grcn [--repeats 2]
    python experiments/bench_speed_ab.py --base e5a9674 --models lightgcn --dataset baby --tag lightgcn_baby

``--dataset baby`` uses the real Baby interactions (ID-only models) with only overrides that
both commits know, so that a base from before a config rename still runs.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_multimodal_speed_baby import MODELS, TARGET_S_PER_EPOCH, speed_overrides  # noqa: E402
from common import OUT, ROOT, git_commit, machine, run_train, write_section  # noqa: E402


def _worktree(rev: str, where: Path) -> Path:
    subprocess.run(["git", "worktree", "add", "--detach", "-f", str(where), rev], cwd=ROOT, check=True,
                   capture_output=True)
    return where


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="commit to compare the current one with")
    parser.add_argument("--models", nargs="+", default=["mmgcn", "grcn"], help="models of the speed table")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (the first is not counted)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per commit and model")
    parser.add_argument("--dataset", choices=["random_features", "baby"], default="random_features",
                        help="Baby with random features (the multimodal speed table's) or the real Baby, ID-only")
    parser.add_argument("--tag", default="", help="RESULTS section speed_ab_TAG (default: speed_ab, replaced)")
    args = parser.parse_args()
    if args.epochs < 2 or args.repeats < 1:
        parser.error("--epochs must be >= 2 (the first epoch is not counted) and --repeats >= 1")
    fusions = dict(MODELS)
    unknown = sorted(set(args.models) - set(fusions))
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {sorted(fusions)}")
    if args.dataset == "baby":
        # the real Baby with its default batch (2048 pairs in both commits); the shared data named explicitly, since an
        # older commit looks for it beside its own (temporary) checkout
        common = ["dataset=baby", f"paths.shared_dir={ROOT.parent / 'shared'}", f"trainer.max_epochs={args.epochs}",
                  "test=false", "logger=none", "callbacks.early_stopping.patience=100"]
    else:
        common = speed_overrides(args.epochs)
    head = git_commit()
    base = subprocess.run(["git", "rev-parse", "--short", args.base], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
    tmp = Path(tempfile.mkdtemp(prefix="speed_ab_"))
    epochs: dict[tuple[str, str], list[float]] = {}  # (model, side) -> epochs 2..N of every run
    vals: dict[tuple[str, str], list[float]] = {}  # (model, side) -> validation passes 2..N of every run
    per_rep: dict[tuple[str, str, int], float] = {}  # (model, side, repeat) -> median s / epoch
    try:
        trees = {"base": _worktree(base, tmp / "base"), "head": ROOT}
        for rep in range(args.repeats):
            for model in args.models:
                order = ("base", "head") if rep % 2 == 0 else ("head", "base")
                for side in order:
                    name = f"speed_ab/{model}_{side}_{rep}"
                    shutil.rmtree(OUT / name, ignore_errors=True)
                    perf = run_train(name, common + [f"model={model}", f"fusion={fusions[model]}"],
                                     cwd=trees[side])["perf"]
                    seconds = perf["train_epoch_s"]
                    epochs.setdefault((model, side), []).extend(seconds[1:])
                    vals.setdefault((model, side), []).extend(perf.get("val_s", [])[1:])
                    per_rep[(model, side, rep)] = statistics.median(seconds[1:])
                    print(model, side, rep, [round(s, 2) for s in seconds], flush=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tmp / "base")], cwd=ROOT, capture_output=True)
        subprocess.run(["git", "worktree", "prune"], cwd=ROOT, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    data = "Baby, random features" if args.dataset == "random_features" else "Baby, ID-only"
    lines = [f"## Training speed, two commits interleaved ({data})", "",
             f"- Command: `python experiments/bench_speed_ab.py --base {args.base} --models {' '.join(args.models)} "
             f"--epochs {args.epochs} --repeats {args.repeats}"
             f"{' --dataset baby' if args.dataset == 'baby' else ''}{' --tag ' + args.tag if args.tag else ''}`",
             f"- Machine: {machine()}", f"- Date: {time.strftime('%Y-%m-%d %H:%M')}, base {base}, head {head}",
             ("- Settings of `bench_multimodal_speed_baby.py`" if args.dataset == "random_features" else
              "- `dataset=baby`, each model's defaults") + "; runs alternate between the commits (one fresh process "
             "each); medians over every run's epochs 2..N; per repeat: the change of that repeat's head run against its "
             "base run.", "",
             "| model | base s / epoch | head s / epoch | change | per-repeat changes | base s / val pass "
             "| head s / val pass | change | target |",
             "|---|---|---|---|---|---|---|---|---|"]
    for model in args.models:
        b, h = statistics.median(epochs[(model, "base")]), statistics.median(epochs[(model, "head")])
        target = f"<= {TARGET_S_PER_EPOCH[model]}" if model in TARGET_S_PER_EPOCH else ""
        paired = [100 * (per_rep[(model, "head", r)] / per_rep[(model, "base", r)] - 1) for r in range(args.repeats)]
        spread = f"{min(paired):+.1f}% .. {max(paired):+.1f}%" if len(paired) > 1 else f"{paired[0]:+.1f}%"
        vb, vh = (statistics.median(vals[(model, side)]) if vals.get((model, side)) else float("nan")
                  for side in ("base", "head"))
        lines.append(f"| {model} | {b:.2f} | {h:.2f} | {100 * (h - b) / b:+.1f}% | {spread} | {vb:.3f} | {vh:.3f} | "
                     f"{100 * (vh - vb) / vb:+.1f}% | {target} |")
    text = "\n".join(lines) + "\n"
    write_section(f"speed_ab_{args.tag}" if args.tag else "speed_ab", text)
    print(text)


if __name__ == "__main__":
    main()
