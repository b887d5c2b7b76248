"""Helpers shared by the tabs, free of Gradio: input coercion, image scaling, result bundles,
streaming a library call's per-step callback as a generator, the per-model run lock, and the
optional ``spaces.GPU`` decorator."""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import queue
import threading
import time
import uuid
import zipfile
from contextlib import contextmanager
from pathlib import Path
import tempfile

try:                                   # Hugging Face ZeroGPU Spaces: run heavy functions on a GPU
    import spaces

    GPU = spaces.GPU
except Exception:                      # not installed / not on Spaces: a no-op decorator
    def GPU(fn=None, **_):
        return fn if fn is not None else (lambda f: f)

# ZeroGPU ends a call after its duration (60 s by default): the app's largest request (200 steps, 16
# images, guidance) can take longer on a shared GPU
GPU_SECONDS = 180

PREVIEW_SIDE = 128        # generated images are shown at least this many pixels wide (nearest neighbour)
RESTORE_SIDE = 256        # restoration panels
BUNDLE_DIR = Path(tempfile.gettempdir()) / "noisecorr_app"
BUNDLE_MAX_AGE_S = 2 * 3600


MAX_TEXT = 200          # characters of a typed value (a class name): longer ones are refused, and shown cut


def shown(value, limit: int = 60) -> str:
    """A user's value as a message may repeat it: its repr, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text):,} characters)"


def as_int(value, name: str, lo: int, hi: int) -> int:
    """A whole number in [lo, hi] from a slider or API value (floats like 20.0 are fine)."""
    try:
        f = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{name} must be a whole number, got {shown(value)}") from None
    if not math.isfinite(f) or f != int(f) or not lo <= f <= hi:
        raise ValueError(f"{name} must be a whole number from {lo} to {hi}, got {shown(value)}")
    return int(f)


def as_float(value, name: str, lo: float, hi: float) -> float:
    try:
        f = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{name} must be a number, got {shown(value)}") from None
    if not math.isfinite(f) or not lo <= f <= hi:
        raise ValueError(f"{name} must be a number from {lo:g} to {hi:g}, got {shown(value)}")
    return f


def scale_for(size: int, side: int) -> int:
    """Integer nearest-neighbour factor that shows a size-pixel image about side pixels wide."""
    return max(1, side // max(1, int(size)))


def upscale(img, factor: int):
    from PIL import Image

    return img.resize((img.width * factor, img.height * factor), Image.NEAREST) if factor > 1 else img


def _png_bytes(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def png_in_cache(img, cache_dir: str, name: str = "image") -> str:
    """A PIL image as a PNG file at ``<cache_dir>/<sha256 of the PNG>/<name>.png``, written under a
    temporary name and renamed into place, never rewritten once there; returns its path.

    Given PIL images, Gradio 6.31 writes each to a path named by the hash of its bytes *in place*,
    every time: two users getting the same picture (the same seeded request, an example image)
    truncate the file while it is being sent to the other ("Too little data for declared
    Content-Length", a broken download). A file already in Gradio's cache folder is served as it is."""
    data = _png_bytes(img)
    folder = Path(cache_dir) / hashlib.sha256(data).hexdigest()
    path = folder / f"{name}.png"
    if path.exists():
        try:                  # handed out again: the cache sweeper counts its age from now (its access
            os.utime(path, ns=(time.time_ns(), path.stat().st_mtime_ns))    # time; its contents untouched)
        except OSError:
            pass
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        fd, staging = tempfile.mkstemp(dir=folder, prefix=f".{name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(staging, path)
        except BaseException:
            Path(staging).unlink(missing_ok=True)
            raise
    return str(path)


def write_bundle(prefix: str, images: dict, meta: dict) -> str:
    """A zip of PNG images (name -> PIL image, native resolution) and ``run.json``; returns its path.
    Bundles older than two hours are removed on the way."""
    BUNDLE_DIR.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for old in BUNDLE_DIR.glob("*.zip"):
        try:
            if now - old.stat().st_mtime > BUNDLE_MAX_AGE_S:
                old.unlink()
        except OSError:
            pass
    path = BUNDLE_DIR / f"noisecorr-{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, img in images.items():
            z.writestr(f"{name}.png", _png_bytes(img))
        z.writestr("run.json", json.dumps(meta, indent=1, default=_json_default))
    return str(path)


def _json_default(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


class Stopped(Exception):
    """Raised inside the worker when the consumer of ``stream`` went away (page closed, cancelled)."""


def interruptible(model, stop: threading.Event | None):
    """``model``, checking ``stop`` before every network evaluation: a cancelled or abandoned run ends
    within one evaluation, not at the end of its step (a Heun step or guidance makes several)."""
    if stop is None:
        return model
    from ..models.denoiser import Wrapper

    class Interruptible(Wrapper):
        def eps(self, x, sigma, cond=None):
            self._check()
            return self.model.eps(x, sigma, cond)

        def eps_and_features(self, x, sigma, cond=None):
            self._check()
            return self.model.eps_and_features(x, sigma, cond)

        def features(self, x, sigma, cond=None):
            self._check()
            return self.model.features(x, sigma, cond)

        def _check(self):
            if stop.is_set():
                raise Stopped

    return Interruptible(model)


@contextmanager
def torch_threads(n: int):
    """This thread's intra-op thread count set to n (OpenMP keeps it per thread), the previous back on exit."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _cpu_threads() -> int:
    import torch

    return torch.get_num_threads()


CPU_THREADS = _cpu_threads()      # read once, in the importing (main) thread: workers set theirs from it


def side_by_side(jobs: dict, device) -> dict:
    """Run the jobs (name -> callable) and return name -> result. On a CPU with at least one intra-op
    thread per job they run at once, each on its share: at the app's batch sizes one run cannot
    keep two cores busy (measured, 4 images x 20 DDIM steps, baseline + eps scaling, 2 cores:
    4.2 s one after the other, 2.8 s side by side with one thread each). Every job sets its thread
    count explicitly, so its numbers do not depend on other requests running at the same time (a
    different count changes the float rounding, ~1e-5). On a GPU, one after the other. The first
    exception (e.g. the user stopped the run) is re-raised."""
    import torch
    from concurrent.futures import ThreadPoolExecutor

    if torch.device(device).type != "cpu":
        return {name: job() for name, job in jobs.items()}
    share = CPU_THREADS // len(jobs)
    if share < 1 or len(jobs) < 2:
        with torch_threads(CPU_THREADS):
            return {name: job() for name, job in jobs.items()}

    def run(job):
        with torch_threads(share):
            return job()

    with ThreadPoolExecutor(len(jobs), thread_name_prefix="noisecorr-side") as pool:
        futures = {name: pool.submit(run, job) for name, job in jobs.items()}
        return {name: f.result() for name, f in futures.items()}


def stream(fn, *args, **kwargs):
    """Run ``fn(*args, on_event=cb, stop=event, **kwargs)`` in a worker thread and yield every
    ``cb(event)`` as it happens; the generator's return value (``StopIteration.value``) is fn's result.
    Exceptions in fn are re-raised here. Closing the generator sets ``stop``: the worker stops at its
    next event, or at its next network evaluation where fn hands ``stop`` to ``interruptible``."""
    events: queue.Queue = queue.Queue()
    stop = threading.Event()

    def cb(event):
        if stop.is_set():
            raise Stopped
        events.put(("event", event))

    def work():
        try:
            events.put(("done", fn(*args, on_event=cb, stop=stop, **kwargs)))
        except BaseException as e:         # handed to the consumer
            events.put(("error", e))

    threading.Thread(target=work, daemon=True, name="noisecorr-run").start()
    try:
        while True:
            kind, value = events.get()
            if kind == "event":
                yield value
            elif kind == "done":
                return value
            else:
                raise value
    finally:
        stop.set()


class RunLock:
    """Shared by plain runs, exclusive for runs that read the network's bottleneck features (NLC):
    those use a forward hook on the shared UNet, which would also fire inside another thread's
    pass on the same model."""

    def __init__(self):
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False

    @contextmanager
    def hold(self, exclusive: bool = False):
        with self._cond:
            if exclusive:
                self._cond.wait_for(lambda: not self._writer and self._readers == 0)
                self._writer = True
            else:
                self._cond.wait_for(lambda: not self._writer)
                self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                if exclusive:
                    self._writer = False
                else:
                    self._readers -= 1
                self._cond.notify_all()


class Throttle:
    """Decides when a streamed preview is worth sending: every image re-encodes PNGs and redraws
    the page, so at most one per ``every`` seconds, plus the last step of each run."""

    def __init__(self, every: float = 0.35):
        self.every, self._last = every, 0.0

    def due(self, last_step: bool = False) -> bool:
        now = time.perf_counter()
        if last_step or now - self._last >= self.every:
            self._last = now
            return True
        return False
