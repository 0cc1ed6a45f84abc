"""Scaling curves on the synthetic Amazon-shaped dataset (issue 29): time and peak RSS of every stage.

For each size (interactions; users and items in Amazon Baby 5-core's proportions: 8.26
interactions per user, 22.8 per item) and each model, every stage runs in a fresh process:

1. ``prepare``  ``python -m mmrec.prepare dataset=synthetic ...`` (the generator, k-core, split, random
   feature stores) -- once per size;
2. ``train epoch`` and ``validation``  ``python -m mmrec.train ... trainer.max_epochs=1 test=false``:
   one training epoch and one full-ranking validation pass over every item (from the run's
   ``metrics.json`` perf record; the process's peak RSS covers both);
3. ``export``  ``python -m mmrec.export run=...`` (no saved index);
4. ``faiss build`` and ``serve p99``  one process loads the bundle, builds an HNSW32 index over the
   items, and times ``Recommender.recommend`` for 300 users, one thread (exact and FAISS).

Peak RSS of a stage is the ``ru_maxrss`` of its process (``os.wait4``). The log-log slope of each stage
between the smallest and the largest size says how it grows: 1.0 is linear in interactions. Results
go to ``logs/bench/scaling.json`` (rows accumulate per size/model) and RESULTS.md "Scaling", with a
plot ``experiments/scaling.png``.

    python experiments/bench_scaling.py --sizes 100000 1000000 10000000 --models lightgcn freedom
    python experiments/bench_scaling.py --report-only
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, ROOT, git_commit, machine, write_section  # noqa: E402

STORE = OUT / "scaling.json"
PLOT = ROOT / "experiments" / "scaling.png"
PER_USER, PER_ITEM = 160_678 / 19_445, 160_678 / 7_050  # Amazon Baby 5-core
FEATURES = "{image:128,text:64}"  # random features (FREEDOM's item-item kNN reads them; dims set its constant)
STAGES = ("prepare", "train epoch", "validation", "export", "faiss build", "serve p99 exact", "serve p99 faiss")

SERVE = r"""
import json, sys, time
import faiss, numpy as np, torch
from mmrec.serving.bundle import load_bundle
from mmrec.serving.recommender import Recommender
torch.set_num_threads(1)
bundle = load_bundle(sys.argv[1], verify=False)
users = [bundle.users["raw_id"][i] for i in np.random.default_rng(1).integers(0, len(bundle.users), 300)]
out = {}
for index in ("exact", "faiss"):
    faiss.omp_set_num_threads(2)
    start = time.perf_counter()
    rec = Recommender(bundle, index=index, content_candidates=0, ranker="off",
                      index_params={"factory": "HNSW32", "ef_search": 128} if index == "faiss" else None)
    if index == "faiss":
        out["faiss build"] = time.perf_counter() - start
    faiss.omp_set_num_threads(1)
    for u in users[:20]:
        rec.recommend([u], k=20)
    times = []
    for u in users:
        start = time.perf_counter()
        rec.recommend([u], k=20)
        times.append(time.perf_counter() - start)
    times.sort()
    out[f"serve p99 {index}"] = times[int(0.99 * (len(times) - 1))]
