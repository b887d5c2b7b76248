"""What one visitor may cost a public server, checked before a request is queued.

- **Time**: a request may spend about ``BUDGET_SECONDS`` of network evaluations, priced with this
  model's own measured speed on this server (``seconds_per_image``), so the same rule holds for a
  32x32 model on two CPU cores and a 256x256 one on a GPU.
- **Queue**: one client (an IP address) may have ``per_client()`` requests waiting or running in the
  queue; the queue as a whole holds ``QUEUE_MAX``.
- **Bodies**: an API call's JSON body is at most ``MAX_BODY_BYTES`` (images arrive as uploads,
  bounded by ``MAX_FILE_SIZE``); ``RequestLimits`` refuses the rest before they are read.
- **Disk**: uploads and results older than ``cache_max_age()`` are deleted on a schedule.
"""
from __future__ import annotations

import ipaddress
import json
import os
import threading
import time

BUDGET_SECONDS = 60.0          # one request's network time, about a minute
MAX_FILE_SIZE = "10mb"         # uploads beyond this are refused by Gradio before they reach a handler
MAX_BODY_BYTES = 1_000_000     # an API call's JSON (settings and uploaded files' names; no pixels)
QUEUE_MAX = 32                 # waiting requests beyond this get "queue full"
PER_CLIENT = 2                 # requests one client may have waiting or running
CACHE_MAX_AGE_S = 3600         # uploads and results are kept this long
CACHE_SWEEP_S = 300            # and looked for this often


def _env_number(name: str, default, kind=int):
    value = os.environ.get(name)
    return kind(value) if value else default


def per_client() -> int:
    """NOISECORR_PER_CLIENT overrides (a load test sends its users from one address)."""
    return max(1, _env_number("NOISECORR_PER_CLIENT", PER_CLIENT))


