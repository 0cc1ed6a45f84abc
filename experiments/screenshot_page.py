"""A screenshot of the service's page for the README: ``python experiments/screenshot_page.py <bundle> [user]``.

Starts the app on a free port of 127.0.0.1 (in this process), opens the page in Debian's
chromium through Playwright, shows a user's history and recommendations (a given user, or
"a random user"), waits until every image has loaded, and writes docs/screenshot.png.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, serve_in_thread  # noqa: E402
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("user", nargs="?", default=None)
    parser.add_argument("--out", default=str(ROOT / "docs" / "screenshot.png"))
    parser.add_argument("--diversity", type=float, default=0.0)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    from mmrec.serving.app import create_app
    from mmrec.serving.recommender import Recommender

    app = create_app(lambda: Recommender.load(args.bundle))
    server, base = serve_in_thread(app)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium", args=ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(base + "/")
        page.wait_for_function("document.getElementById('card').textContent.includes('·')")
        if args.diversity:
            page.eval_on_selector("#diversity", f"el => {{ el.value = '{args.diversity}'; "
                                                "el.dispatchEvent(new Event('input')); }")
        if args.user:
            page.fill("#user-id", args.user)
            page.click("#user-form button[type=submit]")
        else:
            page.click("#random-user")
        page.wait_for_function("document.querySelectorAll('#recs .card').length > 0")
        page.wait_for_function("Array.from(document.querySelectorAll('img')).every(i => i.complete)")
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=args.out, full_page=True)
        browser.close()
    server.should_exit = True
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
