"""Load on the running service: single-client latency, latency under an offered load, maximum
throughput, worker memory -> experiments/RESULTS.md and docs/serve_latency.png.

Usage (from the repository root):

    python experiments/bench_serve_load.py --bundle demo=<dir> --bundle baby=<dir> --bundle 100k=<dir>
        [--workers 1 2] [--rates 50 100 200 400] [--seconds 10]

For each bundle x workers x (top-20, MMR 20 of 200): ``python -m mmrec.serve`` is started on
127.0.0.1 (one torch thread per worker), then

* **single client** (closed loop, concurrency 1): p50 / p95 / p99 of ``GET
  /users/<random user>/recommendations?k=20``;
* **offered load** (open loop): requests are *scheduled* at a constant rate whether or not
  earlier ones returned; each request's latency is counted from its scheduled time, so
  queueing (in the client or the server) shows up in it; p50 / p99 and the share of errors or
  timeouts (2 s) per rate;
* **maximum throughput**: closed loops at concurrency 8 and 32; requests/s and their latency
  distribution (by Little's law a closed loop at concurrency c measures c / throughput: not
  the service's latency at a given load).

The client is a small asyncio HTTP/1.1 keep-alive client (no per-request library overhead);
it reports the rate it achieved against the rate offered and its own CPU time, so that a
client too slow to offer the load is visible. Client and server share the machine's cores.
Worker memory: USS (pages only that process has) of each worker, and the PSS total.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, git_commit, machine, write_section  # noqa: E402

TIMEOUT_S = 2.0


class Conn:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> "Conn":
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def get(self, path: str) -> int:
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        await self.writer.drain()
        status_line = await self.reader.readline()
        if not status_line:  # the server closed an idle keep-alive connection: not an answer
            raise ConnectionResetError("connection closed by the server")
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await self.reader.readexactly(length)
        return int(status_line.split()[1])

    def close(self) -> None:
        self.writer.close()


async def _request(conn: Conn, port: int, path: str) -> tuple[Conn, int]:
    """``(connection used, status)`` of one GET with the timeout; an idle keep-alive connection
    the server has closed is replaced once (as HTTP clients do), not counted as an error."""
    try:
        return conn, await asyncio.wait_for(conn.get(path), TIMEOUT_S)
    except ConnectionResetError:
        conn = await Conn.open(port)
        return conn, await asyncio.wait_for(conn.get(path), TIMEOUT_S)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * (len(values) - 1) + 0.5))]


def _paths(users: list[str], mmr: bool) -> list[str]:
    extra = "&diversity=0.3" if mmr else ""
    rng = random.Random(0)
    return [f"/users/{rng.choice(users)}/recommendations?k=20{extra}" for _ in range(20000)]


async def closed_loop(port: int, paths: list[str], concurrency: int, seconds: float | None,
                      count: int | None = None) -> dict:
    conns = [await Conn.open(port) for _ in range(concurrency)]
    latencies, errors, done = [], 0, 0
    stop = time.perf_counter() + (seconds or 1e9)
    cpu0 = time.process_time()
    start = time.perf_counter()

    async def worker(conn: Conn, offset: int):
        nonlocal errors, done
        i = offset
        while time.perf_counter() < stop and (count is None or done < count):
            t0 = time.perf_counter()
            try:
                conn, status = await _request(conn, port, paths[i % len(paths)])
                errors += status != 200
            except (asyncio.TimeoutError, ConnectionError):
                errors += 1
                conn.close()
                conn = await Conn.open(port)
            latencies.append(1000 * (time.perf_counter() - t0))
            done += 1
            i += concurrency

    await asyncio.gather(*(worker(c, n) for n, c in enumerate(conns)))
    elapsed = time.perf_counter() - start
    for c in conns:
        c.close()
    return {"rps": done / elapsed, "p50": _pct(latencies, 0.5), "p95": _pct(latencies, 0.95),
            "p99": _pct(latencies, 0.99), "errors": errors / max(done, 1), "n": done,
            "client_cpu": (time.process_time() - cpu0) / elapsed}


async def open_loop(port: int, paths: list[str], rate: float, seconds: float, max_conns: int = 256) -> dict:
    idle: list[Conn] = [await Conn.open(port) for _ in range(16)]
    opened = len(idle)
    latencies, errors = [], 0
    total = int(rate * seconds)
    cpu0 = time.process_time()
    start = time.perf_counter()
    finished = 0

    async def one(i: int, scheduled: float):
        nonlocal errors, opened, finished
        if idle:
            conn = idle.pop()
        elif opened < max_conns:
            opened += 1
            conn = await Conn.open(port)
        else:  # the client's own limit: counts as an error, like a refused connection
            errors += 1
            latencies.append(1000 * TIMEOUT_S)
            return
        try:
            conn, status = await _request(conn, port, paths[i % len(paths)])
            errors += status != 200
            idle.append(conn)
        except (asyncio.TimeoutError, ConnectionError):
            errors += 1
            conn.close()
            opened -= 1
        latencies.append(1000 * (time.perf_counter() - scheduled))  # from the scheduled time
        finished += 1

    tasks = []
    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, scheduled)))
    sent_in = time.perf_counter() - start
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    for c in idle:
        c.close()
    return {"offered": rate, "achieved": total / sent_in, "p50": _pct(latencies, 0.5), "p99": _pct(latencies, 0.99),
            "errors": errors / max(total, 1), "client_cpu": (time.process_time() - cpu0) / elapsed}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_service(bundle: str, workers: int, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mmrec.serve", f"bundle={bundle}", f"port={port}", f"workers={workers}", "threads=1",
           "verify=false", "log_level=warning"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    import httpx

    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                if workers == 1:
                    return proc
                # every worker up: each answers /health only after its lifespan loaded the bundle
                if len(_workers(proc)) >= workers:
                    time.sleep(2)
                    return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"mmrec.serve exited: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.3)
    raise RuntimeError("mmrec.serve did not become healthy in 120 s")


def _workers(proc: subprocess.Popen) -> list:
    import psutil

    parent = psutil.Process(proc.pid)
    return parent.children(recursive=True) or [parent]  # workers > 1: forked workers under the parent


def memory(proc: subprocess.Popen) -> dict:
    infos = [w.memory_full_info() for w in _workers(proc)]
    return {"uss_mb": [round(i.uss / 2**20) for i in infos], "pss_total_mb": round(sum(i.pss for i in infos) / 2**20)}


def stop_service(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def users_of(bundle: str) -> list[str]:
    import pandas as pd

    return pd.read_parquet(Path(bundle) / "users.parquet")["raw_id"].astype(str).tolist()


def run_config(name: str, bundle: str, workers: int, mmr: bool, rates: list[int], seconds: float) -> dict:
    port = _free_port()
    proc = start_service(bundle, workers, port)
    try:
        paths = _paths(users_of(bundle), mmr)
        asyncio.run(closed_loop(port, paths, 4, 3.0))  # warm-up
        out = {"catalogue": name, "workers": workers, "mmr": mmr, "memory": memory(proc)}
        out["single"] = asyncio.run(closed_loop(port, paths, 1, None, count=1000))
        out["open"] = [asyncio.run(open_loop(port, paths, rate, seconds)) for rate in rates]
        out["closed"] = {c: asyncio.run(closed_loop(port, paths, c, seconds)) for c in (8, 32)}
        print(name, workers, mmr, out, flush=True)
        return out
    finally:
        stop_service(proc)


def plot(results: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.5), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, mmr in zip(axes, (False, True)):
        for n, r in enumerate([r for r in results if r["mmr"] == mmr]):
            rates = [o["offered"] for o in r["open"]]
            ax.plot(rates, [o["p99"] for o in r["open"]], marker="o", color=f"C{n}",
                    label=f"{r['catalogue']}, {r['workers']} worker(s) p99")
            ax.plot(rates, [o["p50"] for o in r["open"]], marker=".", linestyle=":", color=f"C{n}")
        ax.set_xlabel("offered load (requests/s, open loop)")
        ax.set_yscale("log")
        ax.set_title("k=20 " + ("with MMR (20 of 200)" if mmr else "top-20") + "; dotted: p50")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("latency from scheduled send (ms)")
    axes[1].legend(fontsize="x-small", loc="upper left")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", action="append", required=True, help="name=<bundle folder>")
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--rates", nargs="+", type=int, default=[50, 100, 200, 400])
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per load level")
    args = parser.parse_args()
    bundles = [b.split("=", 1) for b in args.bundle]
    results = [run_config(name, path, w, mmr, args.rates, args.seconds)
               for name, path in bundles for w in args.workers for mmr in (False, True)]
    lines = ["| catalogue | workers | list | single client p50 / p95 / p99 ms | "
             + " | ".join(f"{r}/s: p50 / p99 ms (err)" for r in args.rates)
             + " | c=8: req/s, p50 / p99 ms | c=32: req/s, p50 / p99 ms | worker USS MB | PSS total MB |",
             "|---|---|---|---|" + "---|" * len(args.rates) + "---|---|---|---|"]
    for r in results:
        s = r["single"]
        cells = [r["catalogue"], str(r["workers"]), "MMR 20 of 200" if r["mmr"] else "top-20",
                 f"{s['p50']:.1f} / {s['p95']:.1f} / {s['p99']:.1f}"]
        for o in r["open"]:
            cells.append(f"{o['p50']:.1f} / {o['p99']:.1f} ({100 * o['errors']:.1f}%)")
        for c in (8, 32):
            x = r["closed"][c]
            cells.append(f"{x['rps']:.0f}, {x['p50']:.1f} / {x['p99']:.1f}")
        cells += [" + ".join(map(str, r["memory"]["uss_mb"])), str(r["memory"]["pss_total_mb"])]
        lines.append("| " + " | ".join(cells) + " |")
    achieved = [f"{o['achieved']:.0f}/{o['offered']:.0f}" for r in results for o in r["open"]]
    cpu = max(o["client_cpu"] for r in results for o in r["open"])
    png = ROOT / "docs" / "serve_latency.png"
    plot(results, png)
    text = f"""## The service under load (`experiments/bench_serve_load.py`)

