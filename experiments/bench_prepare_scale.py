"""Scale of the Amazon 2023 pipeline: parse + dedupe + k-core + split of generated review files.

Clothing_Shoes_and_Jewelry has about 66 million reviews and 7 million items. This script
generates files of N reviews in the 2023 format (gzip, the real field set, ~30-word texts,
2% repeated user-item pairs), then runs the ``parse``, ``filter`` and ``split`` stages of
:class:`mmrec.data.amazon2023.Amazon2023Source` in a fresh process per size and records
seconds per stage, reviews/s and the process's peak RSS. Targets: >= 200k reviews/s and
peak RSS <= 4 GB at 10M reviews, growing linearly or better.

    python experiments/bench_prepare_scale.py --sizes 1000000 3000000 10000000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, git_commit, machine, write_section  # noqa: E402

WORKER = r"""
import json, resource, sys, time
from mmrec.data.amazon2023 import Amazon2023Source
from mmrec.data.itemtable import ImageOptions
reviews, meta, root = sys.argv[1:4]
src = Amazon2023Source("Scale", raw_dir=root + "/raw", reviews=reviews, meta=meta, progress=False,
                       images=ImageOptions(enabled=False))
start = time.time()
records = src.prepare(root, until="split")
out = {"total_s": time.time() - start, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
       "stages": {r["stage"]: {"seconds": r["seconds"], **{k: v for k, v in r["summary"].items()
                                                         if not isinstance(v, (list, dict))}} for r in records}}
print(json.dumps(out))
"""


def generate(n: int, folder: Path) -> dict:
    from mmrec.data.synthetic import write_amazon2023

    marker = folder / "done.json"
    if marker.exists():
        return json.loads(marker.read_text())
    start = time.time()
    # users/items scale with the file like a real category (~5 reviews per user, ~10 per item)
    files = write_amazon2023(folder, "Scale", num_reviews=n, num_users=n // 5, num_items=n // 10, seed=0)
    info = {"reviews": str(files["reviews"]), "meta": str(files["meta"]), "gen_s": time.time() - start,
            "bytes": files["reviews"].stat().st_size}
    marker.write_text(json.dumps(info))
    return info


def run_size(n: int) -> dict:
    folder = OUT / "scale" / f"n{n}"
    info = generate(n, folder)
    root = folder / "prepared"
    subprocess.run(["rm", "-rf", str(root)], check=True)
    proc = subprocess.run([sys.executable, "-c", WORKER, info["reviews"], info["meta"], str(root)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["n"] = n
    res["gz_mb"] = info["bytes"] / 2**20
    work = sum(res["stages"][s]["seconds"] for s in ("parse", "filter", "split"))
    res["reviews_per_s"] = n / work
    return res


def report(results: list[dict]) -> str:
    lines = ["## Amazon 2023 pipeline at scale (parse + dedupe + k-core + split)", "",
             f"Command: `python experiments/bench_prepare_scale.py --sizes {' '.join(str(r['n']) for r in results)}`  ",
             f"Machine: {machine()}  ", f"Date: {time.strftime('%Y-%m-%d')}, commit {git_commit()}", "",
             "Generated gzip files in the 2023 format (`mmrec.data.synthetic.write_amazon2023`: real field set, "
             "30-word review texts, Zipf-like users/items, ~2% repeated pairs). One fresh process per size runs "
             "the parse, filter and split stages; RSS is that process's peak.", "",
             "| reviews | gzip MB | parse s | filter s | split s | reviews/s | peak RSS MB | kept after 5-core |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        st = r["stages"]
        lines.append(f"| {r['n']:,} | {r['gz_mb']:.0f} | {st['parse']['seconds']:.1f} | {st['filter']['seconds']:.1f} | "
                     f"{st['split']['seconds']:.1f} | {r['reviews_per_s']:,.0f} | {r['peak_rss_mb']:,.0f} | "
                     f"{st['filter']['after_kcore']:,} |")
    big = results[-1]
    lines += ["", f"Targets at 10M reviews: >= 200,000 reviews/s and peak RSS <= 4,096 MB. Largest size measured: "
              f"{big['reviews_per_s']:,.0f} reviews/s, {big['peak_rss_mb']:,.0f} MB."]
    if len(results) > 1:
        a, b = results[0], results[-1]
        lines.append(f"RSS growth from {a['n']:,} to {b['n']:,} reviews: x{b['peak_rss_mb'] / a['peak_rss_mb']:.2f} "
                     f"for x{b['n'] / a['n']:.1f} the reviews.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 3_000_000, 10_000_000])
    args = parser.parse_args()
    results = []
    for n in args.sizes:
        res = run_size(n)
        print(json.dumps(res), flush=True)
        results.append(res)
    (OUT / "scale" / "results.json").write_text(json.dumps(results, indent=2))
    write_section("prepare_scale", report(results))


if __name__ == "__main__":
    main()
