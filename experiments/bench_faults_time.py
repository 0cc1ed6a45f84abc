"""Wall time of the fault-injection suite (`pytest -m faults`), with the machine's load -> RESULTS.md.

    python experiments/bench_faults_time.py            # one measurement, appended to the section's rows
    python experiments/bench_faults_time.py --reset    # start the table again

Each row is one run of the suite in a fresh process: wall seconds, the 1-minute load average before
and after (2 cores: a load above 2 means other processes compete for them), and the slowest cases.
Rows accumulate (idle and busy measurements are taken at different times, whenever the machine is
in that state); the JSON under logs/bench keeps them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, ROOT, git_commit, machine, write_section  # noqa: E402

STORE = OUT / "faults_time.json"


def measure() -> dict:
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "faults", "-q", "-p", "no:cacheprovider",
                           "--durations=5"], cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(proc.stdout[-3000:] + proc.stderr[-3000:])
    passed = re.search(r"(\d+) passed", proc.stdout)
    slow = re.findall(r"^([\d.]+)s (?:call|setup)\s+tests/(\S+?)::(\S+)", proc.stdout, flags=re.M)
    return {"date": time.strftime("%Y-%m-%d %H:%M"), "commit": git_commit(), "wall_s": round(wall, 1),
            "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
            "cases": int(passed.group(1)) if passed else None,
            "slowest": [f"{name.split('[')[0]} {float(sec):.1f} s" for sec, _, name in slow[:3]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reset", action="store_true", help="forget the earlier rows")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    rows = [] if args.reset or not STORE.exists() else json.loads(STORE.read_text())
    rows.append(measure())
    STORE.write_text(json.dumps(rows, indent=1))
    lines = ["## Fault suite run time (`experiments/bench_faults_time.py`)", "",
             "- Command: `python experiments/bench_faults_time.py` (one row per run; `pytest -m faults -q` in a fresh "
             "process)", f"- Machine: {machine()}",
             "- Load = 1-minute load average before / after the run (2 cores: above 2, other processes compete). "
             "Goal (issue 25): under 3 minutes on a busy machine.", "",
             "| date | commit | cases | wall s | load before / after | slowest cases |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['date']} | {r['commit']} | {r['cases']} | {r['wall_s']} | {r['load_before']} / {r['load_after']} "
              f"| {'; '.join(r['slowest'])} |" for r in rows]
    write_section("faults_time", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
