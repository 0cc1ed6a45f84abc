"""The import floor of a training run: resident memory after each stage of imports, each in
a fresh process, and which optional packages the stage pulls in -> experiments/RESULTS.md.

    python experiments/bench_import_floor.py

A run's peak RSS minus this floor is what the run itself holds (data, model, evaluation);
the floor is what any Lightning training process on this torch build pays before it starts.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, git_commit, machine, write_section  # noqa: E402

STAGES = [
    ("python", "pass"),
    ("import mmrec.train (the entry point)", "import mmrec.train"),
    ("import torch", "import torch"),
    ("+ import lightning", "import torch, lightning"),
    ("+ pandas (the prepared dataset's tables)", "import torch, lightning, pandas"),
    ("+ mmrec.run, mmrec.lit (what a run imports)", "import torch, lightning, pandas, mmrec.run, mmrec.lit.module"),
]
WATCH = ("torch", "lightning", "torchmetrics", "transformers", "torchvision", "matplotlib", "scipy", "sympy",
         "pandas", "pyarrow", "wandb", "mlflow")
PROBE = """
import json, sys, psutil
{stmt}
print(json.dumps({{"rss_mb": psutil.Process().memory_info().rss / 2**20,
                   "loaded": [m for m in {watch!r} if m in sys.modules]}}))
"""


def main() -> None:
    rows = []
    for label, stmt in STAGES:
        out = subprocess.run([sys.executable, "-c", PROBE.format(stmt=stmt, watch=WATCH)], cwd=ROOT,
                             capture_output=True, text=True, check=True)
        rows.append((label, json.loads(out.stdout.strip().splitlines()[-1])))
        print(label, rows[-1][1], flush=True)
    lines = ["| stage | RSS MB | packages loaded |", "|---|---|---|"]
    lines += [f"| {label} | {r['rss_mb']:.0f} | {', '.join(r['loaded']) or '-'} |" for label, r in rows]
    torch_mb = next(r["rss_mb"] for label, r in rows if label == "import torch")
    lightning_mb = next(r["rss_mb"] for label, r in rows if label == "+ import lightning")
    text = f"""## Import floor of a training run (`experiments/bench_import_floor.py`)

- Command: `python experiments/bench_import_floor.py`
- Machine: {machine()}
- Date: {time.strftime('%Y-%m-%d %H:%M')}, code: commit {git_commit()}
- Resident memory of a fresh process after each stage of imports.

{chr(10).join(lines)}

`import mmrec.train` alone loads no torch: torch, Lightning and the model code are imported only when a run is
built. A run cannot avoid torch ({torch_mb:.0f} MB) or Lightning (+{lightning_mb - torch_mb:.0f} MB). Lightning
imports torchmetrics, and torchmetrics imports its optional text / image dependencies whenever they are
installed (not measured separately): transformers (its BERTScore), torchvision, matplotlib, scipy. mmrec uses
none of them in training. transformers and torchvision are installed for the modality encoders, which run only
in `mmrec.prepare`. pandas reads the prepared dataset's tables.
"""
    write_section("import_floor", text)
    print(text)


if __name__ == "__main__":
    main()