- Command: `python experiments/bench_serve_load.py {' '.join('--bundle ' + b for b in args.bundle)} --workers {' '.join(map(str, args.workers))} --rates {' '.join(map(str, args.rates))} --seconds {args.seconds:g}`
- Machine: {machine()}; client and server on the same 2 cores
- Date: {time.strftime('%Y-%m-%d')}, code: commit {git_commit()}
- `python -m mmrec.serve` (uvicorn, one torch thread per worker, exact retrieval, 200 candidates) on 127.0.0.1;
  `GET /users/<random user>/recommendations?k=20` (MMR rows: `&diversity=0.3`). Single client: 1,000 requests in a closed
  loop. Offered load: an open loop for {args.seconds:g} s per rate, latency counted from each request's scheduled send time,
  timeout {TIMEOUT_S:g} s. Throughput: closed loops at concurrency 8 and 32 for {args.seconds:g} s (their latency is
  c / throughput by Little's law, not the latency at a given load).
- The client (asyncio, keep-alive HTTP/1.1) achieved these rates (achieved/offered): {', '.join(achieved)}; its CPU was at
  most {100 * cpu:.0f}% of one core.

{chr(10).join(lines)}

![latency against offered load](../docs/{png.name})

Targets (issue #16), 100k items with MMR: single-client p99 <= 10 ms; p99 <= 25 ms at 200 requests/s offered; maximum
throughput >= 400 requests/s; each extra worker <= 100 MB beyond the shared vectors (USS of a worker).
"""
    write_section("serve_load", text)
    print(text)


if __name__ == "__main__":
    main()
