"""The service under an open-loop load, beside a plain reference app in the same run
-> experiments/RESULTS.md and docs/serve_latency.png.

    python experiments/bench_serve_load.py [--bundle 100k=synthetic] [--workers 2]
        [--rates 100 200 300 400 500] [--seconds 30] [--tag ...]

For each bundle (``synthetic`` builds bench_recommend's 100k x 64 catalogue) two services run
side by side on 127.0.0.1, each with ``--workers`` processes and one thread per worker:

* ``python -m mmrec.serve`` (exact retrieval, 200 candidates), asked for the top-20 and for
  MMR 20 of 200 (``&diversity=0.3``);
* the reference (``reference_serve_app.py``: FastAPI + numpy exact top-20 over the same
  vectors, under ``uvicorn --workers``).

Per service and list: a single client (1,000 requests in a closed loop, concurrency 1), then
each offered rate for ``--seconds`` from an independent open-loop client process
(``loadgen.py``: schedule-based sends, latency from the scheduled time, no connection cap,
the achieved rate measured from the socket writes). Rates are interleaved across the
services (rate 1 on each, then rate 2, ...) so that the machine's drift hits them alike, and
the service is drained (answers at idle speed again) before the next level. Maximum
throughput = the highest offered rate with p99 <= 25 ms, < 0.1% errors and timeouts, and the
offered rate achieved (>= 97%). A closed loop at concurrency 32 gives requests/s only: its
latency is c / throughput (Little's law), not a latency under load. Worker memory: USS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, git_commit, machine, write_section  # noqa: E402
from loadgen import Conn, percentile  # noqa: E402

HERE = Path(__file__).resolve().parent
P99_MS, MAX_ERRORS, MIN_ACHIEVED = 25.0, 0.001, 0.97


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _health(port: int, timeout: float = 1.0) -> float | None:
    """Seconds one ``/health`` took, or None when the service did not answer."""
    import httpx

    start = time.perf_counter()
    try:
        ok = httpx.get(f"http://127.0.0.1:{port}/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return None
    return time.perf_counter() - start if ok else None


def _workers(proc: subprocess.Popen) -> list:
    import psutil

    parent = psutil.Process(proc.pid)
    # forked (mmrec) or spawned (uvicorn --workers) workers; uvicorn's spawn also starts a resource tracker
    kids = [c for c in parent.children(recursive=True) if "resource_tracker" not in " ".join(c.cmdline())]
    return kids or [parent]


def start(kind: str, bundle: Path, workers: int) -> tuple[subprocess.Popen, int]:
    port = _free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if kind == "mmrec":
        cmd = [sys.executable, "-m", "mmrec.serve", f"bundle={bundle}", f"port={port}", f"workers={workers}",
               "threads=1", "verify=false", "log_level=warning"]
    else:
        env["MMREC_REFERENCE_BUNDLE"] = str(bundle)
        cmd = [sys.executable, "-m", "uvicorn", "reference_serve_app:app", "--app-dir", str(HERE), "--port", str(port),
               "--workers", str(workers), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.time() + 180
    while time.time() < deadline:
        if _health(port) is not None and (workers == 1 or len(_workers(proc)) >= workers):
            time.sleep(3)  # every worker's lifespan done
            return proc, port
        if proc.poll() is not None:
            raise RuntimeError(f"{kind} service exited: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.3)
    raise RuntimeError(f"{kind} service did not become healthy in 180 s")


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def drain(port: int, limit_s: float = 20.0) -> None:
    """Wait until the service answers ``/health`` at idle speed three times in a row."""
    deadline, fast = time.time() + limit_s, 0
    while time.time() < deadline and fast < 3:
        took = _health(port, timeout=2.0)
        fast = fast + 1 if took is not None and took < 0.02 else 0
        time.sleep(0.2)


async def single_client(port: int, paths: list[str], count: int = 1000) -> dict:
    conn, latencies, errors = await Conn.open(port), [], 0
    for path in paths[:count]:
        t0 = time.perf_counter()
        conn.send(path)
        errors += await conn.answer() != 200
        latencies.append(1000 * (time.perf_counter() - t0))
    conn.close()
    return {"p50": percentile(latencies, 0.5), "p95": percentile(latencies, 0.95),
            "p99": percentile(latencies, 0.99), "errors": errors / count}


async def closed_loop(port: int, paths: list[str], concurrency: int, seconds: float) -> float:
    """Requests/s of ``concurrency`` clients each sending its next request when the last one returns."""
    conns = [await Conn.open(port) for _ in range(concurrency)]
    stop_at, done = time.perf_counter() + seconds, 0

    async def worker(conn: Conn, i: int) -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            conn.send(paths[i % len(paths)])
            await conn.answer()
            done, i = done + 1, i + concurrency

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(c, n) for n, c in enumerate(conns)))
    for c in conns:
        c.close()
    return done / (time.perf_counter() - t0)


def offered(port: int, paths_file: str, rate: int, seconds: float) -> dict:
    out = subprocess.run([sys.executable, str(HERE / "loadgen.py"), "--port", str(port), "--paths", paths_file,
                          "--rate", str(rate), "--seconds", str(seconds)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def holds(level: dict) -> bool:
    return (level["p99"] <= P99_MS and level["errors"] + level["timeouts"] < MAX_ERRORS
            and level["achieved"] >= MIN_ACHIEVED * level["offered"])


def users_of(bundle: Path) -> list[str]:
    import pandas as pd

    return pd.read_parquet(bundle / "users.parquet")["raw_id"].astype(str).tolist()


def bundle_path(spec: str) -> Path:
    if spec == "synthetic":
        from bench_recommend import _synthetic_bundle

        return _synthetic_bundle(100_000)
    return Path(spec)


def plot(rows: list[dict], rates: list[int], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    for n, row in enumerate(rows):
        ax.plot(rates, [lv["p99"] for lv in row["levels"]], marker="o", color=f"C{n}", label=f"{row['label']} p99")
        ax.plot(rates, [lv["p50"] for lv in row["levels"]], marker=".", linestyle=":", color=f"C{n}")
    ax.axhline(P99_MS, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xlabel("offered load (requests/s, open loop)")
    ax.set_ylabel("latency from the scheduled send (ms)")
    ax.set_yscale("log")
    ax.set_title("dotted: p50; dashed: the 25 ms p99 goal")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="100k=synthetic", help="name=<bundle folder> or name=synthetic")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rates", nargs="+", type=int, default=[100, 200, 300, 400, 500])
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds per offered rate")
    parser.add_argument("--tag", default="", help="RESULTS section serve_load_TAG (default: serve_load)")
    args = parser.parse_args()
    name, spec = args.bundle.split("=", 1)
    bundle = bundle_path(spec)
    users = users_of(bundle)
    rng = random.Random(0)
    chosen = [rng.choice(users) for _ in range(20000)]
    tmp = Path(tempfile.mkdtemp(prefix="serve_load_"))
    services: dict[str, tuple[subprocess.Popen, int]] = {}
    rows = [{"label": "mmrec top-20", "kind": "mmrec", "extra": ""},
            {"label": "mmrec MMR 20 of 200", "kind": "mmrec", "extra": "&diversity=0.3"},
            {"label": "reference top-20", "kind": "reference", "extra": ""}]
    load0 = os.getloadavg()[0]
    try:
        for kind in ("mmrec", "reference"):  # inside the try: a second start that fails stops the first
            services[kind] = start(kind, bundle, args.workers)
        for n, row in enumerate(rows):
            proc, port = services[row["kind"]]
            paths = [f"/users/{u}/recommendations?k=20{row['extra']}" for u in chosen]
            row["paths"] = str(tmp / f"paths_{n}.txt")
            Path(row["paths"]).write_text("\n".join(paths))
            asyncio.run(closed_loop(port, paths, 4, 3.0))  # warm-up
            row["single"] = asyncio.run(single_client(port, paths))
            row["memory"] = [round(w.memory_full_info().uss / 2**20) for w in _workers(proc)]
            row["levels"] = []
        for rate in args.rates:
            for row in rows:
                port = services[row["kind"]][1]
                drain(port)
                level = offered(port, row["paths"], rate, args.seconds)
                row["levels"].append(level)
                print(row["label"], json.dumps(level), flush=True)
        for row in rows:
            port = services[row["kind"]][1]
            drain(port)
            paths = Path(row["paths"]).read_text().splitlines()
            row["closed32"] = asyncio.run(closed_loop(port, paths, 32, 10.0))
    finally:
        for proc, _ in services.values():
            stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)
    load1 = os.getloadavg()[0]
    header = ("| service | single client p50 / p95 / p99 ms | "
              + " | ".join(f"{r}/s p50 / p99 ms (err+timeout)" for r in args.rates)
              + " | max open-loop rate holding p99 <= 25 ms | closed loop c=32 req/s | worker USS MB |")
    lines = [header, "|---|---|" + "---|" * len(args.rates) + "---|---|---|"]
    for row in rows:
        s = row["single"]
        cells = [row["label"], f"{s['p50']:.1f} / {s['p95']:.1f} / {s['p99']:.1f}"]
        for lv in row["levels"]:
            mark = "" if holds(lv) else " ✗"
            cells.append(f"{lv['p50']:.1f} / {lv['p99']:.1f} ({100 * (lv['errors'] + lv['timeouts']):.1f}%){mark}")
        held = [lv["offered"] for lv in row["levels"] if holds(lv)]
        cells += [f"{max(held):.0f}" if held else f"< {args.rates[0]}", f"{row['closed32']:.0f}",
                  " + ".join(map(str, row["memory"]))]
        lines.append("| " + " | ".join(cells) + " |")
    levels = [lv for row in rows for lv in row["levels"]]
    achieved = min(lv["achieved"] / lv["offered"] for lv in levels)
    lag = max(lv["send_lag_p99"] for lv in levels)
    cpu = max(lv["client_cpu"] for lv in levels)
    conns = max(lv["most_connections"] for lv in levels)
    tag = f"_{args.tag}" if args.tag else ""
    png = ROOT / "docs" / f"serve_latency{tag}.png"
    plot(rows, args.rates, png)
    text = f"""## The service under an open-loop load, beside a plain reference app (`experiments/bench_serve_load.py`)

