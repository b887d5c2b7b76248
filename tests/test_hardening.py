"""The bad-input matrix: every app endpoint (through gradio_client, or raw HTTP where the client
itself refuses to send the value, e.g. NaN) and every CLI command that takes user input, on the
shipped default model. One parametrised test per row: a refused input gets its specific one-line
message (no traceback), an input that is legitimately accepted (grayscale, RGBA, palette, 16-bit,
EXIF-rotated) gets the right result, and after all rows the server answers the request it answered
before them with the same pixels (it kept serving, and nothing leaked into later requests).

All bad files are built here, cheaply: the 10000x10000 "bomb" is a 1-bit PNG of about 12 kB."""
import io
import json
import shutil

import numpy as np
import pytest
from conftest import ROOT, save_tiny_model, tiny_unet
from PIL import Image

SIDE = 32                            # the default model's images; restoration panels are shown 8x (256 px)
SHOWN = 256
CAT = ROOT / "noisecorr_app" / "ui" / "examples" / "cifar10_cat.png"
GOOD_GENERATE = ("cat", "ddim", 2, 5, 1, "es", 3.0, 1.0, 1.005)


# -- the files ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    f = {}

    def save(name, img, **kw):
        img.save(d / name, **kw)
        f[name.split(".")[0]] = d / name

    (d / "notes.png").write_text("this is not an image, whatever its name says")
    f["not_image"] = d / "notes.png"
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="PNG")
    (d / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    f["truncated"] = d / "truncated.png"
    save("one.png", Image.new("RGB", (1, 1), "red"))
    save("bomb.png", Image.new("1", (10000, 10000)))                       # 100 M pixels in ~12 kB
    assert f["bomb"].stat().st_size < 100_000
    ramp = np.tile(np.linspace(0, 255, 40).astype(np.uint8), (40, 1))
    save("gray.png", Image.fromarray(ramp, "L"))
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[:, :20] = (255, 0, 0, 0)                                          # left: transparent red
    rgba[:, 20:] = (0, 0, 255, 255)                                        # right: opaque blue
    save("rgba.png", Image.fromarray(rgba, "RGBA"))
    save("palette.png", Image.fromarray(noise).convert("P", palette=Image.Palette.ADAPTIVE, colors=16))
    save("deep.png", Image.fromarray(np.tile(np.linspace(0, 65535, 40).astype(np.uint16), (40, 1))))
    assert Image.open(f["deep"]).mode == "I;16"
    stored = Image.new("RGB", (64, 32), "black")
    stored.paste(Image.new("RGB", (32, 32), "white"), (0, 0))               # stored: white left half
    exif = Image.Exif()
    exif[0x0112] = 6                                                        # displayed rotated 90 degrees CW
    save("exif.jpg", stored, exif=exif.tobytes(), quality=95)
    save("mask_empty.png", Image.new("L", (40, 40), 0))
    save("mask_full.png", Image.new("L", (40, 40), 255))
    mask = Image.new("L", (40, 40), 0)
    mask.paste(255, (10, 10, 30, 30))
    save("mask_square.png", mask)
    # drawings as the app's ImageEditor sends them: a background and one RGBA stroke layer
    Image.open(CAT).convert("RGB").resize((SHOWN, SHOWN)).save(d / "bg.png")
    save("layer_empty.png", Image.new("RGBA", (SHOWN, SHOWN), (0, 0, 0, 0)))
    save("layer_full.png", Image.new("RGBA", (SHOWN, SHOWN), (255, 0, 255, 255)))
    f["bg"] = d / "bg.png"
    return f


def expected_reference(name: str, ref: np.ndarray, note: str, files) -> None:
    """What a legitimately accepted image must become (ref: SIDE x SIDE x 3 uint8, note: what the
    app or CLI said it did)."""
    from noisecorr_app.images import prepare_image, to_pil

    assert ref.shape == (SIDE, SIDE, 3)
    if name == "gray":                       # a grey ramp: grey pixels, dark on the left, light on the right
        assert (ref[..., 0] == ref[..., 1]).all() and (ref[..., 1] == ref[..., 2]).all()
        assert ref[:, :4].mean() < 40 and ref[:, -4:].mean() > 215
    elif name == "rgba":                     # transparent pixels flattened on white, not black or red
        assert "transparency flattened on white" in note
        assert (ref[:, :12] >= 250).all()
        assert ref[:, -12:, 2].min() > 200 and ref[:, -12:, :2].max() < 50
    elif name == "palette":                  # the palette's colours, as the same image in RGB
        rgb = np.asarray(to_pil(prepare_image(Image.open(files["palette"]).convert("RGB"), SIDE)[0])[0])
        assert np.array_equal(ref, rgb)
    elif name == "deep":                     # 16-bit ramp scaled to 8 bits: still a ramp, not clipped white
        assert "16-bit image scaled to 8 bits" in note
        row = ref[SIDE // 2, :, 0].astype(int)
        assert row[0] < 20 and row[-1] > 235 and (np.diff(row) >= -2).all()
    elif name == "exif":                     # EXIF rotation applied: the white half is on top
        assert "centre-cropped from 32x64" in note
        assert ref[:12].mean() > 200 and ref[-12:].mean() < 55
    else:
        raise AssertionError(name)


ACCEPTED = ["gray", "rgba", "palette", "deep", "exif"]


# -- the app -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server():
    """The app on the shipped default model, and its answer to a good request before any bad one."""
    from gradio_client import Client

    from noisecorr_app.ui.app import build_demo, launch

    demo = build_demo(None, device="cpu")
    launch(demo, prevent_thread_lock=True, server_port=None, quiet=True)
    url = demo.local_url
    before = _pixels_of(Client(url, verbose=False).predict(*GOOD_GENERATE, api_name="/generate")[1:3])
    yield {"url": url, "before": before}
    demo.close()


@pytest.fixture()
def client(server):
    from gradio_client import Client

    return Client(server["url"], verbose=False)


def _pixels_of(paths) -> list[np.ndarray]:
    return [np.asarray(Image.open(p).convert("RGB")) for p in paths]


def raw_call(url: str, api: str, data: list) -> tuple[str, object]:
    """POST an API call as any HTTP client may (json.dumps writes NaN and Infinity as JavaScript
    does; gradio_client refuses to send them) -> ('error', message) or ('complete', outputs)."""
    import httpx

    body = json.dumps({"data": data})
    r = httpx.post(f"{url.rstrip('/')}/gradio_api/call/{api}", content=body,
                   headers={"content-type": "application/json"}, timeout=60)
    r.raise_for_status()
    event = r.json()["event_id"]
    with httpx.stream("GET", f"{url.rstrip('/')}/gradio_api/call/{api}/{event}", timeout=120) as s:
        text = "".join(s.iter_text())
    kind = None
    for line in text.splitlines():
        if line.startswith("event: "):
            kind = line[7:].strip()
        elif line.startswith("data: ") and kind in ("error", "complete"):
            payload = json.loads(line[6:])
            return kind, (payload.get("error") if kind == "error" and isinstance(payload, dict) else payload)
    raise AssertionError(f"no result in the event stream: {text[:500]}")


def _file(path):
    from gradio_client import handle_file

    return handle_file(str(path))


def _server_file(path):
    """A FileData naming a path on the server, as a hostile client could send it."""
    return {"path": str(path), "meta": {"_type": "gradio.FileData"}}


def _drawing(files, layer):
    return {"background": _file(files["bg"]), "layers": [_file(files[layer])], "composite": None}


def gen(**kw):
    args = dict(zip(["cls", "sampler", "steps", "seed", "n", "method", "w", "cfg", "lam"], GOOD_GENERATE))
    args.update(kw)
    return list(args.values())


def sr(image, factor=4, sigma_y=0.0, steps=1, seed=0):
    return [image, factor, sigma_y, steps, seed]


# (row id, endpoint, how to send, args from the files, the message expected)
APP_REFUSED = [
    # images, on every restoration endpoint
    *[(f"not-an-image-{tab}", f"/{tab}", "client", lambda f, tab=tab: _restore_args(tab, _file(f["not_image"])),
       r"^the file is not an image Pillow can read, or it is truncated$")
      for tab in ["super_resolution", "inpainting", "deblur", "colorize", "compressive_sensing"]],
    ("truncated-png", "/super_resolution", "client", lambda f: sr(_file(f["truncated"])),
     r"^the file is not an image Pillow can read, or it is truncated$"),
    ("1x1", "/super_resolution", "client", lambda f: sr(_file(f["one"])), r"^the image is too small \(1x1\)$"),
    ("10000x10000-bomb", "/super_resolution", "client", lambda f: sr(_file(f["bomb"])),
     r"^the image is too large \(over 40,000,000 pixels\)$"),
    ("no-image", "/super_resolution", "client", lambda f: sr(None), r"^No image: upload one or pick an example"),
    ("upload-path-not-uploaded", "/super_resolution", "raw", lambda f: sr(_server_file(ROOT / "README.md")),
     r"not uploaded by a user"),
    ("upload-path-traversal", "/super_resolution", "raw", lambda f: sr(_server_file("../../../../../etc/passwd")),
     r"not uploaded by a user"),
    # masks
    ("empty-drawn-mask", "/inpainting", "client", lambda f: [_file(CAT), "drawn", _drawing(f, "layer_empty"), 0.0, 1, 0],
     r"^Nothing is drawn"),
    ("full-drawn-mask", "/inpainting", "client", lambda f: [_file(CAT), "drawn", _drawing(f, "layer_full"), 0.0, 1, 0],
     r"^the mask hides the whole image"),
    ("drawn-layer-not-an-image", "/inpainting", "client",
     lambda f: [_file(CAT), "drawn", _drawing(f, "not_image"), 0.0, 1, 0],
     r"^Drawing has a layer that is not an image Pillow can read"),
    ("unknown-mask-kind", "/inpainting", "client", lambda f: [_file(CAT), "bogus", None, 0.0, 1, 0],
     r"^Mask must be one of box, random, half, drawn, got 'bogus'$"),
    # steps, counts, seeds
    ("steps-0", "/generate", "client", lambda f: gen(steps=0), r"^Steps must be a number from 1 to 200, got 0$"),
    ("steps-minus-1", "/generate", "client", lambda f: gen(steps=-1), r"^Steps must be a number from 1 to 200, got -1$"),
    ("steps-1000000", "/generate", "client", lambda f: gen(steps=1_000_000),
     r"^Steps must be a number from 1 to 200, got 1000000$"),
    ("steps-1.5", "/generate", "client", lambda f: gen(steps=1.5), r"^Steps must be a whole number from 1 to 200, got 1.5$"),
    ("steps-text", "/generate", "raw", lambda f: gen(steps="many"), r"^Steps must be a number from 1 to 200, got 'many'$"),
    ("restore-steps-1000000", "/deblur", "client", lambda f: [_file(CAT), 2.0, 0.0, 1_000_000, 0],
     r"^Steps must be a number from 1 to 200, got 1000000$"),
    ("images-1000", "/generate", "client", lambda f: gen(n=1000), r"^Number of images must be a number from 1 to 16"),
    ("seed-minus-1", "/generate", "client", lambda f: gen(seed=-1), r"^Seed must be a number of at least 0, got -1$"),
    # raw calls send no image: inputs are read in order before the handler runs, and an image path
    # that was not uploaded to this server is refused first (see upload-path-not-uploaded)
    ("seed-NaN", "/colorize", "raw", lambda f: [None, 0.0, 1, float("nan")],
     r"^Seed must be a number of at least 0, got nan$"),
    # guidance weights and other numbers
    ("nag-weight-NaN", "/generate", "raw", lambda f: gen(method="nag", w=float("nan")),
     r"^Noise Awareness Guidance weight must be a number from 0 to 20, got nan$"),
    ("nag-weight-huge", "/generate", "client", lambda f: gen(method="nag", w=1e30),
     r"^Noise Awareness Guidance weight must be a number from 0 to 20, got 1e\+30$"),
    ("nag-weight-Infinity", "/generate", "raw", lambda f: gen(method="nag-est", w=float("inf")),
     r"^Noise Awareness Guidance weight must be a number from 0 to 20, got inf$"),
    ("cfg-NaN", "/generate", "raw", lambda f: gen(cfg=float("nan")), r"^Class guidance scale must be a number from 1 to 10, got nan$"),
    ("cfg-huge", "/generate", "client", lambda f: gen(cfg=1e300), r"^Class guidance scale must be a number from 1 to 10"),
    ("es-lambda-NaN", "/generate", "raw", lambda f: gen(lam=float("nan")),
     r"^Epsilon-scaling factor must be a number from 0.98 to 1.02, got nan$"),
    ("sigma-y-NaN", "/super_resolution", "raw", lambda f: sr(None, sigma_y=float("nan")),
     r"^Measurement noise sigma_y must be a number from 0 to 0.2, got nan$"),
    ("sigma-y-huge", "/super_resolution", "client", lambda f: sr(_file(CAT), sigma_y=1e30),
     r"^Measurement noise sigma_y must be a number from 0 to 0.2, got 1e\+30$"),
    ("blur-sigma-NaN", "/deblur", "raw", lambda f: [None, float("nan"), 0.0, 1, 0],
     r"^Blur sigma must be a number from 0.5 to 5, got nan$"),
    ("cs-fraction-0", "/compressive_sensing", "client", lambda f: [_file(CAT), 0.0, 0.0, 1, 0],
     r"^Measured fraction of coefficients must be a number from 0.05 to 1, got 0.0$"),
    ("sr-factor-3", "/super_resolution", "client", lambda f: sr(_file(CAT), factor=3),
     r"^Factor must be one of 2, 4, 8, got 3$"),
    # names
    ("unknown-sampler", "/generate", "client", lambda f: gen(sampler="euler-x"), r"^unknown sampler 'euler-x' \(choose from"),
    ("unknown-correction", "/generate", "client", lambda f: gen(method="nope"), r"^unknown correction 'nope' \(choose from"),
    ("unknown-class", "/generate", "client", lambda f: gen(cls="zebra"), r"^unknown class 'zebra': choose one of airplane"),
    ("class-superscript-two", "/generate", "client", lambda f: gen(cls="²"), r"^unknown class '²': choose one of airplane"),
    # values of the wrong form, as any HTTP client may send them
    ("steps-None", "/generate", "raw", lambda f: gen(steps=None), r"^Steps must be a number from 1 to 200, got None$"),
    ("seed-10**400", "/generate", "raw", lambda f: gen(seed=10 ** 400),
     r"^Seed must be a number of at least 0, got 10{59}\.\.\. \(401 characters\)$"),
    ("image-as-text", "/super_resolution", "raw", lambda f: sr("hello"), r"^Image is not in the form this input takes"),
    ("drawing-not-a-drawing", "/inpainting", "raw", lambda f: [None, "drawn", {"layers": 5}, 0.0, 1, 0],
     r"^Drawing is not in the form this input takes"),
]


def _restore_args(tab, image):
    settings = {"super_resolution": [4], "inpainting": ["box", None], "deblur": [2.0], "colorize": [],
                "compressive_sensing": [0.25]}[tab]
    return [image, *settings, 0.0, 1, 0]


@pytest.mark.parametrize("row, api, how, make, message", APP_REFUSED, ids=[r[0] for r in APP_REFUSED])
def test_app_refuses(server, client, files, row, api, how, make, message):
    from gradio_client.exceptions import AppError

    if how == "client":
        with pytest.raises(AppError) as err:
            client.predict(*make(files), api_name=api)
        text = str(err.value)
    else:
        kind, text = raw_call(server["url"], api.strip("/"), make(files))
        assert kind == "error", text
    assert "\n" not in text.strip() and "Traceback" not in text and "Could not preprocess" not in text
    assert __import__("re").search(message, text), text


@pytest.mark.parametrize("name", ACCEPTED)
def test_app_accepts(client, files, name):
    """Modes Gradio would convert its own way (RGBA alpha dropped, 16-bit clipped) reach the app's
    reader as uploaded; EXIF rotation is applied."""
    ref, degraded, slider, base, fixed, metrics, *_ = client.predict(*sr(_file(files[name])), api_name="/super_resolution")
    shown = np.asarray(Image.open(ref).convert("RGB"))
    assert shown.shape == (SHOWN, SHOWN, 3)
    expected_reference(name, shown[:: SHOWN // SIDE, :: SHOWN // SIDE], metrics, files)
    assert Image.open(base).size == Image.open(fixed).size == (SHOWN, SHOWN)


def test_app_refuses_an_upload_over_10_mb(server, tmp_path):
    """Refused by the client before sending, and by the server for any other client."""
    import httpx
    from gradio_client import Client

    big = tmp_path / "big.png"
    big.write_bytes(np.random.default_rng(0).integers(0, 256, 11 * 2 ** 20, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match="exceeds the maximum file size"):
        Client(server["url"], verbose=False).predict(*sr(_file(big)), api_name="/super_resolution")
    with big.open("rb") as fh:
        r = httpx.post(f"{server['url'].rstrip('/')}/gradio_api/upload", files={"files": ("big.png", fh)}, timeout=60)
    assert r.status_code == 413 and "maximum" in r.text.lower()


# /load_model: a web user may type only a Hub repo id; the app says why not and keeps its model
def _hub_repo(cache, repo_id, make):
    snap = cache / f"models--{repo_id.replace('/', '--')}" / "snapshots" / ("a" * 40)
    make(snap)
    (snap.parents[1] / "refs").mkdir(parents=True)
    (snap.parents[1] / "refs" / "main").write_text("a" * 40)


def _pickle_only(folder):
    from diffusers import DDPMScheduler

    tiny_unet().save_pretrained(folder, safe_serialization=False)
    DDPMScheduler().save_pretrained(folder)


def _corrupt_safetensors(folder):
    save_tiny_model(folder, layout="flat")
    w = folder / "diffusion_pytorch_model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])


LOAD_REFUSED = [
    ("repo-id-malformed", "other", "bad id!/x", r"'bad id!/x' is not a Hub repo id"),
    ("repo-id-three-parts", "other", "a/b/c", r"'a/b/c' is not a Hub repo id"),
    ("repo-id-empty", "other", "", r"Type a Hugging Face Hub repo id"),
    ("path-traversal", "other", "../../etc/passwd", r"'../../etc/passwd' is not a Hub repo id.*Local folders cannot"),
    ("absolute-path", "other", str(ROOT / "weights" / "noisecorr-ddpm-cifar10"), r"is not a Hub repo id"),
    ("server-folder-as-repo-id", "other", "weights/noisecorr-ddpm-cifar10", r"names a path on the server"),
    ("unknown-picker-choice", "../../weights", "", r"^Model must be one of default, google/ddpm-cifar10-32"),
    ("hub-offline-not-cached", "other", "someone/not-cached", r"Hub cannot be reached .* not in its local cache"),
    ("hub-repo-pickle-only", "other", "someone/pickled", r"'someone/pickled' has no safetensors weights .* loads only "
                                                        r"safetensors"),
    ("hub-repo-corrupt-safetensors", "other", "someone/corrupt", r"The weights of 'someone/corrupt' could not be read: "
                                                                 r"the downloaded file is corrupt or incomplete"),
]


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    """A Hugging Face cache holding two bad repos, as if downloaded earlier."""
    cache = tmp_path_factory.mktemp("hub")
    _hub_repo(cache, "someone/pickled", _pickle_only)
    _hub_repo(cache, "someone/corrupt", _corrupt_safetensors)
    return cache


@pytest.mark.parametrize("row, choice, repo, message", LOAD_REFUSED, ids=[r[0] for r in LOAD_REFUSED])
def test_model_picker_refuses(client, monkeypatch, hub_cache, row, choice, repo, message):
    import re

    import huggingface_hub.constants
    from gradio_client.exceptions import AppError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")              # no network here: answer at once, from the cache
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.chdir(ROOT)
    try:
        text, *_ = client.predict(choice, repo, api_name="/load_model")
    except AppError as e:                                  # refused by the input itself
        text = str(e)
        assert "Traceback" not in text and re.search(message, text), text
        return
    assert re.search(message, text, re.S), text
    assert "snapshots" not in text and str(hub_cache) not in text      # no server paths for web users
    assert "Could not load that model" in text and "**Model:** embedded default" in text    # and it kept its model


@pytest.mark.parametrize("broken", ["pickle-only", "corrupt-safetensors"])
def test_a_broken_server_default_is_a_message_on_every_endpoint(tmp_path, broken):
    """The operator's NOISECORR_MODEL folder holds only a pickle, or a corrupt safetensors file: the
    app starts, says so, and every endpoint answers with that message."""
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    from noisecorr_app.ui.app import build_demo, launch

    folder = tmp_path / "model"
    (_pickle_only if broken == "pickle-only" else _corrupt_safetensors)(folder)
    message = "only a pickle checkpoint" if broken == "pickle-only" else "corrupt or incomplete"
    demo = build_demo(str(folder), device="cpu")
    try:
        header = [b.value for b in demo.blocks.values() if getattr(b, "elem_id", None) == "model-info"][0]
        assert "No model loaded" in header and message in header
        launch(demo, prevent_thread_lock=True, server_port=None, quiet=True)
        c = Client(demo.local_url, verbose=False)
        with pytest.raises(AppError, match=message):
            c.predict(*gen(cls="any class"), api_name="/generate")
        with pytest.raises(AppError, match=message):
            c.predict(*sr(_file(CAT)), api_name="/super_resolution")
    finally:
        demo.close()


# -- the CLI -----------------------------------------------------------------------------------------
def run_cli(argv, capsys):
    """main() in this process -> (exit status, stderr, stdout); argparse's refusals exit too."""
    from noisecorr_app.cli import main

    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:                 # argparse: usage line + one error line, status 2
        rc = e.code
    out = capsys.readouterr()
    return rc, out.err, out.out


def _restore_cmd(f, tmp, image, *extra, task="sr4"):
    return ["restore", "--task", task, "--input", image, "--method", "ddnm", "--steps", "1", "--out", tmp / "r",
            "--device", "cpu", *extra]


def _sample_cmd(tmp, *extra):
    args = ["sample", "--steps", "1", "--n", "1", "--out", tmp / "s", "--device", "cpu", *extra]
    return args


def _model_folder(tmp, make):
    folder = tmp / "model"
    make(folder)
    return folder


# (row id, argv from (files, tmp_path), the message expected on the one error line)
CLI_REFUSED = [
    ("restore-not-an-image", lambda f, t: _restore_cmd(f, t, f["not_image"]),
     r"^error: the file is not an image Pillow can read, or it is truncated$"),
    ("restore-truncated-png", lambda f, t: _restore_cmd(f, t, f["truncated"]),
     r"^error: the file is not an image Pillow can read, or it is truncated$"),
    ("restore-1x1", lambda f, t: _restore_cmd(f, t, f["one"]), r"^error: the image is too small \(1x1\)$"),
    ("restore-10000x10000-bomb", lambda f, t: _restore_cmd(f, t, f["bomb"]),
     r"^error: the image is too large \(over 40,000,000 pixels\)$"),
    ("restore-missing-file", lambda f, t: _restore_cmd(f, t, t / "nope.png"), r"^error: no image file at .*nope.png$"),
    ("restore-empty-mask", lambda f, t: _restore_cmd(f, t, CAT, "--mask", f["mask_empty"], task="inpaint"),
     r"^error: the mask hides nothing: there is nothing to inpaint$"),
    ("restore-full-mask", lambda f, t: _restore_cmd(f, t, CAT, "--mask", f["mask_full"], task="inpaint"),
     r"^error: the mask hides the whole image: there is nothing left to restore from$"),
    ("restore-mask-not-an-image", lambda f, t: _restore_cmd(f, t, CAT, "--mask", f["not_image"], task="inpaint"),
     r"^error: the mask file is not an image Pillow can read, or it is truncated$"),
    ("restore-mask-bomb", lambda f, t: _restore_cmd(f, t, CAT, "--mask", f["bomb"], task="inpaint"),
     r"^error: the mask is too large \(over 40,000,000 pixels\)$"),
    ("restore-mask-for-another-task", lambda f, t: _restore_cmd(f, t, CAT, "--mask", f["mask_square"]),
     r"^error: --mask is for --task inpaint, not sr4$"),
    ("restore-steps-0", lambda f, t: _restore_cmd(f, t, CAT, "--steps", "0"),
     r"^error: Steps must be a whole number from 1 to 1000, got 0$"),
    ("restore-steps-1000000", lambda f, t: _restore_cmd(f, t, CAT, "--steps", "1000000"),
     r"^error: Steps must be a whole number from 1 to 1000, got 1000000$"),
    ("restore-sigma-y-NaN", lambda f, t: _restore_cmd(f, t, CAT, "--sigma-y", "nan"),
     r"^error: Measurement noise sigma_y must be a number from 0 to 0.2, got nan$"),
    ("restore-blur-sigma-NaN", lambda f, t: _restore_cmd(f, t, CAT, "--blur-sigma", "nan", task="deblur"),
     r"^error: Blur sigma must be a number from 0.5 to 5, got nan$"),
    ("restore-cs-ratio-Infinity", lambda f, t: _restore_cmd(f, t, CAT, "--cs-ratio", "inf", task="cs"),
     r"^error: Measured fraction of coefficients must be a number from 0.05 to 1, got inf$"),
    ("restore-unknown-task", lambda f, t: _restore_cmd(f, t, CAT, task="sr3"), r"argument --task: invalid choice: 'sr3'"),
    ("sample-steps-0", lambda f, t: _sample_cmd(t, "--steps", "0"), r"^error: Steps must be a whole number from 1 to 1000, got 0$"),
    ("sample-steps-minus-1", lambda f, t: _sample_cmd(t, "--steps", "-1"),
     r"^error: Steps must be a whole number from 1 to 1000, got -1$"),
    ("sample-steps-1000000", lambda f, t: _sample_cmd(t, "--steps", "1000000"),
     r"^error: Steps must be a whole number from 1 to 1000, got 1000000$"),
    ("sample-steps-text", lambda f, t: _sample_cmd(t, "--steps", "many"), r"argument --steps: invalid int value: 'many'"),
    ("sample-n-0", lambda f, t: _sample_cmd(t, "--n", "0"), r"^error: --n must be between 1 and 10000$"),
    ("sample-batch-size-0", lambda f, t: _sample_cmd(t, "--batch-size", "0"), r"^error: --batch-size must be at least 1, got 0$"),
    ("sample-nag-scale-NaN", lambda f, t: _sample_cmd(t, "--method", "nag", "--nag-scale", "nan"),
     r"^error: Noise Awareness Guidance weight must be a number from 0 to 20, got nan$"),
    ("sample-nag-scale-huge", lambda f, t: _sample_cmd(t, "--method", "nag", "--nag-scale", "1e30"),
     r"^error: Noise Awareness Guidance weight must be a number from 0 to 20, got 1e\+30$"),
    ("sample-nag-est-scale-NaN", lambda f, t: _sample_cmd(t, "--method", "nag-est", "--nag-est-scale", "nan"),
     r"^error: Estimator guidance weight must be a number from 0 to 20, got nan$"),
    ("sample-cfg-scale-NaN", lambda f, t: _sample_cmd(t, "--class", "cat", "--cfg-scale", "nan"),
     r"^error: Class guidance scale must be a number from 1 to 10, got nan$"),
    ("sample-cfg-scale-huge", lambda f, t: _sample_cmd(t, "--class", "cat", "--cfg-scale", "1e300"),
     r"^error: Class guidance scale must be a number from 1 to 10, got 1e\+300$"),
    ("sample-es-lambda-NaN", lambda f, t: _sample_cmd(t, "--method", "es", "--es-lambda", "nan"),
     r"^error: Epsilon-scaling factor must be a number from 0.98 to 1.02, got nan$"),
    ("sample-eta-NaN", lambda f, t: _sample_cmd(t, "--eta", "nan"), r"^error: DDIM's eta must be a number from 0 to 1, got nan$"),
    ("sample-eta-2", lambda f, t: _sample_cmd(t, "--eta", "2"), r"^error: DDIM's eta must be a number from 0 to 1, got 2.0$"),
    ("sample-unknown-sampler", lambda f, t: _sample_cmd(t, "--sampler", "euler-x"),
     r"argument --sampler: invalid choice: 'euler-x' \(choose from"),
    ("sample-unknown-method", lambda f, t: _sample_cmd(t, "--method", "nope"),
     r"argument --method: invalid choice: 'nope' \(choose from"),
    ("sample-unknown-class", lambda f, t: _sample_cmd(t, "--class", "zebra"),
     r"^error: unknown class 'zebra': choose from airplane, .* or 'any'$"),
    ("sample-malformed-repo-id", lambda f, t: _sample_cmd(t, "--model", "bad id!/x"),
     r"^error: 'bad id!/x' is neither an existing model folder nor a Hub repo id"),
    ("sample-path-traversal-model", lambda f, t: _sample_cmd(t, "--model", "../../../../../../../etc"),
     r"^error: '../../../../../../../etc' .* holds no diffusers UNet config"),
    ("sample-model-is-a-file", lambda f, t: _sample_cmd(t, "--model", f["gray"]), r"^error: '.*gray.png' is a file, not a model folder"),
    ("sample-pickle-only-folder", lambda f, t: _sample_cmd(t, "--model", _model_folder(t, _pickle_only)),
     r"^error: '.*model' ships only a pickle checkpoint .* pass --allow-pickle"),
    ("sample-corrupt-safetensors", lambda f, t: _sample_cmd(t, "--model", _model_folder(t, _corrupt_safetensors)),
     r"^error: The weights of '.*model' .* could not be read .* corrupt or incomplete"),
    ("speed-unknown-sampler", lambda f, t: ["evaluate", "speed", "--samplers", "ddim,euler-x", "--device", "cpu"],
     r"^error: unknown sampler euler-x: choose from"),
    ("speed-steps-0", lambda f, t: ["evaluate", "speed", "--steps", "0", "--device", "cpu"],
     r"^error: Steps must be a whole number from 1 to 1000, got 0$"),
    ("fid-nag-scale-NaN", lambda f, t: ["evaluate", "fid", "--method", "nag", "--nag-scale", "nan", "--n", "2"],
     r"^error: Noise Awareness Guidance weight must be a number from 0 to 20, got nan$"),
    ("generation-es-lambda-NaN", lambda f, t: ["evaluate", "generation", "--es-lambda", "nan", "--json", t / "g.json"],
     r"^error: Epsilon-scaling factor must be a number from 0.98 to 1.02, got nan$"),
    ("generation-unknown-sampler", lambda f, t: ["evaluate", "generation", "--samplers", "foo", "--json", t / "g.json"],
     r"^error: unknown sampler foo: choose from"),
    ("restoration-sigma-y-NaN", lambda f, t: ["evaluate", "restoration", "--sigma-y", "nan", "--json", t / "r.json"],
     r"^error: Measurement noise sigma_y must be a number from 0 to 0.2, got nan$"),
    ("build-lut-steps-text", lambda f, t: ["build-lut", "--steps", "abc"],
     r"^error: --steps takes comma-separated whole numbers, got 'abc'$"),
    ("card-no-training-record", lambda f, t: ["card", "--folder", "../../../etc", "--command", "x"],
     r"^error: ../../../etc holds no training record"),
]


@pytest.mark.parametrize("row, make, message", CLI_REFUSED, ids=[r[0] for r in CLI_REFUSED])
def test_cli_refuses(files, tmp_path, capsys, row, make, message):
    import re

    rc, err, _ = run_cli(make(files, tmp_path), capsys)
    assert rc == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err                       # one line says what is wrong
    assert re.search(message, errors[0]), errors[0]


@pytest.mark.parametrize("name", ACCEPTED)
def test_cli_restore_accepts(files, tmp_path, capsys, name):
    rc, err, out = run_cli(_restore_cmd(files, tmp_path, files[name]), capsys)
    assert rc == 0, err
    ref = np.asarray(Image.open(tmp_path / "r" / f"{files[name].stem}_reference.png").convert("RGB"))
    expected_reference(name, ref, out, files)


def test_cli_restore_with_a_drawn_mask(files, tmp_path, capsys):
    """--mask: white pixels are the missing ones (was: the file's raw array taken as a keep-mask)."""
    rc, err, out = run_cli(_restore_cmd(files, tmp_path, CAT, "--mask", files["mask_square"], task="inpaint"), capsys)
    assert rc == 0, err
    measured = np.asarray(Image.open(tmp_path / "r" / "cifar10_cat_inpaint_measured.png").convert("RGB")).astype(int)
    ref = np.asarray(Image.open(tmp_path / "r" / "cifar10_cat_reference.png").convert("RGB")).astype(int)
    inside = measured[10:22, 10:22]                  # the square (40 px file -> 32 px model) is missing: grey
    assert np.abs(inside - 127).max() <= 1 and not np.array_equal(ref[10:22, 10:22], inside)
    assert np.array_equal(measured[:6], ref[:6])     # the border is kept


def test_cli_refusal_in_a_real_process(files, tmp_path):
    """The exit status and stderr as a shell sees them: status 2, one error line, no traceback."""
    import os
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "noisecorr_app", "restore", "--task", "sr4", "--input",
                        str(files["bomb"]), "--out", str(tmp_path / "o"), "--device", "cpu"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == "error: the image is too large (over 40,000,000 pixels)"


# -- and the server kept serving -------------------------------------------------------------------------
def test_server_still_serves_the_same_request_identically(server, client):
    """Last in this module: after every bad row above, the request made first is answered again,
    pixel for pixel."""
    after = _pixels_of(client.predict(*GOOD_GENERATE, api_name="/generate")[1:3])
    assert all(np.array_equal(a, b) for a, b in zip(server["before"], after))
    from noisecorr_app.images import CAPTION_HEIGHT

    assert after[0].shape == (128 + CAPTION_HEIGHT, 128, 3)      # one image and its leftover-noise caption
