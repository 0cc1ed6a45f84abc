"""Do the fashion shop's recommendations follow each shopper's stated taste? -> RESULTS.md.

Usage (from the repository root):

    python experiments/bench_fashion_personas.py [--seeds 0 1 2] [--models pop random lightgcn freedom]

Prepares ``dataset=fashion`` once (1,200 real photos of ../shared/data/product-photos, image and
text features from the offline encoders, 1,000 generated shoppers), trains each model per seed
(validation-selected, the test split touched once), exports it and asks the served
``Recommender`` for every shopper's top 10 (training and validation items excluded, as on the
page). For each stated attribute (article type, colour, usage, season; gender suits = the
shopper's gender or Unisex) the table gives the share of the 10 that match it, averaged over
shoppers, and the catalogue's share (what a blind pick gets). New visitors: for each shopper,
3 photos of their first article type (the lowest ids; excluded from the list) are liked, and
the 10 recommended from them are checked the same way.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, ROOT, git_commit, machine, mean_std, run_train, write_section  # noqa: E402

ATTRS = ("articleType", "baseColour", "usage", "season")
K = 10


def prepare() -> Path:
    proc = subprocess.run([sys.executable, "-m", "mmrec.prepare", "dataset=fashion", "modality_encoder=offline",
                           "prepare.progress=false", "dataset.source.progress=false"], cwd=ROOT,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stdout[-3000:] + proc.stderr[-3000:])
    return ROOT / "data" / "fashion-s0"


def matches(products, personas: list[dict], lists: list[list[str]]) -> dict[str, float]:
    """Mean over shoppers of the share of their listed items (raw ids) matching each stated
    attribute; ``products``: the product table indexed by id."""
    out = {}
    for attr in ATTRS + ("gender",):
        shares = []
        for persona, items in zip(personas, lists):
            wanted = [persona["gender"], "Unisex"] if attr == "gender" else persona[attr]
            shares.append(float(products.loc[items, attr].isin(wanted).mean()) if items else 0.0)
        out[attr] = statistics.mean(shares)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", default=["pop", "random", "lightgcn", "freedom"])
    args = parser.parse_args()
    from mmrec.data.fashion import read_personas
    from mmrec.export import export_run
    from mmrec.serving.recommender import Recommender

    root = prepare()
    personas = read_personas(root)
    users = [f"s{p['shopper']}" for p in personas]
    import pandas as pd

    from mmrec.data.fashion import read_styles

    products = read_styles(ROOT.parent / "shared" / "data" / "product-photos").set_index("id")  # read once
    num_items = len(pd.read_parquet(root / "items.parquet", columns=["item"]))
    liked = [products.index[products["articleType"] == p["articleType"][0]][:3].tolist() for p in personas]
    rows: dict[str, list[dict]] = {}
    for model in args.models:
        for seed in args.seeds:
            name = f"fashion_{model}_s{seed}"
            run_dir = OUT / name
            if not (run_dir / "metrics.json").exists():
                run_train(name, ["dataset=fashion", f"model={model}", f"seed={seed}", "logger=none"])
            record = json.loads((run_dir / "metrics.json").read_text())
            bundle = run_dir / "bundle"
            if not (bundle / "manifest.json").exists():
                export_run(run_dir)
            rec = Recommender.load(bundle)
            lists = [[r.item for r in recs] for recs in rec.recommend(users, k=K)]
            visitor = [[r.item for r in rec.recommend_for_items(like, k=K)] for like in liked]
            rows.setdefault(model, []).append({"known": matches(products, personas, lists),
                                               "visitor": matches(products, personas, visitor),
                                               "test_recall": record["metrics"].get("test/recall@20"),
                                               "coverage": len({i for x in lists for i in x}) / num_items})
            print(model, seed, rows[model][-1], flush=True)
    # a blind pick: the share of all products with each stated attribute
    base = matches(products, personas, [products.index.tolist()] * len(personas))
    (OUT / "fashion_personas.json").write_text(json.dumps({"rows": rows, "catalogue": base}, indent=1))
    header = "| model | seeds | test R@20 | " + " | ".join(f"{a} match" for a in ATTRS) + \
             " | gender suits | coverage@10 | visitor: type | visitor: colour |"
    lines = ["## Fashion shop: do recommendations follow the shoppers' stated tastes?", "",
             f"- Command: `python experiments/bench_fashion_personas.py --seeds {' '.join(map(str, args.seeds))} "
             f"--models {' '.join(args.models)}`",
             f"- Machine: {machine()}", f"- Date: {time.strftime('%Y-%m-%d')}, code: commit {git_commit()}",
             "- `dataset=fashion`: the 1,200 real photos of ../shared/data/product-photos (20 article types), image "
             "= EfficientNet-Lite0, text = all-MiniLM-L6-v2 of the display name and attributes "
             "(`modality_encoder=offline`); 1,000 generated shoppers (personas: gender, 1-3 article types, 1-2 "
             "colours, a usage, a season; 20% of their items by popularity alone), per-shopper 8:1:1 split. Each "
             "model's defaults, validation-selected; mean ± std over seeds.",
             f"- Match = share of a shopper's top {K} (served by the exported bundle, training and validation items "
             "excluded) that has a stated attribute, averaged over shoppers; the catalogue row is the share of all "
             "products that has it (a blind pick). Visitor = a new visitor who liked 3 photos of the shopper's first "
             "article type (not the shopper's history): the same check on the 10 recommended from them.", "",
             header, "|" + "---|" * (header.count("|") - 1)]
    lines.append("| catalogue | - | - | " + " | ".join(f"{base[a]:.3f}" for a in ATTRS) + f" | {base['gender']:.3f} | - | "
                 f"{base['articleType']:.3f} | {base['baseColour']:.3f} |")
    for model, runs in rows.items():
        cells = [mean_std([r["known"][a] for r in runs], 3) for a in ATTRS + ("gender",)]
        lines.append(f"| {model} | {len(runs)} | {mean_std([r['test_recall'] for r in runs])} | " + " | ".join(cells)
                     + f" | {mean_std([r['coverage'] for r in runs], 3)} | "
                     f"{mean_std([r['visitor']['articleType'] for r in runs], 3)} | "
                     f"{mean_std([r['visitor']['baseColour'] for r in runs], 3)} |")
    text = "\n".join(lines) + "\n"
    write_section("fashion_personas", text)
    print(text)


if __name__ == "__main__":
    main()