def cache_schedule() -> tuple[int, int]:
    """(how often, how old): Gradio's ``delete_cache``; NOISECORR_CACHE_MAX_AGE sets the age in seconds."""
    age = max(1, _env_number("NOISECORR_CACHE_MAX_AGE", CACHE_MAX_AGE_S))
    return max(1, min(CACHE_SWEEP_S, age // 2)), age


# -- time -------------------------------------------------------------------------------------------
_speed: dict = {}
_speed_lock = threading.Lock()


def seconds_per_image(model) -> float:
    """Seconds one network evaluation of one image costs a request on this model and device, measured once
    and remembered per model: after a warm-up call, the best of three calls on a batch of 8 (the app's
    batches are 1-16), or one image when a single call already takes over half a second (a large model on
    a CPU). On a CPU it is measured on one thread, as each of a request's two runs computes side by side
    with the other: a measurement on every core would be ruined by any other request running (threads
    that wait for each other spin: ten times slower, measured), and the request's time is half the sum."""
    import torch

    from .common import CPU_THREADS, torch_threads

    key = (model.name, model.info.get("folder"), str(model.device))
    with _speed_lock:
        if key not in _speed:
            cpu = torch.device(model.device).type == "cpu"
            with torch_threads(1 if cpu else torch.get_num_threads()):
                _measure(model, 1)                   # the first call sets up its kernels: not timed
                one = _measure(model, 1)
                best = one if one > 0.5 else min(_measure(model, 8) for _ in range(3))
            _speed[key] = best / min(2, CPU_THREADS) if cpu else best
        return _speed[key]


def _measure(model, batch: int) -> float:
    import torch

    c, h, w = model.sample_shape
    x = torch.zeros(batch, c, h, w, device=model.device)
    sigma = torch.ones(batch, device=model.device)
    with torch.no_grad():
        _sync(model.device)
        start = time.perf_counter()
        model.eps(x, sigma)
        _sync(model.device)
    return max((time.perf_counter() - start) / batch, 1e-6)


def _sync(device):
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def request_budget(model) -> int:
    """Network evaluations (of one image) one request may spend on this model and device."""
    return int(BUDGET_SECONDS / seconds_per_image(model))


class CostError(ValueError):
    """A request over the budget: refused before it is queued (``RequestLimits``) and again when it runs."""


def check_cost(model, evaluations: float):
    """Refuse, in one sentence that says what to lower, a request of ``evaluations`` network evaluations of
    one image (both runs together) that would hold the server longer than the budget."""
    budget = request_budget(model)
    if evaluations > budget:
        seconds = evaluations * seconds_per_image(model)
        raise CostError(f"This request needs about {int(evaluations):,} network evaluations (about "
                         f"{_duration(seconds)} on this server), more than one request may use here ({budget:,}, "
                         f"about a minute): use fewer images or steps.")


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} minutes"


# -- clients and request bodies -----------------------------------------------------------------------
def client_key(client_host: str | None, headers) -> str:
    """The address a request came from. Behind a proxy (the direct peer is a private or loopback address
    and says whom it forwards for, as on Spaces) the first forwarded address; otherwise the peer."""
    host = client_host or "unknown"
    forwarded = headers.get("x-forwarded-for") if headers is not None else None
    if forwarded:
        try:
            proxied = ipaddress.ip_address(host).is_private
        except ValueError:
            proxied = False
        if proxied:
            return forwarded.split(",")[0].strip() or host
    return host


def queued_for(blocks, key: str) -> int:
    """Requests of the client ``key`` waiting or running in the Blocks' queue."""
    events = list(getattr(blocks._queue, "event_ids_to_events", {}).values())
    return sum(1 for e in events if e.request is not None
               and client_key(e.request.client.host if e.request.client else None, e.request.headers) == key)


class RequestLimits:
    """ASGI middleware in front of the Gradio app: an API call's body is bounded, its number of values
    must match the endpoint, and a client may have ``per_client()`` requests in the queue. Refusals
    are one sentence (``{"detail": ...}``), the form Gradio's own refusals take."""

    def __init__(self, app, blocks):
        self.app, self.blocks = app, blocks

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or not _is_call(scope["path"]):
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return await _refuse(scope, receive, send, 413, "This request is too large: settings are at most "
                                 f"{MAX_BODY_BYTES // 1000:,} kB (images go through the upload, up to {MAX_FILE_SIZE}).")
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > MAX_BODY_BYTES:
                return await _refuse(scope, receive, send, 413, "This request is too large: settings are at most "
                                     f"{MAX_BODY_BYTES // 1000:,} kB.")
        problem = self._check(scope, body)
        if problem is None:
            problem = await self._precheck(scope, body)
        if problem:
            return await _refuse(scope, receive, send, *problem)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _check(self, scope, body: bytes) -> tuple[int, str] | None:
        try:
            payload = json.loads(body or b"{}")
        except ValueError:
            return 400, "This request is not valid JSON."
        if not isinstance(payload, dict):
            return 400, "This request must be a JSON object with the endpoint's values under 'data'."
        fn = self._endpoint(scope["path"], payload)
        data = payload.get("data")
        if fn is not None and isinstance(data, list):
            # /call/<name> takes the values a visitor sets; the session's own (gr.State) are the server's
            public = not scope["path"].rstrip("/").endswith("/queue/join")
            wanted = [b for b in fn.inputs if not (public and getattr(b, "stateful", False))]
            names = [n for b, n in zip(fn.inputs, _parameters(fn.fn) or [None] * len(fn.inputs))
                     if b in wanted and n]
            if len(data) < len(wanted):
                said = f" ({', '.join(names)})" if len(names) == len(wanted) else ""
                return 422, f"This endpoint takes {len(wanted)} values{said}, got {len(data)}."
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        client = scope.get("client")
        key = client_key(client[0] if client else None, headers)
        if fn is not None and fn.queue and queued_for(self.blocks, key) >= per_client():
            return 429, (f"You already have {per_client()} requests waiting or running on this server: wait for "
                         f"one to finish (or stop it) before starting another.")
        return None

    async def _precheck(self, scope, body: bytes) -> tuple[int, str] | None:
        """The endpoint's own check of its raw values (``blocks.prechecks[api_name]``, e.g. the cost), run
        before queueing; it raises CostError to refuse and ignores values it cannot read (the run refuses
        those with their own messages)."""
        import anyio

        payload = json.loads(body or b"{}")
        fn = self._endpoint(scope["path"], payload)
        check = getattr(self.blocks, "prechecks", {}).get(getattr(fn, "api_name", None))
        if check is None:
            return None
        names = _parameters(fn.fn)
        if not scope["path"].rstrip("/").endswith("/queue/join"):      # /call/<name>: no session values
            names = [n for n, b in zip(names, fn.inputs) if not getattr(b, "stateful", False)]
        values = dict(zip(names, payload.get("data") or []))
        try:
            await anyio.to_thread.run_sync(check, values)
        except CostError as e:
            return 400, str(e)
        except Exception:
            return None
        return None

    def _endpoint(self, path: str, payload: dict):
        fns = self.blocks.fns
        if path.rstrip("/").endswith("/queue/join"):
            index = payload.get("fn_index")
            return fns.get(index) if isinstance(index, int) else None
        name = path.rstrip("/").rsplit("/call/", 1)[-1]
        return next((fn for fn in fns.values() if fn.api_name == name), None)


def _parameters(fn) -> list[str]:
    import inspect

    try:
        return [n for n, p in inspect.signature(fn).parameters.items()
                if p.kind is p.POSITIONAL_OR_KEYWORD and n != "progress"]
    except (TypeError, ValueError):
        return []


def _is_call(path: str) -> bool:
    path = path.rstrip("/")
    return path.endswith("/queue/join") or ("/call/" in path and path.count("/call/") == 1
                                            and path.rsplit("/call/", 1)[-1].count("/") == 0)


async def _refuse(scope, receive, send, status: int, sentence: str):
    from starlette.responses import JSONResponse

    await JSONResponse({"detail": sentence}, status_code=status)(scope, receive, send)


# -- disk -------------------------------------------------------------------------------------------
def sweep(folders, max_age: float, keep=frozenset(), now: float | None = None) -> int:
    """Delete the files under ``folders`` last written or handed out (their access time) more than
    ``max_age`` seconds ago, except those in
    ``keep`` (the page's own pictures); empty folders left behind go too. Returns how many were deleted."""
    from pathlib import Path

    now = time.time() if now is None else now
    keep = {str(Path(k).resolve()) for k in keep}
    removed = 0
    for folder in folders:
        root = Path(folder)
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*"), key=lambda p: -len(p.parts)):     # files before their folders
            try:
                if path.is_dir():
                    if path != root and now - path.stat().st_mtime > max_age and not any(path.iterdir()):
                        path.rmdir()
                elif now - max(path.stat().st_mtime, path.stat().st_atime) > max_age and str(path.resolve()) not in keep:
                    path.unlink()
                    removed += 1
            except OSError:           # gone already, or being written: the next sweep sees it
                continue
    return removed


def start_sweeper(folders, keep_fn, every: float, max_age: float) -> threading.Event:
    """``sweep`` every ``every`` seconds in a daemon thread until the returned event is set."""
    stop = threading.Event()

    def loop():
        while not stop.wait(every):
            sweep(folders(), max_age, keep_fn())

    threading.Thread(target=loop, daemon=True, name="noisecorr-sweeper").start()
    return stop
