"""The README's picture: start the app, run Generate on its defaults, save the page.

    python3 tools/screenshot.py [docs/images/app.png]

Needs chromium at /usr/bin/chromium (as the browser test does) and a free port 7870.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PORT = 7870


def main(out: str = "docs/images/app.png"):
    from playwright.sync_api import expect, sync_playwright

    env = {**os.environ, "PORT": str(PORT)}
    server = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                        args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            for _ in range(120):                    # the app loads its model first
                try:
                    page.goto(f"http://127.0.0.1:{PORT}", wait_until="load")
                    break
                except Exception:
                    time.sleep(1)
            page.get_by_role("button", name="Generate", exact=True).click()
            expect(page.locator("#gen-metrics")).to_contain_text("network evaluations", timeout=300_000)
            time.sleep(3)                           # the figures arrive with the table
            target = ROOT / out
            target.parent.mkdir(parents=True, exist_ok=True)
            page.locator("body").screenshot(path=str(target))
            browser.close()
        print(f"wrote {target}")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main(*sys.argv[1:])
