"""The Generate tab's widgets and its endpoint (api_name "generate")."""
from __future__ import annotations

import gradio as gr

from ..methods import DEFAULTS, FALLBACK_STEPS, defaults_for, recommended_run
from ..sampling.samplers import SAMPLERS
from . import inputs as checked
from .common import GPU
from .generate import MAX_IMAGES, MAX_STEPS, NAG_METHODS, default_nag_weight, followed_cfg_scale, followed_nag_weight, \
    generate_outputs, nag_key, needs_exclusive, parse_generate, preview, run_generate
from .state import ANY_CLASS, class_choices, correction_choices, default_correction
from .wiring import SAMPLING, png, run_streamed, session_model, user_error


def start_steps(model) -> int:
    """The step count the tab starts at: the model's recommendation (noisecorr.json), else 20."""
    try:
        return min(recommended_run(model)[1], MAX_STEPS) if model is not None else FALLBACK_STEPS
    except ValueError:
        return FALLBACK_STEPS


def build(store, model_key, model, concurrency: int) -> dict:
    """The tab's widgets under the current gr.Tab; returns those the model picker updates."""
    ok, _ = correction_choices(model)
    first = default_correction(ok, model)
    start = start_steps(model)
    with gr.Row():
        with gr.Column(scale=1, min_width=260):
            cls = checked.Dropdown(class_choices(model), value=ANY_CLASS, label="Class", allow_custom_value=True)
            sampler = checked.Dropdown(list(SAMPLERS), value="ddim", label="Sampler", allow_custom_value=True)
            steps = checked.Slider(1, MAX_STEPS, value=start, step=1, label="Steps")
            seed = checked.Number(0, precision=0, minimum=0, label="Seed")
            n = checked.Slider(1, MAX_IMAGES, value=4, step=1, label="Number of images")
            correction = checked.Dropdown(ok, value=first, label="Correction to compare with the baseline",
                                          allow_custom_value=True)
            nag_w = checked.Slider(0, 20, value=default_nag_weight(first or "nag", model, start), step=0.1, label="NAG weight w",
                                   visible=first in NAG_METHODS)
            cfg = checked.Slider(1, 10, value=1, step=0.1, label="CFG scale (1 = off; needs a class)")
            lam = checked.Slider(0.98, 1.02, value=defaults_for(model)["es_lambda"], step=0.001, label="Epsilon-scaling lambda",
                                 visible=first == "es")
            go = gr.Button("Generate", variant="primary")
        with gr.Column(scale=2):
            slider = gr.ImageSlider(label="baseline | corrected (drag)", format="png", type="pil")
            with gr.Row():
                base = gr.Image(label="Baseline", format="png", type="pil", elem_id="gen-baseline")
                fixed = gr.Image(label="Corrected", format="png", type="pil", elem_id="gen-corrected")
            metrics = gr.Markdown(elem_id="gen-metrics")
            # the figures carry their own titles: Gradio's label box would cover them
            sig = gr.Plot(label="Noise at each step, relative to the schedule", show_label=False, format="png",
                          elem_id="gen-levels")
            left = gr.Plot(label="Noise left in each final image", show_label=False, format="png",
                           elem_id="gen-leftover")
            bundle = gr.File(label="Download: images (PNG) and the run's settings and traces (zip)")

    def recommended(key, n_steps):
        try:                     # the session's model recommends its own weights (noisecorr.json)
            model = session_model(store, key)
            return model, defaults_for(model, n_steps)
        except (gr.Error, ValueError, TypeError):   # it failed to load, or recommends nonsense: the papers'
            return None, DEFAULTS

    def show_weights(method, key, n_steps):
        _, d = recommended(key, n_steps)
        return gr.update(visible=method in NAG_METHODS, value=d[nag_key(method)]), \
            gr.update(visible=method == "es", value=d["es_lambda"])

    def follow_steps(method, key, n_steps, w):
        model, _ = recommended(key, n_steps)
        value = None if model is None else followed_nag_weight(model, method, n_steps, w)
        return gr.update() if value is None else gr.update(value=value)

    def follow_class(key, class_name, scale):
        try:
            value = followed_cfg_scale(session_model(store, key), class_name, scale)
        except gr.Error:         # the model failed to load: its error shows on Generate
            value = None
        return gr.update() if value is None else gr.update(value=value)

    correction.change(show_weights, [correction, model_key, steps], [nag_w, lam], api_visibility="private", queue=False)
    cls.change(follow_class, [model_key, cls, cfg], [cfg], api_visibility="private", queue=False)
    steps.change(follow_steps, [correction, model_key, steps, nag_w], [nag_w], api_visibility="private", queue=False)

    @GPU
    def generate(key, class_name, sampler_name, n_steps, seed_value, n_images, method, nag_weight, cfg_scale,
                 es_lambda, progress=gr.Progress()):
        model = session_model(store, key)
        try:
            req = parse_generate(model, class_name, sampler_name, n_steps, seed_value, n_images, method,
                                 nag_weight, cfg_scale, es_lambda)
        except ValueError as e:
            raise user_error(e) from None
        with store.run_lock(model).hold(needs_exclusive(req.method)):
            runs = yield from run_streamed(
                run_generate, (model, req), 2 * req.steps, progress, "sampling",
                lambda run, rec: {base if run == "baseline" else fixed: png(preview(model, rec.x0), "preview")})
        out = generate_outputs(model, req, runs)
        b, c = png(out["baseline"], "baseline"), png(out["corrected"], "corrected")
        yield (b, c), b, c, out["metrics"], out["sigma"], out["leftover"], out["bundle"]

    go.click(generate, [model_key, cls, sampler, steps, seed, n, correction, nag_w, cfg, lam],
             [slider, base, fixed, metrics, sig, left, bundle], api_name="generate",
             concurrency_id=SAMPLING, concurrency_limit=concurrency)
    return {"class": cls, "correction": correction, "steps": steps}
