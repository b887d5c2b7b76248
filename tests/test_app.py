"""The app launched in-process on a tiny class-conditional model, driven through gradio_client:
every named endpoint answers with PNG images of the right size, the baseline is exactly the
library's own result for the same seed, plots and metrics are filled, bad input is a message and
the server keeps serving."""
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import save_tiny_model
from PIL import Image

from noisecorr_app.images import CAPTION_HEIGHT

EXAMPLES = Path(__file__).resolve().parents[1] / "noisecorr_app" / "ui" / "examples"
CAT = EXAMPLES / "cifar10_cat.png"
TABS = ["super_resolution", "inpainting", "deblur", "colorize", "compressive_sensing"]
SIDE = 8                     # the tiny model's images; shown 16x (generate: 128 px) and 32x (restore: 256 px)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from noisecorr_app.ui.app import build_demo, launch

    folder = save_tiny_model(tmp_path_factory.mktemp("app") / "model", num_class_embeds=4,
                             extra={"num_classes": 3, "null_class": 3, "null_timestep": 10000,
                                    "class_names": ["a", "b", "c"]})
    demo = build_demo(str(folder), device="cpu")
    launch(demo, prevent_thread_lock=True, server_port=None, quiet=True)
    yield demo, folder
    demo.close()


@pytest.fixture()
def client(served):
    from gradio_client import Client

    return Client(served[0].local_url, verbose=False)


@pytest.fixture(scope="module")
def model(served):
    from noisecorr_app.models.loading import load_model

    return load_model(served[1], device="cpu")


def png(path) -> Image.Image:
    img = Image.open(path)
    assert img.format == "PNG", f"{path} is {img.format}, not PNG"
    return img


def pixels(img) -> np.ndarray:
    return np.asarray(img.convert("RGB"))


def plot_rows(value) -> list:
    """A gr.LinePlot value as gradio_client returns it: {'columns': [...], 'data': [[...], ...]}."""
    assert set(value) >= {"columns", "data"}
    return value["data"]


def test_every_tab_has_a_named_endpoint(client):
    named = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    for name in ["generate", *TABS]:
        assert f"/{name}" in named


def test_generate_streams_and_matches_the_library(client, model):
    from noisecorr_app.images import grid, to_pil
    from noisecorr_app.sampling.run import sample

    job = client.submit("b", "dpmpp", 4, 3, 2, "nag", 3.0, 1.0, 1.005, api_name="/generate")
    slider, base, fixed, metrics, levels, leftover, bundle = job.result(timeout=120)
    assert len(job.outputs()) >= 2                       # x0 previews came before the final result
    a, b = png(base), png(fixed)
    # every image has its leftover-noise reading written in a strip under it (the wavelet reading)
    assert a.size == b.size == (2 * SIDE * 16, SIDE * 16 + CAPTION_HEIGHT)
    assert [png(p).size for p in slider] == [a.size, a.size]
    assert np.array_equal(pixels(png(slider[0])), pixels(a))
    # the baseline is exactly the library's result for the same seeds and class (PNG is lossless)
    with app_threads():
        ref = sample(model, sampler="dpmpp", steps=4, n=2, seed=3, labels=[1, 1]).images
    assert np.array_equal(pixels(a)[:SIDE * 16], pixels(grid(to_pil(ref), scale=16)))
    assert not np.array_equal(pixels(a), pixels(b))      # NAG changed the samples
    assert "| network evaluations per image | 4 | 8 |" in metrics   # NAG: two batched passes per step
    assert levels["type"] == "matplotlib" and levels["plot"].startswith("data:image/png")
    # the tiny model has no trained estimator: the wavelet reading serves the figures
    assert leftover["type"] == "matplotlib" and leftover["plot"].startswith("data:image/png")
    assert "Noise is the noise level read off each image" in metrics
    with zipfile.ZipFile(bundle) as z:
        names = set(z.namelist())
        meta = json.loads(z.read("run.json"))
        assert np.array_equal(pixels(Image.open(z.open("baseline_00.png"))), pixels(to_pil(ref)[0]))
    assert {"baseline_00.png", "baseline_01.png", "corrected_00.png", "corrected_01.png"} <= names
    assert meta["request"]["seed"] == 3 and meta["request"]["method"] == "nag"


