"""Page render time in a real browser beside the API time -> experiments/RESULTS.md, ``page_render``.

    python experiments/bench_page_render.py                      # the fashion shop's FREEDOM run
    python experiments/bench_page_render.py --run <run folder> --users 30

Exports the run (once, into ``logs/bench/page_render/bundle``), starts the service on a free
port of 127.0.0.1 (uvicorn, one process), opens the page in Debian's chromium through
Playwright, and for each of ``--users`` shoppers (seeded sample) types the id and submits.
Measured per user, in the browser (``performance.now()``): from the submit to the
recommendation cards in the page, and to every card's image loaded; from the browser's
Resource Timing, the ``/users/<id>/recommendations`` request itself (request start to response
end). In the same run, interleaved, the same request from Python (``httpx``, one keep-alive
client): the API time without the browser. Medians and p90 over the users.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, git_commit, machine, serve_in_thread, write_section  # noqa: E402

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
STORE = OUT / "page_render"

SUBMIT = """async (user) => {
  const t0 = performance.now();
  document.getElementById('user-id').value = user;
  document.querySelector('#user-form button[type=submit]').click();
  const title = () => document.getElementById('recs-title').textContent === 'Recommended for user ' + user;
  const cards = () => document.querySelectorAll('#recs .card').length > 0;
  while (!(title() && cards())) await new Promise(r => setTimeout(r, 1));
  const shown = performance.now() - t0;
  const images = () => Array.from(document.querySelectorAll('#recs img')).every(i => i.complete);
  while (!images()) await new Promise(r => setTimeout(r, 1));
  const loaded = performance.now() - t0;
  const entry = performance.getEntriesByType('resource').filter(e => e.name.includes('/users/' + encodeURIComponent(user) + '/recommendations')).pop();
  return {shown, loaded, api: entry ? entry.responseEnd - entry.requestStart : null,
          cards: document.querySelectorAll('#recs .card').length};
}"""


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=str(OUT / "fashion_freedom_s0"), help="a finished run folder to export")
    parser.add_argument("--users", type=int, default=30)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import httpx
    from playwright.sync_api import sync_playwright

    from mmrec.export import export_run
    from mmrec.serving.app import create_app
    from mmrec.serving.recommender import Recommender

    bundle = STORE / "bundle"
    if not (bundle / "manifest.json").is_file():
        STORE.mkdir(parents=True, exist_ok=True)
        export_run(args.run, bundle, force=True)
    rec = Recommender.load(bundle)
    users = random.Random(args.seed).sample(list(map(str, rec.user_raw)), args.users)
    app = create_app(lambda: rec)
    server, base = serve_in_thread(app)
    rows = []
    with sync_playwright() as pw, httpx.Client(base_url=base) as client:
        browser = pw.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium", args=ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(base + "/")
        page.wait_for_function("document.getElementById('card').textContent.includes('·')")
        client.get(f"/users/{users[0]}/recommendations", params={"k": args.k})  # warm both paths
        for n, user in enumerate(users):
            def python_call() -> float:
                start = time.perf_counter()
                client.get(f"/users/{user}/recommendations", params={"k": args.k}).raise_for_status()
                return (time.perf_counter() - start) * 1e3
            first = python_call() if n % 2 else None  # interleaved: before the page on odd users, after on even
            page.evaluate("n => document.getElementById('k') && (document.getElementById('k').value = n)", args.k)
            timing = page.evaluate(SUBMIT, user)
            timing["python_api"] = first if first is not None else python_call()
            timing["user"] = user
            rows.append(timing)
        browser.close()
    server.should_exit = True
    (STORE / "timings.json").write_text(json.dumps(rows, indent=2))
    cols = [("python_api", "API from Python (httpx)"), ("api", "API in the browser (Resource Timing)"),
            ("shown", "submit -> cards in the page"), ("loaded", "submit -> every image loaded")]
    table = ["| measured | median ms | p90 ms | max ms |", "|---|---|---|---|"]
    for key, name in cols:
        values = [r[key] for r in rows if r.get(key) is not None]
        table.append(f"| {name} | {statistics.median(values):.1f} | {_pct(values, 0.9):.1f} | {max(values):.1f} |")
    write_section("page_render", "\n".join([
        "## Page render time in the browser beside the API time (`experiments/bench_page_render.py`)", "",
        f"- Command: `python experiments/bench_page_render.py --users {args.users}`", f"- Machine: {machine()}",
        f"- Date: {time.strftime('%Y-%m-%d')}, code: commit {git_commit()}; load average {os.getloadavg()[0]:.2f} at the end",
        f"- Bundle: `{Path(args.run).name}` ({rec.bundle.card.get('model')} on {rec.bundle.card.get('dataset')}, "
        f"{rec.num_items} items with photos); one uvicorn process on 127.0.0.1, Debian chromium through Playwright, "
        f"1200 x 900; {args.users} shoppers (seed {args.seed}), k = {args.k}, each typed into the page and submitted "
        f"(the page asks for the history and the recommendations at once); the Python request interleaved before or "
        f"after each page load.", "", *table]))
    print("\n".join(table))


if __name__ == "__main__":
    main()
