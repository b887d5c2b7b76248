"""Concurrent users: 8 gradio_client clients against one server (``python app.py`` on loopback, the
shipped default model, offline), each repeating its own seeded request (Generate with every sampler,
four restoration tabs) for a bounded time and a bounded number of requests, while one of them also
sends a bad request before each good one.

Checked: every request completes or gets a clean "queue is full" answer; every result equals,
pixel for pixel, the same request made alone before the load (no cross-talk between users, whatever
ran at the same time); the bad requests get their messages; the server logs no traceback; its peak
memory (VmHWM) stays under a bound.

The suite runs it for NOISECORR_LOAD_SECONDS (default 20) seconds and at most NOISECORR_LOAD_REQUESTS
requests (default 1.2 per second of load). The two-minute run of the README's reliability figures:

    NOISECORR_LOAD_SECONDS=120 python -m pytest -q -s tests/test_concurrency.py

(NOISECORR_LOAD_REPORT=path.json also writes the figures as JSON.)"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, memory as _memory, serve_app
from PIL import Image

USERS = 8
LOAD_SECONDS = float(os.environ.get("NOISECORR_LOAD_SECONDS", 20))
MAX_REQUESTS = int(os.environ.get("NOISECORR_LOAD_REQUESTS", max(24, round(1.2 * LOAD_SECONDS))))
CONCURRENCY = os.environ.get("NOISECORR_LOAD_CONCURRENCY", "2")     # requests sampled at once (a GPU server's)
RSS_BOUND = 3 * 2 ** 30            # peak resident memory of the server, bytes
EXAMPLES = ROOT / "noisecorr_app" / "ui" / "examples"


def _examples():
    found = sorted(EXAMPLES.glob("*.png"))
    assert len(found) >= 4
    return found


def user_requests() -> list[tuple[str, list, list[int]]]:
    """Per user: (endpoint, arguments, indices of the image outputs to compare). Different samplers,
    classes, seeds, stochastic samplers and measurement noise: anything shared would show."""
    from gradio_client import handle_file

    ex = _examples()
    gen = [("/generate", ["airplane", "ddim", 3, 11, 1, "es", 3.0, 1.0, 1.01], [1, 2]),
           ("/generate", ["cat", "ddpm", 3, 12, 1, "nag", 2.0, 1.0, 1.005], [1, 2]),
           ("/generate", ["any class", "edm", 2, 13, 1, "self", 3.0, 1.0, 1.005], [1, 2]),
           ("/generate", ["ship", "dpmpp", 3, 14, 2, "ts", 3.0, 2.0, 1.005], [1, 2])]
    rest = [("/super_resolution", [handle_file(str(ex[0])), 4, 0.05, 3, 21], [0, 1, 3, 4]),
            ("/inpainting", [handle_file(str(ex[1])), "random", None, 0.0, 3, 22], [0, 1, 3, 4]),
            ("/deblur", [handle_file(str(ex[2])), 1.5, 0.02, 3, 23], [0, 1, 3, 4]),
            ("/compressive_sensing", [handle_file(str(ex[3])), 0.5, 0.0, 3, 24], [0, 1, 3, 4])]
    return gen + rest


def bad_requests(tmp: Path) -> list[tuple[str, list, str]]:
    """(endpoint, arguments, message) sent by the hostile user between its good requests."""
    from gradio_client import handle_file

    (tmp / "notes.png").write_text("not an image")
    Image.new("1", (10000, 10000)).save(tmp / "bomb.png")
    return [("/super_resolution", [handle_file(str(tmp / "notes.png")), 4, 0.0, 2, 0], "not an image Pillow can read"),
            ("/deblur", [handle_file(str(tmp / "bomb.png")), 2.0, 0.0, 2, 0], "the image is too large"),
            ("/generate", ["cat", "ddim", 0, 0, 1, "es", 3.0, 1.0, 1.005], "Steps must be a number from 1 to 200"),
            ("/generate", ["cat", "euler-x", 2, 0, 1, "es", 3.0, 1.0, 1.005], "unknown sampler")]


@pytest.fixture(scope="module")
def app_server(tmp_path_factory):
    """``python app.py`` in its own process: the way the app is served. Its users all come from this
    machine's address, so the per-client cap is lifted to the number of users."""
    with serve_app(tmp_path_factory.mktemp("server"), NOISECORR_CONCURRENCY=CONCURRENCY,
                   NOISECORR_PER_CLIENT=str(USERS)) as server:
        yield server


def _images(outputs, indices) -> list[np.ndarray]:
    return [np.asarray(Image.open(outputs[i]).convert("RGB")) for i in indices]