print("RESULT " + json.dumps(out))
"""


def _shape(n: int) -> tuple[int, int]:
    return round(n / PER_USER), round(n / PER_ITEM)


def _dataset_args(n: int) -> list[str]:
    users, items = _shape(n)
    return ["dataset=synthetic", f"dataset.source.num_users={users}", f"dataset.source.num_items={items}",
            f"dataset.source.num_interactions={n}", f"dataset.source.features={FEATURES}",
            f"paths.data_dir={OUT / 'scaling_data'}"]


def _measured(cmd: list[str], timeout: int) -> tuple[float, float, str]:
    """One stage in a fresh process, its peak RSS exact: the command runs under a small wrapper
    that reports its own child's ``ru_maxrss`` (RUSAGE_CHILDREN of this process keeps the maximum of
    every earlier stage)."""
    wrapper = ("import json, os, resource, subprocess, sys, time; start = time.time(); "
               "p = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True); "
               "sys.stdout.write(p.stdout); sys.stderr.write(p.stderr); "
               "print('PEAK ' + json.dumps(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)); "
               "sys.exit(p.returncode)")
    start = time.time()
    proc = subprocess.run([sys.executable, "-c", wrapper, *cmd], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)
    wall, stdout = time.time() - start, proc.stdout
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (rc {proc.returncode}):\n{stdout[-2000:]}\n{proc.stderr[-3000:]}")
    peak = float(next(line for line in stdout.splitlines() if line.startswith("PEAK ")).split()[1])
    return wall, peak, stdout


def _data_folder(n: int) -> Path:
    users, items = _shape(n)
    return OUT / "scaling_data" / f"synthetic-u{users}-i{items}-n{n}-s0"


def prepare(n: int, timeout: int) -> dict:
    """The dataset of size ``n`` generated afresh (an earlier copy is removed first)."""
    shutil.rmtree(_data_folder(n), ignore_errors=True)
    load = round(os.getloadavg()[0], 2)
    wall, peak, _ = _measured([sys.executable, "-m", "mmrec.prepare", *_dataset_args(n), "prepare.progress=false"],
                              timeout)
    assert _data_folder(n).is_dir(), f"prepare did not write {_data_folder(n)}"
    return {"size": n, "model": "prepare", "date": datetime.now().strftime("%Y-%m-%d %H:%M"), "commit": git_commit(),
            "load_before": load, "load_after": round(os.getloadavg()[0], 2),
            "stages": {"prepare": {"s": wall, "rss_mb": peak}}}


def _batching(steps: int | None) -> str:
    return "batch 2048" if steps is None else f"{steps} steps/epoch"


def measure(n: int, model: str, timeout: int, steps: int | None = None) -> dict:
    """Every stage of ``model`` at ``n`` interactions. ``steps``: hold the training steps per epoch
    at this number (``dataset.pairs_per_batch`` = training pairs / steps) instead of the dataset's
    batch of 2,048 pairs: each step of a graph model propagates the whole graph (O(n)), so with a
    fixed batch an epoch has O(n) steps and costs O(n^2)."""
    batch = [] if steps is None else [f"dataset.pairs_per_batch={max(1, round(0.8 * n / steps))}"]
    row = {"size": n, "model": model, "batching": _batching(steps), "users": _shape(n)[0], "items": _shape(n)[1], "date": datetime.now().strftime("%Y-%m-%d %H:%M"),
           "commit": git_commit(), "load_before": round(os.getloadavg()[0], 2), "stages": {}}
    run = OUT / "scaling" / f"{model}_{n}" if steps is None else OUT / "scaling" / f"{model}_{n}_s{steps}"
    shutil.rmtree(run, ignore_errors=True)  # this script's own scratch run of the last measurement
    wall, peak, _ = _measured([sys.executable, "-m", "mmrec.train", f"model={model}", *_dataset_args(n),
                               "trainer.max_epochs=1", "test=false", "logger=none", "trainer.accelerator=cpu",
                               "+trainer.enable_progress_bar=false", f"hydra.run.dir={run}", *batch], timeout)
    perf = json.loads((run / "metrics.json").read_text())["perf"]
    row["stages"]["train epoch"] = {"s": perf["train_epoch_s"][0], "rss_mb": peak}
    row["stages"]["validation"] = {"s": perf["val_s"][0], "rss_mb": peak}
    row["train_process_s"] = wall
    bundle = run / "bundle"
    wall, peak, _ = _measured([sys.executable, "-m", "mmrec.export", f"run={run}", f"out={bundle}", "force=true"],
                              timeout)
    row["stages"]["export"] = {"s": wall, "rss_mb": peak}
    wall, peak, stdout = _measured([sys.executable, "-c", SERVE, str(bundle)], timeout)
    served = json.loads(next(line for line in stdout.splitlines() if line.startswith("RESULT "))[7:])
    for stage, seconds in served.items():
        row["stages"][stage] = {"s": seconds, "rss_mb": peak}
    row["load_after"] = round(os.getloadavg()[0], 2)
    return row


def _load() -> list[dict]:
    return json.loads(STORE.read_text()) if STORE.is_file() else []


def _save(rows: list[dict]) -> None:
    STORE.parent.mkdir(parents=True, exist_ok=True)
    STORE.write_text(json.dumps(rows, indent=1))


def _slope(points: list[tuple[int, float]]) -> float | None:
    """Least-squares slope of log(value) over log(size)."""
    points = [(math.log(n), math.log(v)) for n, v in points if v > 0]
    if len(points) < 2:
        return None
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    den = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / den if den else None


def _fmt_s(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.1f} s" if seconds < 600 else f"{seconds / 60:.1f} min"


def report(rows: list[dict]) -> None:
    sizes = sorted({r["size"] for r in rows})
    for r in rows:
        if r["model"] != "prepare":
            r["label"] = f"{r['model']} ({r.get('batching', _batching(None))})"
    models = sorted({r["label"] for r in rows if "label" in r})
    latest = {(r["size"], r["label"]): r for r in rows if "label" in r}  # the newest row of each (size, model)
    prepare = {r["size"]: r["stages"]["prepare"] for r in rows if "prepare" in r["stages"]}
    header = "| model | stage | " + " | ".join(f"{n:,} ({_shape(n)[0]:,} u, {_shape(n)[1]:,} i)" for n in sizes) \
        + " | slope of time | slope of RSS |"
    lines = [header, "|" + "---|" * (len(sizes) + 4)]

    def add(label: str, stage: str, get) -> None:
        cells, pts_t, pts_m = [], [], []
        for n in sizes:
            value = get(n)
            if value is None:
                cells.append("-")
                continue
            cells.append(f"{_fmt_s(value['s'])}, {value['rss_mb'] / 1024:.2f} GB")
            pts_t.append((n, value["s"]))
            pts_m.append((n, value["rss_mb"]))
        st, sm = _slope(pts_t), _slope(pts_m)
        lines.append(f"| {label} | {stage} | " + " | ".join(cells) + f" | {'-' if st is None else f'{st:.2f}'} | "
                     f"{'-' if sm is None else f'{sm:.2f}'} |")

    add("(both)", "prepare", lambda n: prepare.get(n))
    for model in models:
        for stage in STAGES[1:]:
            add(model, stage, lambda n, m=model, s=stage: latest.get((n, m), {}).get("stages", {}).get(s))
    runs = [f"| {r['date']} | {r['commit']} | {r.get('label', r['model'])} | {r['size']:,} | {r['load_before']} / {r.get('load_after', '-')} "
            f"| {_fmt_s(r['train_process_s']) if 'train_process_s' in r else '-'} |" for r in sorted(rows, key=lambda r: (r["size"], r["model"]))]
    _plot(rows, sizes, models, latest, prepare)
    text = "\n".join([
        "## Scaling: synthetic Amazon-shaped data from 10^5 to 10^7 interactions (`experiments/bench_scaling.py`)",
        "",
        "- Command: `python experiments/bench_scaling.py --sizes " + " ".join(str(n) for n in sizes) + "` "
        f"(models {', '.join(models)}; each stage a fresh process)",
        f"- Machine: {machine()}",
        f"- Data: `dataset=synthetic`, users and items in Amazon Baby 5-core's proportions "
        f"({PER_USER:.2f} interactions per user, {PER_ITEM:.1f} per item), power-law activity, 5-core, "
        f"80/10/10 random split, random features {FEATURES} (float16).",
        "- Each cell: wall time, and the peak RSS of the stage's process (train epoch and validation share one "
        "process, so they share its peak; the FAISS build and the serving figures share one too). "
        "Train epoch and validation come from the run's own perf record (one epoch, one full-ranking pass over "
        "all items, training items masked). Serving: `Recommender.recommend` for one user, k=20, one thread, "
        "300 users. Slopes: least squares of log time (or RSS) over log interactions; 1.0 is linear.",
        "",
        *lines,
        "",
        "Runs (load = 1-minute load average before / after; 2 cores):",
        "",
        "| date | commit | model | interactions | load | train process wall |",
        "|---|---|---|---|---|---|",
        *runs,
        "",
        "![scaling](scaling.png)",
        "",
        "Reading (2026-12-07):",
        "- The 10^7 point completes on this 2-core machine: LightGCN, one epoch of 40 steps 4.1 min, one full-ranking "
        "validation (1.21M users x 438,766 items) 24.3 min, the training process 65 min in all (the selected checkpoint "
        "is validated a second time at the end, with the lists) at a peak RSS of 11.0 GB; export 58 s (4.9 GB), HNSW32 "
        "build 3.9 min, serving p99 16 ms exact / 3 ms FAISS.",
        "- With the dataset's fixed batch of 2,048 pairs an epoch grows as n^2 (slope ~2 for both models): every "
        "step propagates the whole graph (O(n)) and an epoch has n / 2,048 steps. That is MMRec-style full-graph "
        "training itself, not a dense tensor; at 10^7 it would take hours an epoch here. Holding the steps per epoch "
        "(`--steps-per-epoch 40`, batch = training pairs / 40) gives slope 1.2 between 10^6 and 10^7 (the 10^5 40-step "
        "row ran beside another job and is high).",
        "- Full-ranking validation scores every user against every item: O(U x I), slope ~2 in n when users and items "
        "both grow with n (1.9 from 10^6 to 10^7); blocked by `dataset.eval_users_per_batch`, so its memory is "
        "block x items, never U x I.",
        "- Prepare, export, the FAISS build and serving grow at most linearly (FAISS build 1.3); the largest memory is "
        "the training process (graph, features, embeddings and Adam state of 1.65M nodes).",
        "- Not measured: FREEDOM at 10^7 (its first two points, batch 2,048, are above; its item-item kNN is now built "
        "in bounded 128 MB blocks), and any GPU figure.",
    ])
    write_section("scaling", text)


def _plot(rows, sizes, models, latest, prepare) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for model in models:
        for stage, style in (("train epoch", "-o"), ("validation", "--s"), ("export", ":^"), ("faiss build", "-.d")):
            pts = [(n, latest[(n, model)]["stages"][stage]) for n in sizes
                   if (n, model) in latest and stage in latest[(n, model)]["stages"]]
            if pts:
                axes[0].loglog([n for n, _ in pts], [v["s"] for _, v in pts], style, label=f"{model} {stage}")
        pts = [(n, latest[(n, model)]["stages"]["train epoch"]["rss_mb"] / 1024) for n in sizes if (n, model) in latest]
        if pts:
            axes[1].loglog(*zip(*pts), "-o", label=f"{model} train + validation")
    pts = [(n, prepare[n]) for n in sizes if n in prepare]
    if pts:
        axes[0].loglog([n for n, _ in pts], [v["s"] for _, v in pts], "-k*", label="prepare")
        axes[1].loglog([n for n, _ in pts], [v["rss_mb"] / 1024 for _, v in pts], "-k*", label="prepare")
    if sizes:
        ref = [sizes[0], sizes[-1]]
        axes[0].loglog(ref, [1, sizes[-1] / sizes[0]], color="0.7", lw=4, alpha=0.4, label="slope 1 (from 1 s)")
    axes[0].set(xlabel="interactions", ylabel="seconds", title="time per stage")
    axes[1].set(xlabel="interactions", ylabel="peak RSS (GB)", title="peak memory per process")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")  # the data sit lower right
    fig.tight_layout()
    fig.savefig(PLOT, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--models", nargs="+", default=["lightgcn", "freedom"])
    parser.add_argument("--timeout", type=int, default=4 * 3600, help="seconds per stage")
    parser.add_argument("--steps-per-epoch", type=int, default=None,
                        help="training steps per epoch at every size (batch = training pairs / steps); default: batch 2048")
    parser.add_argument("--keep-data", action="store_true", help="reuse a prepared size (no prepare row)")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    rows = _load()
    if not args.report_only:
        for n in args.sizes:
            jobs = [("prepare", lambda: prepare(n, args.timeout))] if not args.keep_data or not _data_folder(n).is_dir() else []
            jobs += [(model, lambda m=model: measure(n, m, args.timeout, args.steps_per_epoch)) for model in args.models]
            for name, job in jobs:
                row = job()
                rows = [r for r in _load() if not (r["size"] == n and r["model"] == name
                                                   and r.get("batching") == row.get("batching"))] + [row]
                _save(rows)
                print(json.dumps(row), flush=True)
    report(rows)


if __name__ == "__main__":
    main()
