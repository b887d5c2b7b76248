"""What a stranger may cost a public server (``python app.py`` in its own process, the shipped model, CPU):
memory per request (peak resident memory of the server, read from /proc), cost checked before queueing,
a per-client cap on the queue, cancellation and disconnection measured in the server's CPU time,
malformed API calls answered in one sentence, old uploads and results deleted on a schedule.
The library-level pieces (stopping within one network evaluation, loading beside running, Hub config
bounds, the CLI's folder guards) are tested directly."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import ROOT, cpu_seconds, memory, save_tiny_model, serve_app
from PIL import Image

CAT = ROOT / "noisecorr_app" / "ui" / "examples" / "cifar10_cat.png"
CACHE_AGE = 6                    # seconds uploads and results are kept by the server under test
MiB = 2 ** 20


@pytest.fixture(scope="module")
def big_files(tmp_path_factory):
    """A 6300x6300 transparent RGBA PNG (~170 kB) and a 6300x6300 16-bit PNG (~90 kB): small uploads that
    decode to 160 MB and more."""
    d = tmp_path_factory.mktemp("big")
    Image.new("RGBA", (6300, 6300), (255, 0, 255, 0)).save(d / "layer.png")
    deep = np.zeros((6300, 6300), np.uint16)
    deep[:, :3000] = 40000
    Image.fromarray(deep).save(d / "deep.png")
    Image.open(CAT).convert("RGB").resize((256, 256)).save(d / "bg.png")
    return d


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # as on a Space: Gradio's own variable names the host (HOST=127.0.0.1 is set too, and must lose)
    with serve_app(tmp_path_factory.mktemp("server"), NOISECORR_CACHE_MAX_AGE=str(CACHE_AGE),
                   GRADIO_SERVER_NAME="0.0.0.0") as s:
        yield s


def test_the_server_binds_where_gradios_variable_says(server):
    """Read from the kernel's table of listening sockets: the launched server listens on 0.0.0.0."""
    port = int(server["url"].rstrip("/").rsplit(":", 1)[1])
    listening = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:         # 0A: LISTEN
            listening.add(address)
    assert listening == {"00000000"}, listening              # 0.0.0.0, not 127.0.0.1 (0100007F)


def client(server):
    from gradio_client import Client

    return Client(server["url"], verbose=False)


def join(server, fn_index: int, data: list, session: str) -> httpx.Response:
    """What a browser sends: a queue join for one function, by index, with the session's values."""
    return httpx.post(server["url"] + "gradio_api/queue/join", timeout=60,
                      json={"data": data, "fn_index": fn_index, "session_hash": session})


def events(server, session: str, until: str = "process_completed", seconds: float = 120):
    """The session's server-sent messages until one of kind ``until`` (returned), or the stream ends."""
    with httpx.stream("GET", server["url"] + f"gradio_api/queue/data?session_hash={session}", timeout=seconds) as s:
        for line in s.iter_lines():
            if line.startswith("data: "):
                msg = json.loads(line[6:])
                if msg.get("msg") == until:
                    return msg
    return None


def fn_index(server, api_name=None, elem_id=None, trigger="click") -> int:
    """A function's index: by its API name, or by the element that triggers it (private helpers)."""
    config = httpx.get(server["url"] + "config", timeout=30).json()
    if api_name is not None:
        return next(d["id"] for d in config["dependencies"] if d.get("api_name") == api_name)
    comp = next(c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == elem_id)
    return next(d["id"] for d in config["dependencies"] if [comp, trigger] in [list(t) for t in d["targets"]])