def test_eight_users_no_cross_talk_bounded_memory(app_server, tmp_path):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    url, pid = app_server["url"], app_server["pid"]
    specs = user_requests()
    assert len(specs) == USERS
    bad = bad_requests(tmp_path)

    # each request alone, one at a time: the reference every concurrent answer must equal
    alone_client = Client(url, verbose=False)
    alone, service = [], []
    for api, args, idx in specs:
        t0 = time.perf_counter()
        alone.append(_images(alone_client.predict(*args, api_name=api), idx))
        service.append(time.perf_counter() - t0)
    rss_before = _memory(pid)["VmRSS"]

    lock = threading.Lock()
    issued = [0]
    done, rejected, failures, bad_seen, latencies = [], [], [], [], []
    samples = []                     # (seconds since start, VmRSS)
    stop = threading.Event()
    start = time.perf_counter()
    deadline = start + LOAD_SECONDS

    def take_ticket() -> bool:
        with lock:
            if time.perf_counter() >= deadline or issued[0] >= MAX_REQUESTS:
                return False
            issued[0] += 1
            return True

    def user(u: int):
        client = Client(url, verbose=False)
        api, args, idx = specs[u]
        k = 0
        while take_ticket():
            if u == USERS - 1:                          # the hostile user: a bad request before each good one
                b_api, b_args, message = bad[k % len(bad)]
                try:
                    client.predict(*b_args, api_name=b_api)
                    failures.append((u, "bad request accepted", b_api))
                except AppError as e:
                    (bad_seen if message in str(e) else failures).append((u, str(e)[:200], b_api))
                except Exception as e:                  # noqa: BLE001 - anything else is a failure to report
                    failures.append((u, f"{type(e).__name__}: {str(e)[:200]}", b_api))
            k += 1
            t0 = time.perf_counter()
            try:
                out = client.submit(*args, api_name=api).result(timeout=600)
            except Exception as e:                      # noqa: BLE001
                text = str(e)
                if "queue is full" in text.lower():
                    rejected.append((u, text[:200]))
                else:
                    failures.append((u, f"{type(e).__name__}: {text[:300]}", api))
                continue
            latency = time.perf_counter() - t0
            same = all(np.array_equal(a, b) for a, b in zip(alone[u], _images(out, idx)))
            with lock:
                latencies.append(latency)
                done.append((u, same))

    def monitor():
        while not stop.is_set():
            samples.append((time.perf_counter() - start, _memory(pid)["VmRSS"]))
            stop.wait(0.5)

    watcher = threading.Thread(target=monitor, daemon=True)
    watcher.start()
    threads = [threading.Thread(target=user, args=(u,), daemon=True) for u in range(USERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=LOAD_SECONDS + 900)
    stop.set()
    watcher.join()
    wall = time.perf_counter() - start
    mem = _memory(pid)
    log = app_server["log"].read_text()

    lat = np.array(latencies)
    report = {
        "users": USERS, "load_seconds": LOAD_SECONDS, "wall_seconds": round(wall, 1), "max_requests": MAX_REQUESTS,
        "server_concurrency": int(CONCURRENCY), "requests_issued": issued[0], "requests_completed": len(done),
        "identical_to_alone": sum(same for _, same in done), "queue_rejections": len(rejected),
        "bad_requests_answered": len(bad_seen), "failures": failures,
        "latency_p50_s": round(float(np.percentile(lat, 50)), 2) if len(lat) else None,
        "latency_p95_s": round(float(np.percentile(lat, 95)), 2) if len(lat) else None,
        "latency_max_s": round(float(lat.max()), 2) if len(lat) else None,
        "alone_service_s_mean": round(float(np.mean(service)), 2),
        "throughput_per_min": round(60 * len(done) / wall, 1),
        "rss_before_load_mib": round(rss_before / 2 ** 20), "rss_peak_during_load_mib": round(
            max([rss_before] + [r for _, r in samples]) / 2 ** 20),
        "vmhwm_peak_mib": round(mem["VmHWM"] / 2 ** 20), "rss_after_mib": round(mem["VmRSS"] / 2 ** 20),
        "server_tracebacks": log.count("Traceback"),
    }
    print("\nload test:", json.dumps(report, indent=1))
    if os.environ.get("NOISECORR_LOAD_REPORT"):
        Path(os.environ["NOISECORR_LOAD_REPORT"]).write_text(json.dumps(report, indent=1))

    assert not failures, failures
    assert all(not t.is_alive() for t in threads), "a user never got an answer"
    assert len(done) + len(rejected) == issued[0] and len(done) >= USERS       # everyone was served
    assert {u for u, _ in done} == set(range(USERS))
    assert all(same for _, same in done), [u for u, same in done if not same]  # no cross-talk
    assert len(bad_seen) >= 1                                                  # the hostile user was answered
    assert report["server_tracebacks"] == 0, log[-3000:]
    assert mem["VmHWM"] < RSS_BOUND, report


def test_identical_pictures_are_never_rewritten_in_place(tmp_path):
    """The app's image outputs: a second identical picture reuses the file (same inode, not
    rewritten), so a download of it by another user is never truncated mid-way. Gradio's own
    saving of PIL outputs rewrote that file in place; under load that broke a download ("Too little
    data for declared Content-Length" in the server log)."""
    from noisecorr_app.ui.common import png_in_cache

    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    first = png_in_cache(img, str(tmp_path))
    before = os.stat(first)
    again = png_in_cache(img.copy(), str(tmp_path))
    after = os.stat(again)
    assert again == first and (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(img))
    assert not list(Path(first).parent.glob(".*"))                # no staging file left behind
    other = png_in_cache(img.transpose(Image.Transpose.FLIP_LEFT_RIGHT), str(tmp_path))
    assert other != first
