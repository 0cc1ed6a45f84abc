"""Two-stage ranking (merged candidate sources + LightGBM lambdarank) against the model alone ->
experiments/RESULTS.md, section ``two_stage_<dataset>``.

    python experiments/bench_two_stage.py --dataset ml100k --runs 'logs/bench/ml100k_lgmrec_graph_sum_uniform_ssl_s*'
    python experiments/bench_two_stage.py --dataset baby --runs 'logs/bench/baby_xsimgcl_none_uniform_cl002_s*' \\
        --extra 'ranker.grid.num_leaves=[15]'
    python experiments/bench_two_stage.py --latency   # serving p99 at 100k items with a ranker

For every finished run (one per seed, each validation-selected): ``python -m mmrec.export
run=<run> ranker=lightgbm`` into ``logs/bench/two_stage/<run>``, then the test evaluation of
the bundle's model alone and of its union + ranker (:func:`mmrec.two_stage.evaluate_bundle`:
full ranking, training and validation items excluded, beyond-accuracy included) and the
recall of each candidate source. The ranker's hyper-parameters are chosen on held-out
validation users at export; the test set is read once per run, here.

``--latency``: a bundle of random vectors with 100k items (and the ranker of the first run
measured, whose features it shares), timed with one client calling ``Recommender.recommend``
for one user at a time: p50 / p99 with the ranker and without (the same bundle, ``ranker=off``).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, ROOT, git_commit, machine, mean_std, write_section  # noqa: E402

STORE = OUT / "two_stage"
METRICS = ("recall@20", "ndcg@20", "coverage@20", "cold_exposure@20", "novelty@20", "cold/recall@20")


def measure(run: Path, extra: list[str]) -> dict:
    out = STORE / run.name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    start = time.perf_counter()
    export = subprocess.run([sys.executable, "-m", "mmrec.export", f"run={run}", f"out={out / 'bundle'}",
                             "ranker=lightgbm", *extra], cwd=ROOT, capture_output=True, text=True)
    (out / "export.log").write_text(export.stdout + export.stderr)
    if export.returncode:
        raise SystemExit(f"export of {run} failed (rc {export.returncode}); see {out / 'export.log'}")
    export_s = time.perf_counter() - start
    code = ("import json, sys\nfrom pathlib import Path\nfrom mmrec.run import assemble, saved_config\n"
            "from mmrec.serving.bundle import load_bundle\nfrom mmrec.two_stage import evaluate_bundle\n"
            "run = assemble(saved_config(Path(sys.argv[1]) / 'config.yaml'))\n"
            "print(json.dumps(evaluate_bundle(run, load_bundle(sys.argv[2]))))\n")
    start = time.perf_counter()
    ev = subprocess.run([sys.executable, "-c", code, str(run), str(out / "bundle")], cwd=ROOT, capture_output=True,
                        text=True)
    if ev.returncode:
        raise SystemExit(f"evaluation of {out / 'bundle'} failed:\n{ev.stderr[-3000:]}")
    record = json.loads(ev.stdout.strip().splitlines()[-1])
    manifest = json.loads((out / "bundle" / "manifest.json").read_text())
    record.update(run=str(run), export_seconds=round(export_s, 1), evaluate_seconds=round(time.perf_counter() - start, 1),
                  ranker={k: v for k, v in manifest["ranker"].items() if k not in ("features",)},
                  seed=json.loads((run / "metrics.json").read_text()).get("seed"))
    (out / "result.json").write_text(json.dumps(record, indent=2))
    return record


def _row(name: str, records: list[dict], key: str) -> str:
    cells = []
    for m in METRICS:
        values = [r[key].get(m) for r in records if r[key].get(m) is not None]
        cells.append(mean_std(values) if values else "-")
    return f"| {name} | " + " | ".join(cells) + " |"


def report(dataset: str, records: list[dict], pattern: str, extra: list[str], best_single: str | None) -> None:
    records = sorted(records, key=lambda r: r["run"])
    model = records[0]["ranker"]
    gain = [r["two_stage"]["recall@20"] / r["model"]["recall@20"] - 1 for r in records]
    lines = [
        f"## Two-stage ranking on {dataset} (`experiments/bench_two_stage.py`)", "",
        f"- Command: `python experiments/bench_two_stage.py --dataset {dataset} --runs '{pattern}'"
        + (f" --extra {' '.join(extra)}" if extra else "") + "`",
        f"- Machine: {machine()}", f"- Date: {time.strftime('%Y-%m-%d')}, code: commit {git_commit()}",
        f"- Retrieval runs ({len(records)} seeds, each validation-selected): "
        + ", ".join(f"`{Path(r['run']).name}`" for r in records),
        f"- Sources: {model['sizes']} (recent {model['recent']}, co-occurrence neighbours {model['neighbours']}); "
        f"LightGBM lambdarank; its grid {model['tried'][0]['params'].keys() and [t['params'] for t in model['tried']]} "
        f"chosen by mean NDCG@20 over {model['folds']} folds of the {model['validation_users']} validation users (each "
        f"fold held out in turn, rounds by early stopping), refitted on all; the test set read once per run.",
        "", "| ranking | " + " | ".join(f"test {m}" for m in METRICS) + " |",
        "|---|" + "---|" * len(METRICS),
        _row("model alone (its bundle)", records, "model"), _row("union + LightGBM ranker", records, "two_stage"), "",
        f"Recall@20 gain over the same model: {mean_std([100 * g for g in gain], 2)} % (per seed: "
        + ", ".join(f"{100 * g:+.2f}" for g in gain) + ")." + (f" Best single model of the tables: {best_single}." if best_single else ""),
        "", "| seed | chosen | rounds | validation recall@20 out of fold: model / ranker | export s | test eval s |", "|---|---|---|---|---|---|",
    ]
    for r in records:
        h = r["ranker"]["held_out"]
        lines.append(f"| {r['seed']} | {r['ranker']['params']} | {r['ranker']['rounds']} | "
                     f"{h['model/recall@20']:.4f} / {h['ranker/recall@20']:.4f} | {r['export_seconds']} | {r['evaluate_seconds']} |")
    src = records[0]["source_recall"]
    lines += ["", "Recall of the test items by each source's proposals (mean over seeds):", "",
              "| " + " | ".join(src) + " |", "|" + "---|" * len(src),
              "| " + " | ".join(f"{statistics.mean(r['source_recall'][k] for r in records):.4f}" for k in src) + " |"]
    write_section(f"two_stage_{dataset}", "\n".join(lines))


def latency(ranker_bundle: Path, items: int = 100_000, users: int = 20_000, requests: int = 300) -> None:
    """p50 / p99 of one-user requests at ``items`` items, with the ranker and without."""
    import numpy as np
    import pandas as pd

    from mmrec.serving.bundle import load_bundle, write_bundle
    from mmrec.serving.recommender import Recommender
    from mmrec.serving.two_stage import StageData, bundle_arrays

    import torch

    source = load_bundle(ranker_bundle)
    entry = source.manifest["ranker"]
    rng = np.random.default_rng(0)
    dim = 64
    hist_len = rng.integers(5, 40, users)
    indptr = np.concatenate([[0], np.cumsum(hist_len)])
    # heavy-tailed item choice, as real catalogues
    weights = 1.0 / np.arange(1, items + 1) ** 0.8
    indices = rng.choice(items, size=int(indptr[-1]), p=weights / weights.sum())
    times = rng.uniform(0, 3e7, len(indices))
    dims = entry["modalities"]
    content = rng.standard_normal((items, sum(dims.values()))).astype(np.float32)
    bounds = np.cumsum([0, *dims.values()])
    for a, b in zip(bounds[:-1], bounds[1:]):  # the fused layout: unit blocks scaled by 1/sqrt(M)
        content[:, a:b] /= np.linalg.norm(content[:, a:b], axis=1, keepdims=True) * len(dims) ** 0.5
    item_vectors = rng.standard_normal((items, dim)).astype(np.float32) * 0.3
    data = StageData.build(torch.from_numpy(item_vectors), torch.from_numpy(content), dims, indptr, indices, times,
                           torch.ones(items, dtype=torch.bool), None, entry["neighbours"])
    arrays = {"user_vectors": rng.standard_normal((users, dim)).astype(np.float32) * 0.3, "item_vectors": item_vectors,
              "item_rankable": np.ones(items, bool), "item_popularity": np.bincount(indices, minlength=items),
              "history_indptr": indptr, "history_indices": indices, "content_vectors": content, **bundle_arrays(data)}
    items_t = pd.DataFrame({"item": np.arange(items), "raw_id": [f"i{i}" for i in range(items)],
                            "title": [f"item {i}" for i in range(items)], "text": "", "image": ""})
    users_t = pd.DataFrame({"user": np.arange(users), "raw_id": [f"u{u}" for u in range(users)]})
    out = STORE / "latency_bundle"
    extra = {"ranker": {**entry, "now": data.now}}
    write_bundle(out, arrays, items_t, users_t, {"model": "random"}, extra, force=True,
                 ranker_model=(ranker_bundle / "ranker.txt").read_text())
    rows = []
    order = rng.integers(0, users, requests)
    recs = {"ranker": Recommender.load(out, ranker="on"), "model alone": Recommender.load(out, ranker="off")}
    timings: dict[str, list[float]] = {name: [] for name in recs}
    for n, u in enumerate(order):  # interleaved: both see the same machine state
        for name in (recs if n % 2 == 0 else reversed(list(recs))):
            start = time.perf_counter()
            recs[name].recommend([f"u{u}"], k=20)
            timings[name].append((time.perf_counter() - start) * 1e3)
    for name, ms in timings.items():
        ms = ms[10:]  # warm-up
        rows.append(f"| {name} | {items:,} | {statistics.median(ms):.2f} | {float(np.percentile(ms, 99)):.2f} |")
    write_section("two_stage_latency", "\n".join([
        "## Two-stage ranking: serving latency at 100k items (`experiments/bench_two_stage.py --latency`)", "",
        "- Command: `python experiments/bench_two_stage.py --latency`", f"- Machine: {machine()}",
        f"- Date: {time.strftime('%Y-%m-%d')}, code: commit {git_commit()}; load average {os.getloadavg()[0]:.2f} at the end",
        f"- A bundle of random vectors: {items:,} items, {users:,} users, 64-d, content {dims}, heavy-tailed histories "
        f"of 5-40 items; the ranker of `{ranker_bundle.parent.name}` (same features). One client, one user per "
        f"request, k=20, exact scoring, {requests - 10} timed requests each, interleaved; torch threads "
        f"{torch.get_num_threads()}.", "",
        "| ranking | items | p50 ms | p99 ms |", "|---|---|---|---|", *rows]))
    shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml100k")
    parser.add_argument("--runs", help="glob of finished run folders (one per seed)")
    parser.add_argument("--extra", nargs="*", default=[], help="more export overrides (ranker.*)")
    parser.add_argument("--best-single", default=None, help="the best single model's row, quoted in the reading")
    parser.add_argument("--latency", action="store_true", help="serving p99 at 100k items instead")
    parser.add_argument("--ranker-bundle", default=None, help="with --latency: the bundle whose ranker is timed")
    args = parser.parse_args()
    if args.latency:
        bundle = Path(args.ranker_bundle) if args.ranker_bundle else sorted(STORE.glob("ml100k_*/bundle"))[0]
        latency(bundle)
        return
    runs = sorted(Path(p) for p in glob.glob(str(ROOT / args.runs) if not os.path.isabs(args.runs) else args.runs))
    if not runs:
        raise SystemExit(f"no run folders match {args.runs}")
    records = [measure(r, args.extra) for r in runs]
    report(args.dataset, records, args.runs, args.extra, args.best_single)


if __name__ == "__main__":
    main()