def upload(server, path) -> dict:
    with open(path, "rb") as fh:
        r = httpx.post(server["url"] + "gradio_api/upload", files={"files": (path.name, fh)}, timeout=60)
    r.raise_for_status()
    return {"path": r.json()[0], "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}


def peak_rise(server, before: int) -> float:
    return (memory(server["pid"])["VmHWM"] - before) / MiB


# -- memory: tested first, on a fresh server (the peak only ever rises) ---------------------------------
def test_a_drawing_of_many_huge_layers_is_refused_before_decoding(server, big_files):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    before = memory(server["pid"])["VmHWM"]
    layer = handle_file(str(big_files / "layer.png"))
    for layers, message in [([layer] * 40, r"^Drawing has 40 layers; at most 4$"),
                            ([layer], r"^Drawing has a layer of 6300x6300 pixels; at most 1,048,576$")]:
        drawing = {"background": handle_file(str(big_files / "bg.png")), "layers": layers, "composite": None}
        with pytest.raises(AppError, match=message):
            client(server).predict(handle_file(str(CAT)), "drawn", drawing, 0.0, 1, 0, api_name="/inpainting")
    assert peak_rise(server, before) < 150, f"peak rose {peak_rise(server, before):.0f} MiB"


def test_a_large_16_bit_upload_through_the_editor_helper_stays_small(server, big_files):
    """The helper that fills the drawing canvas is any client's to call by its index, outside the run queue."""
    before = memory(server["pid"])["VmHWM"]
    index = fn_index(server, elem_id="inpainting-input", trigger="change")
    r = join(server, index, [None, upload(server, big_files / "deep.png")], "deep-editor")
    assert r.status_code == 200, r.text
    done = events(server, "deep-editor")
    assert done is not None and done["success"], done
    assert peak_rise(server, before) < 400, f"peak rose {peak_rise(server, before):.0f} MiB"     # 1 GB before


# -- cost, queue and bodies ---------------------------------------------------------------------------
def test_the_most_expensive_request_is_refused_before_it_is_queued(server):
    r = httpx.post(server["url"] + "gradio_api/call/generate", timeout=30,
                   json={"data": ["cat", "edm", 200, 0, 16, "nag", 3.0, 1.0, 1.005]})
    assert r.status_code == 400
    assert r.json()["detail"].startswith("This request needs about 19,200 network evaluations")
    assert r.json()["detail"].endswith("use fewer images or steps.")


def test_one_client_may_hold_two_places_in_the_queue(server):
    index = fn_index(server, api_name="generate")
    heavy = [None, "cat", "ddim", 100, 0, 8, "nag", 3.0, 1.0, 1.005]
    sessions = [f"cap-{i}" for i in range(3)]
    answers = [join(server, index, heavy, s) for s in sessions]
    try:
        assert [a.status_code for a in answers] == [200, 200, 429], [a.text for a in answers]
        assert answers[2].json()["detail"].startswith("You already have 2 requests waiting or running")
    finally:
        for s, a in zip(sessions, answers):
            if a.status_code == 200:
                httpx.post(server["url"] + "gradio_api/cancel", timeout=30,
                           json={"event_id": a.json()["event_id"], "session_hash": s, "fn_index": index})
    time.sleep(1.0)
    later = join(server, index, [None, "cat", "ddim", 1, 0, 1, "nag", 3.0, 1.0, 1.005], "cap-later")
    assert later.status_code == 200, later.text           # the places are free again
    assert events(server, "cap-later")["success"]


def test_an_oversized_body_and_a_long_class_name_get_one_sentence(server):
    r = httpx.post(server["url"] + "gradio_api/call/generate", timeout=60,
                   json={"data": ["x" * 2_000_000, "ddim", 2, 0, 1, "nag", 3.0, 1.0, 1.005]})
    assert r.status_code == 413 and r.json()["detail"].startswith("This request is too large")
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as err:
        client(server).predict("x" * 100_000, "ddim", 2, 0, 1, "nag", 3.0, 1.0, 1.005, api_name="/generate")
    assert str(err.value).startswith("Class must be one of any class, airplane") and len(str(err.value)) < 400


# -- cancellation and disconnection, in the server's CPU time -----------------------------------------
class Visitor:
    """A page that started a run of about 30 s and keeps listening to it until ``leave()``."""

    def __init__(self, server, session: str):
        self.server, self.session = server, session
        self.index = fn_index(server, api_name="generate")
        r = join(server, self.index, [None, "cat", "ddim", 150, 1, 8, "nag", 3.0, 1.0, 1.005], session)
        assert r.status_code == 200, r.text
        self.event, self.computing, self.left = r.json()["event_id"], threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._listen, daemon=True)
        self.thread.start()
        assert self.computing.wait(60)

    def _listen(self):
        url = self.server["url"] + f"gradio_api/queue/data?session_hash={self.session}"
        with httpx.stream("GET", url, timeout=60) as s:
            for line in s.iter_lines():
                if '"progress"' in line:
                    self.computing.set()
                if self.left.is_set() or '"process_completed"' in line:
                    return

    def cancel(self):
        httpx.post(self.server["url"] + "gradio_api/cancel", timeout=30,
                   json={"event_id": self.event, "session_hash": self.session, "fn_index": self.index})

    def leave(self):
        self.left.set()
        self.thread.join(30)


