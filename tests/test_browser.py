"""The app in a real browser (Playwright driving Debian's chromium): the page opens, all six tabs
show, Generate and Super-resolution run from their buttons, both result images and the
noise-level plots render, the NAG weight follows the steps and the CFG scale the class as the model
recommends, and no script error happens on the page. A screenshot is saved."""
import os
from pathlib import Path

import pytest
from conftest import save_tiny_model

CHROMIUM = "/usr/bin/chromium"
TAB_TITLES = ["Generate", "Super-resolution", "Inpainting", "Deblur", "Colorize", "Compressive sensing"]

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason=f"no browser: {CHROMIUM} is missing (apt-get install chromium; .ci/run does)")


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    from noisecorr_app.ui.app import build_demo, launch

    folder = save_tiny_model(tmp_path_factory.mktemp("browser") / "model", num_class_embeds=4,
                             extra={"num_classes": 3, "null_class": 3, "null_timestep": 10000,
                                    "class_names": ["a", "b", "c"],
                                    "method_defaults": {"nag_scale": {"10": 1.5, "20": 0.5}, "cfg_scale": 3.0}})
    demo = build_demo(str(folder), device="cpu")
    launch(demo, prevent_thread_lock=True, server_port=None, quiet=True)
    yield demo.local_url
    demo.close()


def _loaded_image(page, elem_id: str):
    """The natural width of the <img> inside a gr.Image once it has loaded (0 = broken). The
    element is looked up afresh on every poll: streamed previews replace it while a run goes on."""
    js = f"""() => {{ const el = document.querySelector('#{elem_id} img');
                      return el && el.complete && el.naturalWidth > 0 ? el.naturalWidth : 0; }}"""
    return page.wait_for_function(js, timeout=60_000).json_value()


