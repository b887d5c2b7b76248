"""The Generate tab's widgets and its endpoint (api_name "generate")."""
from __future__ import annotations

import gradio as gr

from ..methods import FALLBACK_STEPS, METHODS, recommended_run
from ..sampling.samplers import SAMPLERS
from . import inputs as checked
from .common import GPU, GPU_SECONDS
from .generate import FIRST_RUN_IMAGES, MAX_IMAGES, MAX_STEPS, controls, default_value, first_comparison, \
    followed_cfg_scale, followed_value, generate_outputs, method_controls, needs_exclusive, parse_generate, preview, \
    run_generate
from .state import ANY_CLASS, class_choices, correction_choices, default_correction
from .wiring import SAMPLING, named, param_widget, seed_box, png, run_streamed, session_model, user_error


def start_steps(model) -> int:
    """The step count the tab starts at: the model's recommendation (noisecorr.json), else 20."""
    try:
        return min(recommended_run(model)[1], MAX_STEPS) if model is not None else FALLBACK_STEPS
    except ValueError:
        return FALLBACK_STEPS


API = ["key", "class_name", "sampler_name", "n_steps", "seed_value", "n_images", "method"]    # then the controls


def precheck(store):
    """The endpoint's check of a request's raw values before it is queued (``limits.RequestLimits``): its cost."""
    def check(values: dict):
        model = store.loaded(values.get("key"))
        if model is not None:
            parse_generate(model, *[values.get(k) for k in API[1:]], *[values.get(c) for c in controls()])
    return check


def build(store, model_key, model, concurrency: int) -> dict:
    """The tab's widgets under the current gr.Tab; returns those the model picker updates."""
    ok, _ = correction_choices(model)
    first = default_correction(ok, model)
    start = start_steps(model)
    with gr.Row():
        with gr.Column(scale=1, min_width=260):
            cls = checked.Dropdown(class_choices(model), value=ANY_CLASS, label="Class", allow_custom_value=True,
                                   info="what the images should show ('any class': the model chooses)")
            steps = checked.Slider(1, MAX_STEPS, value=start, step=1, label="Steps",
                                   info="denoising steps: fewer is faster and leaves more noise")
            seed = seed_box()
            n = checked.Slider(1, MAX_IMAGES, value=FIRST_RUN_IMAGES, step=1, label="Number of images",
                               info="each run makes this many, from the same starting noise")
            correction = checked.Dropdown(ok, value=first, label="Correction to compare with the baseline",
                                          allow_custom_value=True,
                                          info="run beside the plain sampler (the baseline) from the same seeds")
            with gr.Accordion("Advanced: sampler and weights", open=False):     # research knobs
                sampler = checked.Dropdown(list(SAMPLERS), value="ddim", label="Sampler", allow_custom_value=True,
                                           info="the step rule: DDIM, DDPM, EDM (Heun) or DPM-Solver++")
                shown = method_controls(first) if first else []
                ctrl = {c: param_widget(p, _start_value(first, c, model, start), elem_id=f"gen-{c}",
                                        visible=c == "cfg_scale" or c in shown)
                        for c, p in controls().items()}
            go = gr.Button("Generate", variant="primary")
        # a finished comparison on the tab's own settings, made once at start-up: something to see at once
        pre = first_comparison(model, first, start) or {}
        said = ("*Made when the server started, with the settings shown: press Generate for your own.*\n\n"
                if pre else "")
        with gr.Column(scale=2):
            slider = gr.ImageSlider(value=(pre["baseline"], pre["corrected"]) if pre else None,
                                    label="baseline | corrected (drag)", format="png", type="pil")
            with gr.Row():
                base = gr.Image(pre.get("baseline"), label="Baseline", format="png", type="pil", elem_id="gen-baseline")
                fixed = gr.Image(pre.get("corrected"), label="Corrected", format="png", type="pil",
                                 elem_id="gen-corrected")
            metrics = gr.Markdown(said + pre.get("metrics", ""), elem_id="gen-metrics")
            # the figures carry their own titles: Gradio's label box would cover them
            sig = gr.Plot(pre.get("sigma"), label="Noise at each step, relative to the schedule", show_label=False,
                          format="png", elem_id="gen-levels")
            left = gr.Plot(pre.get("leftover"), label="Noise left in each final image", show_label=False,
                           format="png", elem_id="gen-leftover")
            bundle = gr.File(label="Download: images (PNG) and the run's settings and traces (zip)", elem_id="gen-bundle")

    switched = [c for c in ctrl if c != "cfg_scale"]       # the controls that belong to a method

    def session(key):
        try:                     # the session's model recommends its own settings (noisecorr.json)
            return session_model(store, key)
        except gr.Error:         # it failed to load: its error shows on Generate
            return None

    def show_controls(method, key, n_steps):
        model = session(key)
        return [gr.update(visible=c in method_controls(method), value=_start_value(method, c, model, n_steps))
                if method in METHODS else gr.update(visible=False) for c in switched]

    def follow_steps(method, key, n_steps, *values):
        model = session(key)
        updates = []
        for c, v in zip(switched, values):
            try:
                value = None if model is None or method not in METHODS else followed_value(model, method, c, n_steps, v)
            except (ValueError, TypeError):      # the model recommends nonsense: leave the control
                value = None
            updates.append(gr.update() if value is None else gr.update(value=value))
        return updates

    def follow_class(key, class_name, scale):
        model = session(key)
        value = None if model is None else followed_cfg_scale(model, class_name, scale)
        return gr.update() if value is None else gr.update(value=value)

    outs = [ctrl[c] for c in switched]
    correction.change(show_controls, [correction, model_key, steps], outs, api_visibility="private", queue=False)
    cls.change(follow_class, [model_key, cls, ctrl["cfg_scale"]], [ctrl["cfg_scale"]], api_visibility="private",
               queue=False)
    steps.change(follow_steps, [correction, model_key, steps, *outs], outs, api_visibility="private", queue=False)

    def generate(key, class_name, sampler_name, n_steps, seed_value, n_images, method, *values,
                 progress=gr.Progress()):
        model = session_model(store, key)
        try:
            req = parse_generate(model, class_name, sampler_name, n_steps, seed_value, n_images, method, *values)
        except ValueError as e:
            raise user_error(e) from None
        with store.run_lock(model).hold(needs_exclusive(req.method)):
            runs = yield from run_streamed(
                run_generate, (model, req), 2 * req.steps, progress, "sampling",
                lambda run, rec: {base if run == "baseline" else fixed: png(preview(model, rec.x0), "preview")})
        out = generate_outputs(model, req, runs)
        b, c = png(out["baseline"], "baseline"), png(out["corrected"], "corrected")
        yield (b, c), b, c, out["metrics"], out["sigma"], out["leftover"], out["bundle"]

    names = [*API, *ctrl]
    go.click(GPU(duration=GPU_SECONDS)(named(generate, names)), [model_key, cls, sampler, steps, seed, n, correction, *ctrl.values()],
             [slider, base, fixed, metrics, sig, left, bundle], api_name="generate",
             concurrency_id=SAMPLING, concurrency_limit=concurrency)
    return {"class": cls, "correction": correction, "steps": steps, "precheck": precheck(store)}


def _start_value(method, control, model, steps):
    """A control's value for ``method``: the model's recommendation, or the declared default when the
    model recommends nonsense (its error shows when the run starts). The CFG scale starts off: it
    follows the class (``followed_cfg_scale``)."""
    if control == "cfg_scale":
        return 1.0
    try:
        return default_value(method, control, model, steps) if method else default_value("none", control)
    except ValueError:
        return default_value(method or "none", control)
