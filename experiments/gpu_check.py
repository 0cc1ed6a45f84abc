"""GPU check (issue 29): the same code on CPU and GPU gives the same metrics; GPU timings -> RESULTS.md.

Run it on a machine with a GPU (in this project: through ``device`` when a session is lent one):

    python experiments/gpu_check.py                    # equality on the demo + Baby + 10^7 synthetic timings
    python experiments/gpu_check.py --skip-scale       # equality + Baby only
    python experiments/gpu_check.py --device cpu       # the script's own check, on a machine without a GPU

1. **Same metrics.** For LightGCN, VBPR and FREEDOM on the demo, a run is trained on the CPU; its
   selected checkpoint is then validated and tested on the CPU and on the GPU in this process
   (``trainer.accelerator`` only differs). Full ranking over every item is a deterministic
   function of the weights, so every metric must agree to float tolerance (``--tol``, default
   1e-4 absolute: a score tie broken differently may move one item). The script exits 1 if
   not. The same seed trained on the GPU is reported beside it (not asserted: GPU sparse kernels
   add in a different order, so training drifts by float rounding).
2. **Timings on the GPU.** LightGCN on Amazon Baby (``../shared/data/amazon-baby``), 4 epochs:
   median s/epoch and s/validation after the first; and LightGCN on the 10^7-interaction
   synthetic set (Baby's proportions), one epoch and one full-ranking validation.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, git_commit, machine, run_train, write_section  # noqa: E402

MODELS = ("lightgcn", "vbpr", "freedom")
DEMO = ["dataset=demo", "dataset.source.num_users=300", "dataset.source.num_items=200", "logger=none", "test=false",
        f"paths.data_dir={OUT / 'gpu_check_data'}"]


def _fresh(name: str) -> str:
    """``name`` of a run folder under OUT, emptied first (a run folder is never written twice)."""
    shutil.rmtree(OUT / name, ignore_errors=True)
    shutil.rmtree(OUT / f"{name}-eval-cpu", ignore_errors=True)
    shutil.rmtree(OUT / f"{name}-eval-gpu", ignore_errors=True)
    return name


def _accelerator(device: str) -> str:
    return "gpu" if device == "cuda" else "cpu"


def evaluate_on(run: Path, accelerator: str) -> dict[str, float]:
    """Validation and test metrics of ``run``'s selected checkpoint, evaluated on ``accelerator``."""
    from omegaconf import OmegaConf

    from mmrec.train import build

    cfg = OmegaConf.load(run / "config.yaml")
    OmegaConf.set_struct(cfg, False)
    cfg.trainer.accelerator = accelerator
    cfg.trainer.devices = 1
    cfg.paths.output_dir = str(run.parent / f"{run.name}-eval-{accelerator}")
    cfg.logger = None
    cfg.callbacks = None
    record = json.loads((run / "metrics.json").read_text())
    objects = build(cfg)
    trainer, module, data = objects["trainer"], objects["module"], objects["datamodule"]
    (val,) = trainer.validate(module, datamodule=data, ckpt_path=record["best_checkpoint"], verbose=False)
    (test,) = trainer.test(module, datamodule=data, ckpt_path=record["best_checkpoint"], verbose=False)
    return {k: float(v) for k, v in {**val, **test}.items()}


def check_equal(device: str, tol: float) -> tuple[list[str], bool]:
    rows, ok = ["| model | metric | CPU eval | " + device.upper() + " eval | max abs diff (all metrics) "
                "| trained on " + device.upper() + ": val R@20 |", "|---|---|---|---|---|---|"], True
    for model in MODELS:
        common = [f"model={model}", *DEMO, "trainer.max_epochs=3", "seed=0"]
        cpu_run = run_train(_fresh(f"gpu_check/{model}_cpu"), ["trainer.accelerator=cpu", *common])
        run = OUT / f"gpu_check/{model}_cpu"
        on_cpu, on_dev = evaluate_on(run, "cpu"), evaluate_on(run, _accelerator(device))
        keys = sorted(set(on_cpu) & set(on_dev))
        diff = max(abs(on_cpu[k] - on_dev[k]) for k in keys)
        ok &= diff <= tol and set(on_cpu) == set(on_dev)
        dev_run = run_train(_fresh(f"gpu_check/{model}_{device}_trained"), [f"trainer.accelerator={_accelerator(device)}", *common])
        rows.append(f"| {model} | val/recall@20 | {on_cpu['val/recall@20']:.4f} | {on_dev['val/recall@20']:.4f} | "
                    f"{diff:.2e} ({len(keys)} metrics) | {dev_run['metrics']['val/recall@20']:.4f} (CPU-trained "
                    f"{cpu_run['metrics']['val/recall@20']:.4f}) |")
    return rows, ok


def time_runs(device: str, skip_scale: bool) -> list[str]:
    acc = f"trainer.accelerator={_accelerator(device)}"
    rows = ["| run | s / epoch | s / validation | peak RSS MB | val R@20 |", "|---|---|---|---|---|"]
    jobs = [("Baby LightGCN, 4 epochs", ["model=lightgcn", "dataset=baby", "trainer.max_epochs=4", "logger=none",
                                         "test=false", acc])]
    if not skip_scale:
        n = 10_000_000
        jobs.append(("synthetic 10^7 LightGCN, 1 epoch", [
            "model=lightgcn", "dataset=synthetic", f"dataset.source.num_users={round(n * 19_445 / 160_678)}",
            f"dataset.source.num_items={round(n * 7_050 / 160_678)}", f"dataset.source.num_interactions={n}",
            "trainer.max_epochs=1", "logger=none", "test=false", acc, f"paths.data_dir={OUT / 'scaling_data'}"]))
    for label, overrides in jobs:
        name = f"gpu_check/time_{label.split(',')[0].replace(' ', '_')}_{device}"
        record = run_train(_fresh(name), overrides, timeout=4 * 3600)
        perf = record["perf"]
        epochs = perf["train_epoch_s"][1:] or perf["train_epoch_s"]
        vals = perf["val_s"][1:] or perf["val_s"]
        rows.append(f"| {label} ({device}) | {statistics.median(epochs):.2f} | {statistics.median(vals):.2f} | "
                    f"{perf['peak_rss_mb']:.0f} | {record['metrics']['val/recall@20']:.4f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument("--skip-timing", action="store_true")
    args = parser.parse_args()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device here (torch.cuda.is_available() is False); run this on a GPU machine, "
              "or --device cpu to check the script itself", file=sys.stderr)
        raise SystemExit(2)
    equal_rows, ok = check_equal(args.device, args.tol)
    timing_rows = [] if args.skip_timing else time_runs(args.device, args.skip_scale)
    text = "\n".join([
        f"## GPU check (`experiments/gpu_check.py --device {args.device}`)",
        "",
        f"- Machine: {machine()}; commit {git_commit()}",
        f"- Same metrics: a CPU-trained run's selected checkpoint evaluated on the CPU and on {args.device} "
        f"(tolerance {args.tol:g}): **{'equal' if ok else 'NOT equal'}**."
        + (" (Both sides ran on the CPU: this only checks the script.)" if args.device == "cpu" else ""),
        "",
        *equal_rows,
        "",
        *timing_rows,
    ])
    write_section(f"gpu_check_{args.device}", text)
    print(text)
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