- Command: `python experiments/bench_serve_load.py --bundle {args.bundle} --workers {args.workers} --rates {' '.join(map(str, args.rates))} --seconds {args.seconds:g}{' --tag ' + args.tag if args.tag else ''}`
- Machine: {machine()}; client and services on the same 2 cores; load average {load0:.2f} at the start, {load1:.2f} at the end
- Date: {time.strftime('%Y-%m-%d %H:%M')}, code: commit {git_commit()}
- Catalogue `{name}` ({bundle.name}); {args.workers} worker processes per service, one thread each. mmrec: `python -m mmrec.serve`, exact
  retrieval, 200 candidates; reference: FastAPI + numpy exact top-20 (`experiments/reference_serve_app.py`, `uvicorn --workers`).
  `GET /users/<random user>/recommendations?k=20`. Each rate offered for {args.seconds:g} s by an independent open-loop client
  process (`experiments/loadgen.py`), rates interleaved across the services, drained between levels; latency from the
  scheduled send, timeout 2 s; ✗ = the level fails p99 <= {P99_MS:g} ms, < {100 * MAX_ERRORS:g}% errors + timeouts or
  >= {100 * MIN_ACHIEVED:g}% of the rate achieved.
- The client: achieved rate (from its socket writes) >= {100 * achieved:.1f}% of the offered one at every level; its sends were at
  most {lag:.1f} ms late (p99); its CPU at most {100 * cpu:.1f}% of one core; at most {conns} connections open at once.

{chr(10).join(lines)}

![latency against offered load](../docs/{png.name})
"""
    write_section(f"serve_load{tag}", text)
    print(text)


if __name__ == "__main__":
    main()
