"""CPU threads on a busy machine, and the demo's wall time -> experiments/RESULTS.md.

Usage (from the repository root):

    python experiments/bench_threads.py                 # load 3, 2 rounds
    python experiments/bench_threads.py --load 3 --rounds 2 --epochs 8

A busy shared node is emulated by ``--load`` background processes, each multiplying matrices
with 2 threads for as long as the benchmark runs (load average about 2 x load). Under that
load, and before it on the quiet machine, the demo trains ``--epochs`` epochs (LightGCN, no early
stop) with the default thread count (``threads=null``: the cores this process may use), the same
with ``OMP_WAIT_POLICY=PASSIVE`` (libgomp's waiting threads sleep instead of spinning) and with
``threads=1``, the order rotating per round; s/epoch is the median of each run's epochs after the first. Then the default demo command (``python -m mmrec.train``,
its own budget of 30 epochs) runs once on the quiet machine and once under the load with each
thread setting: its wall time is what the README promises.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, git_commit, machine, run_train, write_section  # noqa: E402

TIMED = ["logger=none", "test=false", "callbacks.early_stopping.patience=1000"]


def _burn(stop: "mp.synchronize.Event") -> None:
    """A process of another user: dense matrix products on 2 threads until told to stop."""
    import torch

    torch.set_num_threads(2)
    a = torch.randn(512, 512)
    while not stop.is_set():
        a = torch.tanh(a @ a)


#: (label, threads, OMP_WAIT_POLICY) of each timed setting; libgomp's default wait policy spins
#: a waiting thread for a while before it sleeps, PASSIVE sleeps at once
SETTINGS = [("threads=null", "null", None), ("threads=null, OMP_WAIT_POLICY=PASSIVE", "null", "PASSIVE"),
            ("threads=1", "1", None)]


def _timed(name: str, threads: str, epochs: int, wait_policy: str | None = None) -> dict:
    old = os.environ.pop("OMP_WAIT_POLICY", None)
    if wait_policy:
        os.environ["OMP_WAIT_POLICY"] = wait_policy  # inherited by the training process
    try:
        record = run_train(name, [f"threads={threads}", f"trainer.max_epochs={epochs}", *TIMED])
    finally:
        os.environ.pop("OMP_WAIT_POLICY", None)
        if old is not None:
            os.environ["OMP_WAIT_POLICY"] = old
    epoch_s = record["perf"]["train_epoch_s"][1:] or record["perf"]["train_epoch_s"]
    return {"s_epoch": statistics.median(epoch_s), "wall_s": record["wall_s"]}


def _rounds(tag: str, rounds: int, epochs: int) -> dict[str, list[dict]]:
    """Every setting ``rounds`` times, the order rotated each round."""
    timed: dict[str, list[dict]] = {label: [] for label, _, _ in SETTINGS}
    for rnd in range(rounds):
        for j in range(len(SETTINGS)):
            label, threads, policy = SETTINGS[(j + rnd) % len(SETTINGS)]
            timed[label].append(_timed(f"threads_{tag}_{j}_r{rnd}", threads, epochs, policy))
    return timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--load", type=int, default=3, help="background processes (2 threads each)")
    parser.add_argument("--rounds", type=int, default=2, help="runs per thread setting, quiet and under load")
    parser.add_argument("--epochs", type=int, default=8, help="epochs per timed run")
    parser.add_argument("--no-demo", action="store_true", help="skip the default demo's wall time")
    args = parser.parse_args()

    with open("/proc/loadavg") as fh:
        quiet_load = fh.read().split()[0]
    quiet = _rounds("quiet", args.rounds, args.epochs)
    demo_quiet = None if args.no_demo else run_train("threads_demo_quiet", [])
    stop = mp.Event()
    burners = [mp.Process(target=_burn, args=(stop,), daemon=True) for _ in range(args.load)]
    for proc in burners:
        proc.start()
    time.sleep(3)  # let the load build up
    try:
        loaded = _rounds("loaded", args.rounds, args.epochs)
        demo_loaded = {} if args.no_demo else {
            threads: run_train(f"threads_demo_loaded_{threads}", [f"threads={threads}"]) for threads in ("null", "1")}
        with open("/proc/loadavg") as fh:
            load = fh.read().split()[0]
    finally:
        stop.set()
        for proc in burners:
            proc.join(timeout=10)

    lines = [
        "## CPU threads on a busy machine, and the demo's wall time (`experiments/bench_threads.py`)",
        "",
        f"- Command: `python experiments/bench_threads.py --load {args.load} --rounds {args.rounds} "
        f"--epochs {args.epochs}{' --no-demo' if args.no_demo else ''}`",
        f"- Machine: {machine()}",
        f"- Date: {time.strftime('%Y-%m-%d')}, code: commit {git_commit()}",
        f"- Quiet: load average {quiet_load} before the quiet runs (other users of the machine included). Busy: "
        f"{args.load} background processes multiplying 512 x 512 matrices on 2 threads each (load average "
        f"{load} at the end). Demo LightGCN, {args.epochs} epochs per run, no early stop; s/epoch = median of each "
        f"run's epochs after the first, then the median over {args.rounds} runs per setting (order rotated each "
        "round). `threads=null` is the default (the cores this process may use).",
        "",
        "| setting | quiet s / epoch (runs) | quiet median | x threads=null | busy s / epoch (runs) | busy median | x threads=null |",
        "|---|---|---|---|---|---|---|",
    ]
    base = {name: statistics.median(r["s_epoch"] for r in part["threads=null"]) for name, part in
            (("quiet", quiet), ("busy", loaded))}
    for label, _, _ in SETTINGS:
        cells = []
        for name, part in (("quiet", quiet), ("busy", loaded)):
            med = statistics.median(r["s_epoch"] for r in part[label])
            cells += [", ".join(f"{r['s_epoch']:.2f}" for r in part[label]), f"{med:.2f}", f"{med / base[name]:.2f}"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if args.no_demo:
        write_section("threads_busy", "\n".join(lines))
        print("\n".join(lines))
        return
    lines += [
        "",
        "The default demo (`python -m mmrec.train`: LightGCN on `dataset=demo`, its budget of 30 epochs, "
        "patience 10), wall time of the whole command including data generation on first use:",
        "",
        "| machine | threads | wall (s) | epochs | best epoch | val Recall@20 |",
        "|---|---|---|---|---|---|",
        f"| quiet | null | {demo_quiet['wall_s']:.0f} | {demo_quiet['epochs_trained']} | {demo_quiet['best_epoch']} "
        f"| {demo_quiet['metrics']['val/recall@20']:.4f} |",
    ]
    for threads, rec in demo_loaded.items():
        lines.append(f"| load {args.load} | {threads} | {rec['wall_s']:.0f} | {rec['epochs_trained']} | "
                     f"{rec['best_epoch']} | {rec['metrics']['val/recall@20']:.4f} |")
    write_section("threads_busy", "\n".join(lines))
    print("\n".join(lines))
    print(f"\nrun folders under {OUT}")


if __name__ == "__main__":
    main()