def _idle_after(server, seconds: float = 2.0) -> float:
    """CPU seconds the server uses in ``seconds``, starting half a second from now."""
    time.sleep(0.5)
    start = cpu_seconds(server["pid"])
    time.sleep(seconds)
    return cpu_seconds(server["pid"]) - start


def test_a_cancelled_run_stops_computing(server):
    visitor = Visitor(server, "to-cancel")
    start = cpu_seconds(server["pid"])
    time.sleep(1.0)
    assert cpu_seconds(server["pid"]) - start > 0.8          # it is computing (two cores: up to 2 s a second)
    visitor.cancel()
    assert _idle_after(server) < 0.5
    visitor.leave()


def test_a_run_whose_visitor_left_stops_computing(server):
    visitor = Visitor(server, "leaves")
    start = cpu_seconds(server["pid"])
    time.sleep(1.0)
    assert cpu_seconds(server["pid"]) - start > 0.8
    visitor.leave()                                      # the page is closed while it computes
    assert _idle_after(server) < 0.5


# -- malformed calls ------------------------------------------------------------------------------------
@pytest.mark.parametrize("data, message", [
    (["cat", "ddim"], r"^This endpoint takes 9 values \(class_name, sampler_name, n_steps, seed_value, n_images, "
                      r"method, nag_weight, cfg_scale, es_lambda\), got 2\.$"),
])
def test_too_few_values_get_one_sentence(server, data, message):
    r = httpx.post(server["url"] + "gradio_api/call/generate", json={"data": data}, timeout=30)
    assert r.status_code == 422 and __import__("re").search(message, r.json()["detail"]), r.text


# -- disk ---------------------------------------------------------------------------------------------
def test_uploads_and_results_are_deleted_on_a_schedule(server, tmp_path):
    from gradio_client import handle_file

    files = []
    for i in range(20):
        p = tmp_path / f"upload{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(p)
        files.append(upload(server, p)["path"])
    result = client(server).predict(handle_file(str(CAT)), 2.0, 0.0, 1, 0, api_name="/deblur")
    from pathlib import Path

    made = [Path(f) for f in files] + [Path(result[-1])]
    assert all(p.exists() for p in made)
    page = httpx.get(server["url"] + "config", timeout=30).json()
    shown = [c["props"]["value"]["url"] for c in page["components"]
             if isinstance(c.get("props", {}).get("value"), dict) and c["props"]["value"].get("url")]
    deadline = time.time() + 4 * CACHE_AGE
    while time.time() < deadline and any(p.exists() for p in made):
        time.sleep(1)
    assert not any(p.exists() for p in made), [str(p) for p in made if p.exists()]
    assert shown and all(httpx.get(u, timeout=30).status_code == 200 for u in shown)     # the page's own pictures stay


# -- library level ------------------------------------------------------------------------------------
def test_a_stopped_run_ends_before_its_next_network_evaluation():
    """EDM makes two evaluations a step and NAG batches two images each: the run stops mid-step."""
    from noisecorr_app.models.denoiser import Wrapper
    from noisecorr_app.models.loading import load_model
    from noisecorr_app.ui.common import Stopped
    from noisecorr_app.ui.generate import parse_generate, run_generate

    stop = threading.Event()

    class StopsAfterThree(Wrapper):
        calls = 0

        def eps(self, x, sigma, cond=None):
            StopsAfterThree.calls += 1
            if StopsAfterThree.calls == 3:
                stop.set()
            return self.model.eps(x, sigma, cond)

    plain = load_model(device="cpu")
    req = parse_generate(plain, "any class", "edm", 4, 0, 1, "nag")
    model = StopsAfterThree(plain)
    with pytest.raises(Stopped):
        run_generate(model, req, stop=stop)
    assert StopsAfterThree.calls == 3


def test_loading_a_model_does_not_block_runs_on_another(monkeypatch, tmp_path):
    from noisecorr_app.ui import state

    store = state.ModelStore(None, device="cpu")
    default = store.load_default()
    started, release = threading.Event(), threading.Event()
    real = state.load_model

    def slow_load(*args, **kw):          # a Hub download that takes its time
        started.set()
        release.wait(30)
        return real(*args, **kw)

    monkeypatch.setattr(state, "load_model", slow_load)

    def load():
        try:
            store.get("someone/slow-model")
        except Exception:         # no network here: it fails, once released
            pass

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    assert started.wait(10)
    t = time.perf_counter()
    with store.run_lock(default).hold():
        assert store.get(state.DEFAULT_KEY) is default
    assert time.perf_counter() - t < 1.0
    release.set()
    loader.join(30)


