"""The Gradio app: a model picker and six tabs (Generate and five restorations), each comparing
a baseline with a noise-shift correction from the same seed. ``build_demo()`` makes the Blocks,
``launch()`` serves it with the app's limits (``limits``: request cost, queue per client, body and
upload sizes, old files deleted)."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import gradio as gr

from ..restoration.tasks import TABS
from . import limits, model_panel, tab_generate, tab_restore
from .inputs import input_name
from .state import DEFAULT_KEY, ModelStore, describe

EXPLAINED = """A diffusion model makes an image by removing noise in steps, following a schedule of how much
noise should be left after each one. In practice some images keep more noise than the schedule says
(*noise shift*) and end covered in a fine speckle. **Generate** runs the plain sampler (left) and a
correction (right) from the same random start: the number under each image is the noise still in it,
as a noise-level reader measures it; clean photos read about 0.010, and red marks an image noisier
than 9 in 10 real photos. The plots follow the noise step by step. Below: the noise left in each of
2,000 images of the plain sampler and of the corrections (10 steps), against the band of real photos.
The restoration tabs damage your image (blur, missing pixels, grey...) and compare two ways of
restoring it."""
log = logging.getLogger("noisecorr_app.ui")
NOISE_PICTURE = Path(__file__).resolve().parents[2] / "docs" / "images" / "leftover_ddim_10.png"

INTRO = """# noisecorr: noise-shift corrections for diffusion sampling
While a diffusion sampler runs, the noise actually left in the image drifts from the level the schedule
assumes (*noise shift*). Every tab runs a **baseline** and a **corrected** sampler from the **same seed**,
side by side, with the scheduled and the estimated noise level of each step on one plot.
Images are shown enlarged with nearest-neighbour pixels and sent as lossless PNG, so PSNR/SSIM describe
what you see."""


def default_concurrency(model) -> int:
    """Sampling requests run at once: one on a CPU (two would only share its cores), two on a GPU."""
    env = os.environ.get("NOISECORR_CONCURRENCY")
    if env:
        return max(1, int(env))
    return 2 if model is not None and model.device.type != "cpu" else 1


class Page(gr.Blocks):
    """gr.Blocks whose answers to malformed API calls are one sentence: too few values, or a value that is
    not of its input's form (a string for an image, a number for a drawing), where Gradio would answer
    with its validation text, component reprs or a "Could not preprocess" paragraph."""

    def validate_inputs(self, block_fn, inputs):
        if len(inputs) < len(block_fn.inputs):
            raise gr.Error(f"This endpoint takes {len(block_fn.inputs)} values, got {len(inputs)}.",
                           print_exception=False)

    async def preprocess_data(self, block_fn, inputs, state, explicit_call=False):
        from gradio.exceptions import ComponentProcessingError
        from pydantic import ValidationError

        self.validate_inputs(block_fn, inputs)
        for block, value in zip(block_fn.inputs, inputs):
            model = getattr(block, "data_model", None)
            if model is None or value is None or getattr(block, "stateful", False):
                continue
            try:
                model.model_validate(value)
            except ValidationError:
                raise gr.Error(f"{input_name(block)} is not in the form this input takes (for an image: an "
                               f"uploaded file, as gradio_client's handle_file sends it).", print_exception=False) from None
        try:
            return await super().preprocess_data(block_fn, inputs, state, explicit_call)
        except ComponentProcessingError as e:     # a reader failed in a way no input check foresaw
            log.warning("input could not be read: %s", str(e).splitlines()[0][:200])
            raise gr.Error("An input could not be read: check its type (numbers as numbers, images as uploaded "
                           "files).", print_exception=False) from None


def build_demo(model_source=None, device=None) -> gr.Blocks:
    """The Blocks app, queued. model_source: the server's default model (a folder or Hub id chosen
    by whoever runs the server; None = the embedded default)."""
    store = ModelStore(model_source, device=device)
    model = store.load_default()
    concurrency = default_concurrency(model)
    header = describe(model, store.default_error)

    with Page(title="noisecorr: noise-shift corrections for diffusion sampling") as demo:
        gr.Markdown(INTRO)
        with gr.Accordion("What am I looking at?", open=False):
            gr.Markdown(EXPLAINED)
            if NOISE_PICTURE.exists():
                gr.Image(str(NOISE_PICTURE), show_label=False, interactive=False, format="png",
                         label="Noise left in each of 2,000 images")
        model_key = gr.State(DEFAULT_KEY)
        panel = model_panel.build(store, model)
        model_md = gr.Markdown(header, elem_id="model-info")
        with gr.Tabs():
            with gr.Tab("Generate", id="generate"):
                gen = tab_generate.build(store, model_key, model, concurrency)
            plans, demo.prechecks = [], {"generate": gen["precheck"]}
            for tab, task in TABS.items():
                with gr.Tab(task.title, id=tab):
                    built = tab_restore.build(store, model_key, model, concurrency, tab)
                plans.append(built["plan"])
                demo.prechecks[tab] = built["precheck"]

        model_panel.wire(store, panel, model_key, model_md, gen, plans, concurrency)
    demo.queue(default_concurrency_limit=concurrency, max_size=limits.QUEUE_MAX)
    return demo


def launch(demo: gr.Blocks, **kw):
    """Serve with the app's limits; keyword arguments override (tests pass prevent_thread_lock). Gradio's own
    GRADIO_SERVER_NAME / GRADIO_SERVER_PORT come first: a Space sets them (0.0.0.0) and must be obeyed."""
    from starlette.middleware import Middleware

    env = os.environ.get
    opts = dict(server_name=env("GRADIO_SERVER_NAME") or env("HOST", "127.0.0.1"),
                server_port=int(env("GRADIO_SERVER_PORT") or env("PORT", 7860)),
                max_file_size=limits.MAX_FILE_SIZE, show_error=True,
                app_kwargs={"middleware": [Middleware(limits.RequestLimits, blocks=demo)]})
    opts.update(kw)
    every, age = limits.cache_schedule()
    demo.sweeper = limits.start_sweeper(lambda: _served_folders(), lambda: _kept_files(demo), every, age)
    return demo.launch(**opts)


def _served_folders() -> list:
    """Where uploads and results land: Gradio's cache folder and the download bundles'."""
    from gradio.utils import get_upload_folder

    from .common import BUNDLE_DIR

    return [get_upload_folder(), BUNDLE_DIR]


def _kept_files(demo) -> set:
    """The page's own pictures (the first comparison, the examples): Gradio marks them to keep."""
    kept = set()
    for block in demo.blocks.values():
        kept |= set(getattr(block, "keep_in_cache", ()))
    return kept
