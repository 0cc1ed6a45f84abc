"""Seconds per training epoch of every trained model on Amazon Baby, for timing only.

Baby has no real item features here, so this script gives it random features of the
published shapes (4096-d image, 384-d text, float16 in LMDB) and times a few epochs of
each model in its own process (medians over epochs 2..N), with one full validation pass
per epoch and the process's peak RSS. Quality numbers from these runs mean nothing.

The models run interleaved with LightGCN: each model's run comes right after a LightGCN run,
and its ratio to LightGCN is taken against that run (this machine drifts with the load of its
neighbours within minutes; a ratio within one pair shares the load of the moment).

    python experiments/bench_multimodal_speed_baby.py [--epochs 3] [--rounds 2] [--models lightgcn bm3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, ROOT, git_commit, machine, run_train, write_section  # noqa: E402

MODELS = [("lightgcn", "none"), ("vbpr", "concat"), ("mmgcn", "late"), ("grcn", "late"), ("freedom", "graph_sum"),
          ("lattice", "graph_sum"),
          # self-supervised rows (issue 27): ID-only, then multimodal (itemknn_cbf trains nothing: not timed here)
          ("mf", "none"), ("simgcl", "none"), ("xsimgcl", "none"), ("layergcn", "none"),
          ("bm3", "aligned"), ("mgcn", "attention"), ("lgmrec", "graph_sum"), ("dragon", "graph_sum")]
SLOW_RATIO = 5  # issue 27: a model slower than this many LightGCN epochs needs a profile and a reason
MMREC_S_PER_EPOCH = {"vbpr": 5.3, "mmgcn": 106, "grcn": 69, "freedom": 22.5}
TARGET_S_PER_EPOCH = {"vbpr": 2, "mmgcn": 10, "grcn": 7, "freedom": 7}


def make_source(shared_baby: Path) -> Path:
    """A folder in MMRec format: Baby's interactions + random 4096-d / 384-d features."""
    src = OUT / "baby_random_features"
    src.mkdir(parents=True, exist_ok=True)
    for name in ("baby.inter", "i_id_mapping.csv", "u_id_mapping.csv"):
        link = src / name
        if not link.exists():
            os.symlink(shared_baby / name, link)
    rng = np.random.default_rng(0)
    for name, dim in (("image_feat.npy", 4096), ("text_feat.npy", 384)):
        if not (src / name).exists():
            np.save(src / name, rng.standard_normal((7050, dim)).astype(np.float32))
    return src


def speed_overrides(epochs: int) -> list[str]:
    """Overrides of every speed run: Baby + random features, batch 2048, ``epochs`` epochs, no test."""
    src = make_source(ROOT.parent / "shared" / "data" / "amazon-baby")
    return ["dataset=mmrec", f"dataset.source.path={src}", "dataset.source.name=baby",
            f"dataset.root={OUT / 'data' / 'baby_random_features'}", "dataset.pairs_per_batch=2048",
            f"trainer.max_epochs={epochs}", "test=false", "logger=none", "callbacks.early_stopping.patience=100"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2, help="times every model runs, interleaved")
    parser.add_argument("--models", nargs="+", default=None, help="subset (LightGCN always runs: the reference)")
    args = parser.parse_args()
    common = speed_overrides(args.epochs)
    models = [(m, f) for m, f in MODELS if m == "lightgcn" or args.models is None or m in args.models]
    runs: dict[str, list[dict]] = {m: [] for m, _ in models}
    reference: list[dict] = []  # every LightGCN run, the pairs' references included

    def timed(model: str, fusion: str, name: str) -> dict:
        shutil.rmtree(OUT / name, ignore_errors=True)  # this script's own timing run of an earlier call
        perf = run_train(name, common + [f"model={model}", f"fusion={fusion}"])["perf"]
        return {"train_epoch_s": statistics.median(perf["train_epoch_s"][1:]),
                "val_s": statistics.median(perf["val_s"][1:]), "peak_rss_mb": perf["peak_rss_mb"],
                "load": os.getloadavg()[0]}

    for rnd in range(args.rounds):
        for model, fusion in models:
            # a LightGCN run right before each model: the pair shares the machine's load of the moment
            ref = timed("lightgcn", "none", f"mm_speed_ref_{model}_r{rnd}")
            reference.append(ref)
            run = ref if model == "lightgcn" else timed(model, fusion, f"mm_speed_{model}_r{rnd}")
            run = {**run, "round": rnd, "vs_lightgcn": run["train_epoch_s"] / ref["train_epoch_s"]}
            runs[model].append(run)
            print(model, run, flush=True)
    runs["lightgcn"] = [{**x, "vs_lightgcn": 1.0} for x in reference]  # the row of the reference: every run of it
    fusion_of = dict(models)
    rows = {m: {"fusion": fusion_of[m], "runs": r,
                "train_epoch_s": statistics.median(x["train_epoch_s"] for x in r),
                "val_s": statistics.median(x["val_s"] for x in r),
                "peak_rss_mb": max(x["peak_rss_mb"] for x in r),
                "vs_lightgcn": statistics.median(x["vs_lightgcn"] for x in r)} for m, r in runs.items()}
    (OUT / "model_speed_baby.json").write_text(json.dumps(rows, indent=1))
    loads = [x["load"] for r in runs.values() for x in r]
    lines = ["## Models on Amazon Baby with random features (speed only)", "",
             f"- Command: `python experiments/bench_multimodal_speed_baby.py --epochs {args.epochs} --rounds {args.rounds}`",
             f"- Machine: {machine()}; 1-minute load during the runs {min(loads):.1f} .. {max(loads):.1f}; "
             f"torch threads per run: {os.environ.get('OMP_NUM_THREADS', 'default')}",
             f"- Date: {time.strftime('%Y-%m-%d')}, code: commit {git_commit()}",
             "- Baby interactions (MMRec split) + random features of the published shapes: 4096-d image, "
             "384-d text, stored float16. Batch 2048, embedding 64, each model's default config. "
             f"Each model in its own process, right after a LightGCN run (a pair), {args.rounds} round(s); s/epoch = "
             "median over rounds of each run's median over epochs 2..N; x LightGCN = median of the ratios to the "
             f"LightGCN run of the same pair (the lightgcn row: the median of all {len(reference)} LightGCN runs, their "
             "range in brackets); peak RSS = the larger of the runs. itemknn_cbf trains nothing and "
             "is not timed.", "",
             "| model | fusion | s / training epoch | x LightGCN | s / validation pass | peak RSS MB | MMRec s / epoch (same machine) | target |",
             "|---|---|---|---|---|---|---|---|"]
    for model, row in rows.items():
        flag = f" (> {SLOW_RATIO}x)" if row["vs_lightgcn"] > SLOW_RATIO else ""
        spread = (f" ({min(x['train_epoch_s'] for x in row['runs']):.2f}..{max(x['train_epoch_s'] for x in row['runs']):.2f})"
                  if model == "lightgcn" else "")
        lines.append(f"| {model} | {row['fusion']} | {row['train_epoch_s']:.2f}{spread} | {row['vs_lightgcn']:.2f}{flag} | "
                     f"{row['val_s']:.2f} | {row['peak_rss_mb']:.0f} | "
                     f"{MMREC_S_PER_EPOCH.get(model, '2.5 (1 layer)' if model == 'lightgcn' else 'not measured')} | "
                     f"{'<= ' + str(TARGET_S_PER_EPOCH[model]) if model in TARGET_S_PER_EPOCH else ''} |")
    text = "\n".join(lines) + "\n"
    write_section("model_speed_baby", text)
    print(text)


if __name__ == "__main__":
    main()