def test_browser_runs_generate_and_a_restoration(url, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.set_default_timeout(60_000)       # a loaded 2-core machine renders slowly
            page.goto(url, wait_until="load", timeout=120_000)
            expect(page.get_by_role("tab", name="Generate")).to_be_visible(timeout=120_000)
            for title in TAB_TITLES:              # every tab opens and shows its run button
                page.get_by_role("tab", name=title).click()
            page.get_by_role("tab", name="Generate").click()
            # a finished comparison is on the page before any click (made at start-up, on the tab's settings)
            expect(page.locator("#gen-metrics")).to_contain_text("Made when the server started")
            assert [_loaded_image(page, "gen-baseline"), _loaded_image(page, "gen-corrected")] == [4 * 8 * 16] * 2
            page.get_by_role("button", name="Generate", exact=True).click()
            expect(page.locator("#gen-metrics")).not_to_contain_text("Made when the server started", timeout=90_000)
            expect(page.locator("#gen-metrics")).to_contain_text("network evaluations per image",
                                                                 timeout=90_000)   # the final result
            widths = [_loaded_image(page, "gen-baseline"), _loaded_image(page, "gen-corrected")]
            # 4 images of 8 px shown 16x side by side: 512 px wide, the same for both runs
            assert widths == [4 * 8 * 16] * 2
            # the per-step noise figure arrives as a picture
            assert _loaded_image(page, "gen-levels") > 300

            page.get_by_role("tab", name="Super-resolution").click()
            # pick the cat from the tab's examples (each tab has its own copy of the list)
            page.get_by_text("cifar10 cat", exact=True).locator("visible=true").first.click()
            expect(page.locator("#super_resolution-input img").first).to_be_visible(timeout=30_000)
            page.get_by_role("button", name="Restore", exact=True).locator("visible=true").first.click()
            expect(page.locator("#super_resolution-metrics")).to_contain_text("PSNR", timeout=90_000)
            widths = [_loaded_image(page, f"super_resolution-{k}") for k in ("degraded", "baseline", "corrected")]
            assert widths == [256, 256, 256]
            # the restoration plots are drawn by Vega into a canvas or svg inside the plot block
            plot = page.locator(".vega-embed").locator("visible=true").first
            plot.wait_for(state="visible", timeout=60_000)
            assert plot.locator("canvas, svg").count() > 0
            # lines with a legend per series: a plot whose encoding broke shows bare axes and no legend
            expect(plot.locator(".mark-line path").first).to_be_attached(timeout=30_000)
            expect(plot.locator(".role-legend").first).to_be_attached(timeout=30_000)
            # the NAG weight follows the steps while it shows the model's recommendation, not once set by hand
            page.get_by_role("tab", name="Generate").click()
            page.get_by_text("Advanced: sampler and weights").click()       # the research knobs are folded
            steps = page.get_by_label("number input for Steps", exact=True)
            weight = page.get_by_label("number input for Noise Awareness Guidance weight", exact=True)
            assert weight.input_value() == "0.5"
            steps.fill("10")
            steps.press("Enter")
            expect(weight).to_have_value("1.5", timeout=30_000)
            weight.fill("2.2")
            weight.press("Enter")
            steps.fill("20")
            steps.press("Enter")
            page.wait_for_timeout(2_000)
            assert weight.input_value() == "2.2"
            # picking a class turns CFG on at the model's recommendation (3); 'any class' turns it off again
            cfg = page.get_by_label("number input for Class guidance scale (CFG; 1 = off; needs a class)", exact=True)
            assert cfg.input_value() == "1"
            for name, want in (("b", "3"), ("any class", "1")):
                page.get_by_label("Class", exact=True).click()
                page.get_by_role("option", name=name, exact=True).click()
                expect(cfg).to_have_value(want, timeout=30_000)
            shot = tmp_path / "app.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"screenshot: {shot}")
            assert Path(shot).stat().st_size > 10_000
        finally:
            browser.close()
    assert not errors, f"script errors on the page: {errors}"


@pytest.fixture(scope="module")
def default_url():
    from noisecorr_app.ui.app import build_demo, launch

    demo = build_demo()                       # the embedded model: it has the noise-level estimator
    launch(demo, prevent_thread_lock=True, server_port=None, quiet=True)
    yield demo.local_url
    demo.close()


def test_the_first_screen_and_the_numbers_agree_with_the_runs_json(default_url):
    """A finished comparison is on the page before any click; after Generate on the defaults, the outcome
    sentence and the table say what the run's own JSON (in its download) holds, per image included."""
    import io
    import json
    import re
    import zipfile

    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            page.set_default_timeout(60_000)
            page.goto(default_url, wait_until="load", timeout=120_000)
            metrics = page.locator("#gen-metrics")
            expect(metrics).to_contain_text("Made when the server started", timeout=120_000)
            assert _loaded_image(page, "gen-baseline") > 0 and _loaded_image(page, "gen-corrected") > 0
            page.get_by_role("button", name="Generate", exact=True).click()
            expect(metrics).not_to_contain_text("Made when the server started", timeout=120_000)
            expect(metrics).to_contain_text("leftover noise", timeout=120_000)
            link = page.locator("#gen-bundle a").first
            link.wait_for(timeout=60_000)
            href = link.get_attribute("href")
            url = href if href.startswith("http") else default_url.rstrip("/") + "/" + href.lstrip("/")
            run = json.loads(zipfile.ZipFile(io.BytesIO(page.request.get(url).body())).read("run.json"))
            text = metrics.inner_text()
        finally:
            browser.close()
    b, c = run["metrics"]["baseline"], run["metrics"]["corrected"]
    # the sentence: "... (median 0.016 against 0.090; ...)"
    median_c, median_b = map(float, re.search(r"median ([\d.]+) against ([\d.]+)", text).groups())
    assert (median_c, median_b) == (round(c["leftover_median"], 3), round(b["leftover_median"], 3))
    # the table rows, and the per-image readings behind them
    worst = re.search(r"noise left, worst image ↓\s+([\d.]+)\s+([\d.]+)", text).groups()
    per_image = {k: run["traces"][k]["leftover_per_image"] for k in ("baseline", "corrected")}
    assert float(worst[0]) == round(max(per_image["baseline"]), 3) and float(worst[1]) == round(max(per_image["corrected"]), 3)
    noisy = re.search(r"Noisier than 9 in 10 real photos: (\d+) of (\d+) baseline images, (\d+) of \d+ corrected", text)
    p90 = b["real_p90"]
    assert int(noisy.group(1)) == sum(v > p90 for v in per_image["baseline"])
    assert int(noisy.group(3)) == sum(v > p90 for v in per_image["corrected"])
    assert int(noisy.group(2)) == len(per_image["baseline"]) == run["request"]["n"]
