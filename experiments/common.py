"""Helpers shared by the benchmark scripts: run a training job, describe the machine, write RESULTS.md."""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "RESULTS.md"
OUT = ROOT / "logs" / "bench"


def machine() -> str:
    import psutil
    import torch

    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{os.cpu_count()} CPU cores ({cpu}), {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, "
            f"{gpu}; Python {platform.python_version()}, torch {torch.__version__}")


def git_commit(root: Path = ROOT) -> str:
    """Short commit of the checkout ``root`` (default: the one the benchmark runs from;
    ``+dirty`` if it has changes)."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                             text=True, check=True).stdout.strip()
        # RESULTS.md is rewritten by the benchmarks themselves: it does not make the code dirty.
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":!experiments/RESULTS.md"], cwd=root, capture_output=True, text=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_train(name: str, overrides: list[str], timeout: int = 7200, cwd: Path = ROOT,
              out_root: Path = OUT) -> dict:
    """Run ``python -m mmrec.train`` in a fresh process from the checkout ``cwd`` (its own
    ``mmrec`` comes first on ``sys.path``), its run folder ``out_root / name``; return its
    metrics.json record."""
    out = out_root / name
    cmd = [sys.executable, "-m", "mmrec.train", f"hydra.run.dir={out}", "+trainer.enable_progress_bar=false",
           *overrides]
    start = time.time()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed in {cwd}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    record = json.loads((out / "metrics.json").read_text())
    record["wall_s"] = time.time() - start
    record["command"] = "python -m mmrec.train " + " ".join(overrides)
    return record


def run_parallel(fn, items: list, jobs: int) -> list:
    """``[fn(item) for item in items]`` with ``jobs`` training processes at once; each gets one
    torch thread when ``jobs > 1`` (2 processes x 2 threads would fight over the 2 cores)."""
    if jobs > 1:
        os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the training processes
    with ThreadPoolExecutor(jobs) as pool:
        return list(pool.map(fn, items))  # in the order of `items`


def mean_std(values: list[float], digits: int = 4) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def write_section(key: str, text: str) -> None:
    """Replace (or append) the section between ``<!-- key:start -->`` and ``<!-- key:end -->``."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    body = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\nWritten by the scripts in `experiments/`; each section says how to reproduce it.\n"
    start, end = f"<!-- {key}:start -->", f"<!-- {key}:end -->"
    block = f"{start}\n{text.rstrip()}\n{end}"
    if start in body:
        body = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, body, flags=re.S)
    else:
        body = body.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(body)


def serve_in_thread(app):
    """Start ``app`` with uvicorn on a free port of 127.0.0.1 in a daemon thread of this process:
    ``(server, base URL)``; set ``server.should_exit = True`` to stop it."""
    import socket
    import threading

    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{port}"
