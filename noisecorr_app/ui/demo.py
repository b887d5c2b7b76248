"""The Gradio app. For now one tab: generate with a baseline and a corrected run side by side.

Both runs use the same seeds, so any difference comes from the correction alone. Images leave
as PNG (Gradio's default WebP is lossy) and are upscaled with nearest neighbour.
"""
from __future__ import annotations

import pandas as pd

import gradio as gr

from ..images import grid, to_pil
from ..models.loading import ModelLoadError, load_model
from ..sampling.corrections import Correction, EpsScaling
from ..sampling.run import sample
from ..sampling.samplers import SAMPLERS

CORRECTIONS = {"Epsilon scaling (training-free)": "es", "None (baseline twice)": "none"}


def _correction(key: str, lam: float):
    return EpsScaling(lam) if key == "es" else Correction()


def build_demo(model_source=None) -> gr.Blocks:
    try:
        model = load_model(model_source)
        status = f"Model: **{model.name}** ({model.sample_shape[1]}x{model.sample_shape[2]}, device {model.device})"
    except ModelLoadError as e:
        model, status = None, f"**Model not available:** {e}"
    classes = ["any class"] + list(model.class_names or []) if model is not None else ["any class"]

    def generate(sampler, steps, seed, n, cls, corr, lam, progress=gr.Progress()):
        if model is None:
            raise gr.Error(status)
        label = None if cls == "any class" else classes.index(cls) - 1
        runs = {}
        for name, correction in (("baseline", Correction()), ("corrected", _correction(CORRECTIONS[corr], lam))):
            bar = progress.tqdm(range(int(steps)), desc=f"{name} ({sampler}, {int(steps)} steps)")
            it = iter(bar)
            try:
                runs[name] = sample(model, sampler=sampler, steps=int(steps), n=int(n), seed=int(seed),
                                    labels=None if label is None else [label] * int(n), correction=correction,
                                    progress=lambda r: next(it, None))
            except ValueError as e:
                raise gr.Error(str(e))
        rows = [{"step": r.step, "value": float(r.eps_norm.mean()), "run": name}
                for name, res in runs.items() for r in res.records]
        stats = " | ".join(f"**{k}**: {v.nfe_per_image:g} NFE/image, {v.seconds:.1f} s" for k, v in runs.items())
        scale = max(1, 128 // model.sample_shape[-1])
        return (grid(to_pil(runs["baseline"].images), scale=scale), grid(to_pil(runs["corrected"].images), scale=scale),
                pd.DataFrame(rows), stats)

    with gr.Blocks(title="noisecorr: noise-shift corrections for diffusion sampling") as demo:
        gr.Markdown("# noisecorr\nCompare a diffusion sampler with and without a noise-shift correction, "
                    "from the same seed.\n\n" + status)
        with gr.Tab("Generate"):
            with gr.Row():
                with gr.Column(scale=1):
                    sampler = gr.Dropdown(list(SAMPLERS), value="ddim", label="Sampler")
                    steps = gr.Slider(1, 200, value=20, step=1, label="Steps")
                    seed = gr.Number(0, precision=0, label="Seed")
                    n = gr.Slider(1, 16, value=4, step=1, label="Images")
                    cls = gr.Dropdown(classes, value="any class", label="Class")
                    corr = gr.Dropdown(list(CORRECTIONS), value=list(CORRECTIONS)[0], label="Correction")
                    lam = gr.Slider(1.0, 1.05, value=1.005, step=0.001, label="Epsilon-scaling factor")
                    go = gr.Button("Generate", variant="primary")
                with gr.Column(scale=2):
                    with gr.Row():
                        base = gr.Image(label="Baseline", format="png", type="pil")
                        fixed = gr.Image(label="Corrected", format="png", type="pil")
                    plot = gr.LinePlot(x="step", y="value", color="run", title="||eps|| / sqrt(n) per step (1 = on schedule)")
                    stats = gr.Markdown()
            go.click(generate, [sampler, steps, seed, n, cls, corr, lam], [base, fixed, plot, stats], api_name="generate")
    return demo
