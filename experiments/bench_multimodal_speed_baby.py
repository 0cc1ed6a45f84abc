"""Seconds per training epoch of every multimodal model on Amazon Baby, for timing only.

Baby has no real item features here, so this script gives it random features of the
published shapes (4096-d image, 384-d text, float16 in LMDB) and times a few epochs of
each model in its own process (medians over epochs 2..N), with one full validation pass
per epoch and the process's peak RSS. Quality numbers from these runs mean nothing.

    python experiments/bench_multimodal_speed_baby.py [--epochs 4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, ROOT, git_commit, machine, run_train, write_section  # noqa: E402

MODELS = [("lightgcn", "none"), ("vbpr", "concat"), ("mmgcn", "late"), ("grcn", "late"), ("freedom", "graph_sum"),
          ("lattice", "graph_sum")]
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
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    common = speed_overrides(args.epochs)
    rows = {}
    for model, fusion in MODELS:
        rec = run_train(f"mm_speed_{model}", common + [f"model={model}", f"fusion={fusion}"])
        perf = rec["perf"]
        rows[model] = {"fusion": fusion, "train_epoch_s": statistics.median(perf["train_epoch_s"][1:]),
                       "val_s": statistics.median(perf["val_s"][1:]), "peak_rss_mb": perf["peak_rss_mb"]}
        print(model, rows[model], flush=True)
    (OUT / "multimodal_speed_baby.json").write_text(json.dumps(rows, indent=1))
    lines = ["## Multimodal models on Amazon Baby with random features (speed only)", "",
             f"- Command: `python experiments/bench_multimodal_speed_baby.py --epochs {args.epochs}`",
             f"- Machine: {machine()}", f"- Date: {time.strftime('%Y-%m-%d')}, code: commit {git_commit()}",
             "- Baby interactions (MMRec split) + random features of the published shapes: 4096-d image, "
             "384-d text, stored float16. Batch 2048, embedding 64, each model's default config. "
             "Medians over epochs 2..N; each model in its own process.", "",
             "| model | fusion | s / training epoch | s / validation pass | peak RSS MB | MMRec s / epoch (same machine) | target |",
             "|---|---|---|---|---|---|---|"]
    for model, row in rows.items():
        lines.append(f"| {model} | {row['fusion']} | {row['train_epoch_s']:.2f} | {row['val_s']:.2f} | "
                     f"{row['peak_rss_mb']:.0f} | {MMREC_S_PER_EPOCH.get(model, '2.5 (1 layer)' if model == 'lightgcn' else 'not measured')} | "
                     f"{'<= ' + str(TARGET_S_PER_EPOCH[model]) if model in TARGET_S_PER_EPOCH else ''} |")
    text = "\n".join(lines) + "\n"
    write_section("multimodal_speed_baby", text)
    print(text)


if __name__ == "__main__":
    main()
