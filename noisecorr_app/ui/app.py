"""The Gradio app: a model picker and six tabs (Generate and five restorations), each comparing
a baseline with a noise-shift correction from the same seed. ``build_demo()`` makes the Blocks,
``launch()`` serves it with the app's limits (``limits``: request cost, queue per client, body and
upload sizes, old files deleted)."""
from __future__ import annotations

import os
from pathlib import Path

import logging

import gradio as gr

from ..models.loading import ModelLoadError
from . import inputs as checked, limits, nlc_training, tab_generate, tab_restore
from ..restoration.tasks import TABS
from .state import ANY_CLASS, DEFAULT_KEY, OTHER_KEY, PRESET_IDS, ModelStore, class_choices, correction_choices, \
    default_correction, describe, picker_choices, resolve_choice, restoration_plan
from .wiring import SAMPLING, hub_message, session_model

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
                raise gr.Error(f"{checked.input_name(block)} is not in the form this input takes (for an image: an "
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
        with gr.Accordion("Model", open=model is None):
            with gr.Row():
                choice = checked.Dropdown(picker_choices(store.default_label()), value=DEFAULT_KEY, label="Model",
                                          scale=3)
                repo = gr.Textbox(label="Hub repo id (for 'Another Hub repo id')", placeholder="owner/name",
                                  scale=2)
                load = gr.Button("Load model", scale=1)
            said, offered = nlc_training.status(model)
            nlc_md = gr.Markdown(said, elem_id="nlc-status")
            train = gr.Button("Train NLC for this model", visible=offered, elem_id="train-nlc")
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

        def pick(choice_value, repo_id, key):
            """Load the chosen model for this session; on failure say why and keep the previous one."""
            target = choice_value
            try:
                target = resolve_choice(choice_value, repo_id)
                new = store.get(target)
            except (ValueError, ModelLoadError) as e:
                msg = hub_message(repo_id if choice_value == OTHER_KEY else target, e)
                gr.Warning(msg)
                try:
                    current = describe(store.get(key))
                except (ValueError, ModelLoadError) as e2:
                    current = describe(None, str(e2))
                # the picker goes back to the model still in use, so it does not show the one that failed
                shown = key if key in (DEFAULT_KEY, *PRESET_IDS) else OTHER_KEY
                return [key, f"⚠️ **Could not load that model.** {msg}\n\n{current}", gr.update(value=shown),
                        gr.update(value="" if shown != OTHER_KEY else key)] + [gr.skip()] * (5 + len(plans))
            ok, _ = correction_choices(new)
            said, offered = nlc_training.status(new)
            return ([target, describe(new), gr.skip(), gr.skip(), gr.update(choices=class_choices(new), value=ANY_CLASS),
                     gr.update(choices=ok, value=default_correction(ok, new)), gr.update(value=tab_generate.start_steps(new)),
                     said, gr.update(visible=offered)]
                    + [restoration_plan(new)[1]] * len(plans))

        load.click(pick, [choice, repo, model_key],
                   [model_key, model_md, choice, repo, gen["class"], gen["correction"], gen["steps"], nlc_md, train, *plans],
                   api_name="load_model", concurrency_id="model-loading", concurrency_limit=1)

        def train_nlc(key, progress=gr.Progress(track_tqdm=True)):
            """Data-free NLC for the session's model, within the app's time budget; then NLC is a correction."""
            model = session_model(store, key)
            if not nlc_training.can_train(model):
                raise gr.Error("Training NLC needs a GPU on this server: run the command shown instead.",
                               print_exception=False)
            with store.run_lock(model).hold(exclusive=True):
                steps, plan = nlc_training.train(model)
            ok, _ = correction_choices(model)
            said, offered = nlc_training.status(model)
            done = (f"NLC trained for this model ({steps:,} steps on {plan['pool']:,} of its own images) and ready: "
                    f"pick it under 'Correction to compare with the baseline'.")
            picked = "nlc" if "nlc" in [k for _, k in ok] else default_correction(ok, model)
            return [said or done, gr.update(visible=offered), describe(model), gr.update(choices=ok, value=picked)] \
                + [restoration_plan(model)[1]] * len(plans)

        train.click(train_nlc, [model_key], [nlc_md, train, model_md, gen["correction"], *plans],
                    api_name="train_nlc", concurrency_id=SAMPLING, concurrency_limit=concurrency)
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
