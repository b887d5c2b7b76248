"""One restoration tab (super-resolution, inpainting, deblur, colorize, compressive sensing): its
widgets and its endpoint, named after the tab (api_name "super_resolution", ...)."""
from __future__ import annotations

from pathlib import Path

import gradio as gr

from . import inputs as checked
from .common import GPU, GPU_SECONDS
from .plots import CONSISTENCY_Y
from ..restoration.tasks import RESTORE_STEPS, SIGMA_Y as NOISE, SIGMA_Y_SHOWN, TABS
from .plots import EPS_Y, SIGMA_Y
from ..settings import STEPS
from .restore import EDITOR_SIDE, MAX_STEPS, check_restore_cost, editor_value, needs_exclusive_restore, parse_restore, preview, \
    restore_outputs, run_restore
from .state import restoration_plan
from .wiring import SAMPLING, named, param_widget, seed_box, png, run_streamed, session_model, user_error

EXAMPLES = sorted((Path(__file__).parent / "examples").glob("*.png"))



# Plots start with no value: one that starts as an empty DataFrame draws no lines when a result
# arrives (Gradio 6.31 in chromium: axes but invisible lines and no legend).
def sigma_plot(label="Noise level per step: scheduled vs estimated (log10 sigma)"):
    return gr.LinePlot(None, x="step", y=SIGMA_Y, color="series", color_title="run",
                       label=label, x_title="step", y_title="log10 sigma")


def eps_plot(label="||eps|| / sqrt(n) per step (1 = the network sees the level it was told)"):
    return gr.LinePlot(None, x="step", y=EPS_Y, color="series", color_title="run",
                       label=label, x_title="step", y_title="||eps||/sqrt(n)")


def precheck(store):
    """The endpoint's check of a request's raw values before it is queued (``limits.RequestLimits``): its cost."""
    def check(values: dict):
        model = store.loaded(values.get("key"))
        if model is not None:
            check_restore_cost(model, STEPS.narrowed(MAX_STEPS).parse(values.get("steps")))
    return check


def build(store, model_key, model, concurrency: int, tab: str) -> dict:
    """The tab's widgets under the current gr.Tab; returns those the model picker updates."""
    task = TABS[tab]
    _, plan = restoration_plan(model)
    gr.Markdown(task.description)
    plan_md = gr.Markdown(plan)
    with gr.Row():
        with gr.Column(scale=1, min_width=280):
            image = checked.ImageFile(type="filepath", label="Image (upload, or pick an example below)",
                                  sources=["upload", "clipboard"], height=220, elem_id=f"{tab}-input")
            gr.Examples([[str(p)] for p in EXAMPLES], inputs=[image], label="Examples",
                        example_labels=[p.stem.replace("_", " ") for p in EXAMPLES], examples_per_page=12)
            settings = {p.key: param_widget(p) for p in task.params}
            drawing = None
            if task.name == "inpaint":
                drawing = checked.ImageEditor(type="pil", image_mode="RGBA", sources=[], layers=False, transforms=(),
                                              brush=gr.Brush(colors=["#ff00ff"], color_mode="fixed", default_size=16),
                                              canvas_size=(EDITOR_SIDE, EDITOR_SIDE), format="png",
                                              label="Paint the pixels to fill in (used when the mask is 'drawn')")
                drawing.short_name = "Drawing"
            sigma_y = param_widget(NOISE, SIGMA_Y_SHOWN)
            steps = checked.Slider(1, MAX_STEPS, value=RESTORE_STEPS, step=1, label="Steps (network evaluations per method)",
                                   info="more steps: slower, usually sharper")
            seed = seed_box()
            go = gr.Button("Restore", variant="primary")
        with gr.Column(scale=2):
            with gr.Row():
                ref = gr.Image(label="Reference (model resolution)", format="png", type="pil")
                degraded = gr.Image(label="Degraded input", format="png", type="pil", elem_id=f"{tab}-degraded")
            slider = gr.ImageSlider(label="baseline | corrected (drag)", format="png", type="pil")
            with gr.Row():
                base = gr.Image(label="Baseline", format="png", type="pil", elem_id=f"{tab}-baseline")
                fixed = gr.Image(label="Corrected", format="png", type="pil", elem_id=f"{tab}-corrected")
            metrics = gr.Markdown(elem_id=f"{tab}-metrics")
            sig = sigma_plot()        # full width: side by side, Vega clipped the plots to nothing
            eps = eps_plot()
            cons = gr.LinePlot(None, x="step", color_title="run",
                               y=CONSISTENCY_Y, color="series", x_title="step",
                               y_title="log10 ||A x0 - y||", label="Measurement consistency of each step's x0")
            bundle = gr.File(label="Download: images (PNG) and the run's settings and traces (zip)")

    names = list(settings)

    def run(key, img, *values, progress=gr.Progress()):
        model = session_model(store, key)
        n = len(names)
        kw = dict(zip(names, values[:n]))
        if drawing is not None:
            kw["drawing"] = values[n]
            n += 1
        sy, n_steps, seed_value = values[n:n + 3]
        try:
            req, x, op = parse_restore(model, tab, img, sy, n_steps, seed_value, **kw)
        except ValueError as e:
            raise user_error(e) from None
        with store.run_lock(model).hold(needs_exclusive_restore(model)):
            res = yield from run_streamed(
                run_restore, (model, req, x, op), 2 * req.steps, progress, "restoring",
                lambda r, rec: {base if r == "baseline" else fixed: png(preview(model, rec.x0), "preview")})
        out = restore_outputs(model, req, x, op, res)
        b, c = png(out["baseline"], "baseline"), png(out["corrected"], "corrected")
        yield png(out["reference"], "reference"), png(out["degraded"], "degraded"), (b, c), b, c, out["metrics"], \
            out["sigma"], out["eps"], out["consistency"], out["bundle"]

    inputs = [model_key, image, *settings.values(), *([drawing] if drawing is not None else []), sigma_y, steps, seed]
    api = ["key", "image", *settings, *(["drawing"] if drawing is not None else []), "sigma_y", "steps", "seed"]
    go.click(GPU(duration=GPU_SECONDS)(named(run, api)), inputs, [ref, degraded, slider, base, fixed, metrics, sig, eps, cons, bundle],
             api_name=tab, concurrency_id=SAMPLING, concurrency_limit=concurrency)

    if drawing is not None:
        def fill_editor(key, img):
            if not img:
                return None
            try:
                value = editor_value(session_model(store, key), img)
                return {k: png(v, k) if k != "layers" else v for k, v in value.items()}
            except ValueError as e:
                gr.Warning(str(e))
                return None

        image.change(fill_editor, [model_key, image], drawing, api_visibility="private")
    return {"plan": plan_md, "precheck": precheck(store)}