def _hub_snapshot(cache, repo_id, sample_size=32, timesteps=1000, weights=False, extra=None):
    """A repo in a Hugging Face cache, as if downloaded earlier; its weights garbage unless ``weights``."""
    snap = cache / f"models--{repo_id.replace('/', '--')}" / "snapshots" / ("a" * 40)
    save_tiny_model(snap, layout="flat", extra=extra)
    config = json.loads((snap / "config.json").read_text())
    config["sample_size"] = sample_size
    (snap / "config.json").write_text(json.dumps(config))
    sched = json.loads((snap / "scheduler_config.json").read_text())
    sched["num_train_timesteps"] = timesteps
    (snap / "scheduler_config.json").write_text(json.dumps(sched))
    if not weights:
        (snap / "diffusion_pytorch_model.safetensors").write_bytes(b"not a weights file")
    (snap.parents[1] / "refs").mkdir(parents=True)
    (snap.parents[1] / "refs" / "main").write_text("a" * 40)


def test_a_hub_model_is_bounded_before_its_weights_are_read(monkeypatch, tmp_path):
    """The weights files here are garbage: a refusal that names the config proves they were never read."""
    from noisecorr_app.models.loading import ModelLoadError
    from noisecorr_app.ui.state import ModelStore

    import huggingface_hub.constants

    _hub_snapshot(tmp_path, "big/model-1024", sample_size=1024)
    _hub_snapshot(tmp_path, "long/schedule", timesteps=30_000_000)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    store = ModelStore(None, device="cpu")
    with pytest.raises(ModelLoadError, match=r"makes 1024x1024 images; this server runs models of at most 128x128"):
        store.get("big/model-1024")
    with pytest.raises(ModelLoadError, match=r"num_train_timesteps 30000000 .* from 2 to 100,000") as err:
        store.get("long/schedule")
    assert str(tmp_path) not in str(err.value)


def test_a_bad_noisecorr_json_is_named_without_the_server_path(monkeypatch, tmp_path):
    import huggingface_hub.constants

    from noisecorr_app.methods import recommended_run
    from noisecorr_app.models.loading import ModelLoadError, load_model

    _hub_snapshot(tmp_path, "someone/bad-advice", weights=True, extra={"recommended": {"method": "bogus"}})
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match=r"^recommended.method in someone/bad-advice: noisecorr.json must be") as err:
        recommended_run(load_model("someone/bad-advice", device="cpu"))
    assert str(tmp_path) not in str(err.value) and "snapshots" not in str(err.value)
    snap = next(tmp_path.glob("models--someone--bad-advice/snapshots/*"))
    (snap / "noisecorr.json").write_text("{torn")
    with pytest.raises(ModelLoadError, match=r"^The noisecorr.json of 'someone/bad-advice' is not readable JSON") as err:
        load_model("someone/bad-advice", device="cpu")
    assert str(tmp_path) not in str(err.value)


# -- the CLI's folders ----------------------------------------------------------------------------------
def test_training_refuses_a_folder_of_another_kind_and_a_model_with_nlc(tmp_path, capsys):
    import shutil

    from noisecorr_app.cli import main

    shipped = ROOT / "weights" / "noisecorr-ddpm-cifar10"
    copy = tmp_path / "model"
    shutil.copytree(shipped, copy, ignore=shutil.ignore_patterns("*.safetensors", "*.png"))
    cases = [(["train", "denoiser", "--out", str(copy / "nlc"), "--steps", "1"], r"holds NLC weights \(r_theta\), not a diffusion model"),
             (["train", "denoiser", "--out", str(ROOT / "weights" / "cifar10-classifier"), "--steps", "1"], r"holds a classifier"),
             (["train", "classifier", "--out", str(copy), "--steps", "1"], r"holds a diffusion model"),
             (["train", "denoiser", "--out", str(copy), "--steps", "1"],
              r"trained model with NLC weights \(nlc/\) and settings measured on it .* --overwrite")]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "Traceback" not in err and __import__("re").search(message, err), err


def test_an_unreadable_training_state_is_named(tmp_path, capsys):
    from noisecorr_app.training.loop import read_state

    state = tmp_path / "training" / "state.json"
    state.parent.mkdir()
    state.write_text('{"step": 12')                     # torn mid-write
    with pytest.raises(ValueError, match=rf"^{state} could not be read \(JSONDecodeError\)"):
        read_state(state)