def app_threads():
    """The intra-op thread count each of the app's two runs uses (they sample side by side on a
    CPU; another count rounds floats differently, ~1e-5, which can move a pixel by one level)."""
    from noisecorr_app.ui.common import CPU_THREADS, torch_threads

    return torch_threads(max(1, CPU_THREADS // 2))


def _restore_args(tab, image=str(CAT)):
    from gradio_client import handle_file

    settings = {"super_resolution": [4], "inpainting": ["box", None], "deblur": [1.5],
                "colorize": [], "compressive_sensing": [0.5]}[tab]
    return [handle_file(image), *settings, 0.0, 4, 0]


def _library_baseline(model, tab):
    from noisecorr_app.images import prepare_image, to_pil
    from noisecorr_app.restoration.methods import degrade, restore
    from noisecorr_app.restoration.operators import make_operator

    task, kw = {"super_resolution": ("sr", {"factor": 4}), "inpainting": ("inpaint", {"mask": "box", "seed": 0}),
                "deblur": ("deblur", {"sigma": 1.5}), "colorize": ("colorize", {}),
                "compressive_sensing": ("cs", {"ratio": 0.5})}[tab]
    x, _ = prepare_image(str(CAT), SIDE)
    op = make_operator(task, SIDE, 3, **kw)
    with app_threads():
        res = restore(model, op, degrade(op, x, 0.0, seed=0), method="ddnm", steps=4, seed=0)
    return to_pil(res.images)[0].resize((SIDE * 32, SIDE * 32), Image.NEAREST)


@pytest.mark.parametrize("tab", TABS)
def test_restoration_endpoint(client, model, tab):
    job = client.submit(*_restore_args(tab), api_name=f"/{tab}")
    ref, degraded, slider, base, fixed, metrics, sig, eps, cons, bundle = job.result(timeout=120)
    assert len(job.outputs()) >= 2
    for p in (ref, degraded, base, fixed, *slider):
        assert png(p).size == (SIDE * 32, SIDE * 32)
    assert np.array_equal(pixels(png(base)), pixels(_library_baseline(model, tab)))
    assert not np.array_equal(pixels(png(degraded)), pixels(png(ref)))    # the input really was degraded
    assert "PSNR" in metrics and "SSIM" in metrics and "consistency" in metrics
    assert {r[2] for r in plot_rows(cons)} == {"baseline (DDNM)", "corrected (IterProj-NLC)"}
    assert len(plot_rows(eps)) == 8 and len(plot_rows(sig)) > 0
    with zipfile.ZipFile(bundle) as z:
        assert {"reference.png", "degraded.png", "baseline_ddnm.png", "run.json"} <= set(z.namelist())


def _drawing(tmp_path, box):
    """An ImageEditor value as a client sends it: the background and one RGBA stroke layer."""
    from gradio_client import handle_file

    bg = tmp_path / "bg.png"
    Image.open(CAT).resize((256, 256)).save(bg)
    layer = np.zeros((256, 256, 4), np.uint8)
    if box is not None:
        y0, y1, x0, x1 = box
        layer[y0:y1, x0:x1] = (255, 0, 255, 255)
    Image.fromarray(layer, "RGBA").save(tmp_path / "layer.png")
    return {"background": handle_file(str(bg)), "layers": [handle_file(str(tmp_path / "layer.png"))],
            "composite": None}


def test_inpainting_uses_the_drawn_mask(client, tmp_path):
    args = _restore_args("inpainting")
    args[1:3] = ["drawn", _drawing(tmp_path, (64, 192, 64, 192))]      # the middle quarter of the image
    ref, degraded, *_ = client.predict(*args, api_name="/inpainting")
    d = pixels(png(degraded)).astype(int)
    r = pixels(png(ref)).astype(int)
    # the painted square is missing in the degraded view (shown as 0 = mid grey), the rest is kept
    assert np.array_equal(d[:64], r[:64]) and np.abs(d[96:160, 96:160] - 127).max() <= 1


@pytest.mark.parametrize("box, message", [(None, "Nothing is drawn"), ((0, 256, 0, 256), "hides the whole image")])
def test_empty_or_full_drawn_mask_is_a_message(client, tmp_path, box, message):
    from gradio_client.exceptions import AppError

    args = _restore_args("inpainting")
    args[1:3] = ["drawn", _drawing(tmp_path, box)]
    with pytest.raises(AppError, match=message):
        client.predict(*args, api_name="/inpainting")


def test_bad_input_is_a_message_and_the_server_keeps_serving(client, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    not_image = tmp_path / "notes.png"
    not_image.write_text("this is not an image")
    big = tmp_path / "big.png"
    Image.new("L", (9000, 9000)).save(big)                # 81 M pixels: refused before it is decoded
    cases = [
        ((None, 4, 0.0, 4, 0), "/super_resolution", "No image"),
        ((handle_file(str(CAT)), 4, 0.5, 4, 0), "/super_resolution", "sigma_y|maximum|0.2"),
        ((handle_file(str(big)), 4, 0.0, 4, 0), "/super_resolution", "too large|exceeds|pixels"),
        ((handle_file(str(not_image)), 4, 0.0, 4, 0), "/super_resolution", "image"),
        (("b", "ddim", 0, 0, 2, "nag", 3.0, 1.0, 1.005), "/generate", "Steps must be a number from 1 to 200"),
        (("b", "euler-x", 4, 0, 2, "nag", 3.0, 1.0, 1.005), "/generate", "sampler"),
        (("zebra", "ddim", 4, 0, 2, "nag", 3.0, 1.0, 1.005), "/generate", "unknown class"),
        (("b", "ddim", 4, 0, 2, "nope", 3.0, 1.0, 1.005), "/generate", "unknown correction"),
    ]
    for args, api, message in cases:
        with pytest.raises(AppError, match=message):
            client.predict(*args, api_name=api)
    # the next request after all of these is served normally
    out = client.predict("a", "ddim", 2, 0, 1, "es", 3.0, 1.0, 1.01, api_name="/generate")
    assert png(out[1]).size == (SIDE * 16, SIDE * 16 + CAPTION_HEIGHT)


def test_model_picker_says_the_hub_is_unreachable_and_keeps_the_model(client, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")            # no network here: fail at once, not after retries
    text, shown, *_ = client.predict("google/ddpm-cifar10-32", "", api_name="/load_model")
    assert "Hub cannot be reached" in text and "keeps using" in text
    assert "Model:" in text                              # and it still describes the model in use
    shown = shown.get("value") if isinstance(shown, dict) else shown
    assert shown == "default"                            # the picker shows the model in use, not the failed one
    text, *_ = client.predict("other", "../../etc/passwd", api_name="/load_model")
    assert "not a Hub repo id" in text
    out = client.predict("c", "ddim", 2, 0, 1, "es", 3.0, 1.0, 1.01, api_name="/generate")
    assert png(out[1]).size == (SIDE * 16, SIDE * 16 + CAPTION_HEIGHT)


def test_missing_default_model_is_a_message_not_a_crash(tmp_path):
    from noisecorr_app.ui.app import build_demo

    demo = build_demo(str(tmp_path / "nothing-here"), device="cpu")
    text = [b.value for b in demo.blocks.values() if getattr(b, "elem_id", None) == "model-info"][0]
    assert "No model loaded" in text and "nothing-here" in text
