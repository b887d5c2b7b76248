"""The restoration tabs as plain functions: an image and task settings -> the measurement y ->
DDNM (baseline) and IterProj-NLC (corrected) from the same seed -> images, PSNR/SSIM against
the reference, measurement consistency, plot data and a download bundle. No Gradio here."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..evaluation.metrics import psnr, ssim
from ..images import prepare_image, to_pil
from ..methods import level_reader_for, restoration_correction, restoration_settings
from ..restoration.methods import degrade, restore
from ..restoration.operators import Inpainting, make_operator, mask_from_image
from ..restoration.tasks import RESTORATION_METHODS, SIGMA_Y, TABS
from ..settings import STEPS
from . import limits
from .common import RESTORE_SIDE, as_int, interruptible, scale_for, side_by_side, write_bundle
from .plots import consistency_frame, eps_frame, sigma_frame
from .state import restoration_plan

MAX_STEPS = 200
EDITOR_SIDE = 256


@dataclass
class RestoreRequest:
    tab: str
    task: str
    settings: dict               # what the operator was built from (JSON-friendly)
    sigma_y: float
    steps: int
    seed: int
    note: str | None = None      # what prepare_image did to the upload
    extra: dict = field(default_factory=dict)


def model_size(model) -> int:
    c, h, w = model.sample_shape
    if h != w:
        raise ValueError(f"restoration needs a square model, this one makes {w}x{h} images")
    return h


def load_reference(image, size: int):
    """The user's image -> (1, 3, size, size) in [-1, 1] and a note; ValueError if missing or unreadable."""
    if image is None or (isinstance(image, str) and not image.strip()):
        raise ValueError("No image: upload one or pick an example first.")
    return prepare_image(image, size)


def drawn_layers(editor) -> list:
    """The stroke layers of a gr.ImageEditor value ({'background', 'layers', 'composite'})."""
    if not editor:
        return []
    layers = editor.get("layers") if isinstance(editor, dict) else None
    return [layer for layer in (layers or []) if layer is not None]


def has_strokes(editor) -> bool:
    for layer in drawn_layers(editor):
        a = np.asarray(layer.convert("RGBA"))[..., 3] if hasattr(layer, "convert") else np.asarray(layer)
        if a.ndim == 3:
            a = a[..., -1]
        if (a > 127).any():
            return True
    return False


def drawn_mask(editor, size: int) -> torch.Tensor:
    """Keep-mask (size, size) from the editor's stroke layers: any stroke pixel is missing."""
    layers = drawn_layers(editor)
    if not layers or not has_strokes(editor):
        raise ValueError("Nothing is drawn: paint over the pixels to fill in with the brush, "
                         "or choose a preset mask (box, random, half).")
    keep = torch.ones(size, size, dtype=torch.bool)
    for layer in layers:
        keep &= mask_from_image(layer, size)
    return keep


def parse_restore(model, tab: str, image, sigma_y, steps, seed, *, drawing=None, **values):
    """Validate and build: (request, reference x, operator). ``values``: the task's own settings by key
    (``restoration.tasks``). ValueError with a message for the user."""
    if tab not in TABS:
        raise ValueError(f"unknown restoration tab '{tab}'")
    task = TABS[tab]
    size = model_size(model)
    sigma_y = SIGMA_Y.parse(sigma_y)
    steps = STEPS.narrowed(MAX_STEPS).parse(steps)
    check_restore_cost(model, steps)
    seed = as_int(seed, "seed", 0, 2 ** 31 - 1)
    settings = task.operator_settings({p.key: p.parse(values.get(p.key)) for p in task.params})
    op_kw = dict(settings)
    if task.name == "sr" and size % settings["factor"]:
        raise ValueError(f"super-resolution x{settings['factor']} needs an image side divisible by "
                         f"{settings['factor']}; the model makes {size}x{size}")
    if task.name == "inpaint":
        op_kw = {"mask": drawn_mask(drawing, size)} if settings["mask"] == "drawn" else {**settings, "seed": seed}
    x, note = load_reference(image, size)
    op = make_operator(task.name, size, model.sample_shape[0], **op_kw)
    if isinstance(op, Inpainting):
        settings["kept_fraction"] = round(op.kept_fraction, 4)
    return RestoreRequest(tab, task.name, settings, sigma_y, steps, seed, note), x, op


def check_restore_cost(model, steps: int):
    """Both methods' network evaluations within one request's budget (``limits``)."""
    from ..methods import METHODS

    inner = RESTORATION_METHODS[restoration_plan(model)[0]].inner
    limits.check_cost(model, steps * (1 + (METHODS[inner].nfe if inner else 1)))


def corrected_setup(model):
    """(method, inner correction) for the corrected run."""
    method, _ = restoration_plan(model)
    return method, restoration_correction(method, model)


def needs_exclusive_restore(model) -> bool:
    """Whether the corrected method's inner correction reads features through a forward hook (NLC's r_theta)."""
    from ..methods import METHODS

    inner = RESTORATION_METHODS[restoration_plan(model)[0]].inner
    return inner is not None and METHODS[inner].exclusive


def run_restore(model, req: RestoreRequest, x, op, on_event=None, stop=None) -> dict:
    """Degrade x, then restore with both methods; ``on_event((run, record))`` after every step; once
    ``stop`` (a threading.Event) is set, they end at their next network evaluation.
    With a noise-level estimator for the model, every record also gets its reading of the state
    entering the step (``extras['sigma_est']``), for the scheduled-against-estimated plot; it only
    reads the states, so the restorations are the library's own."""
    y = degrade(op, x.to(model.device), req.sigma_y, seed=req.seed)
    method, correction = corrected_setup(model)
    estimator = level_reader_for(model)
    net = interruptible(model, stop)
    jobs = {}
    for run, m, corr in (("baseline", "ddnm", None), ("corrected", method, correction)):
        def cb(rec, run=run):
            if estimator is not None:       # restore() stores the record after this callback
                rec.extras["sigma_est"] = estimator.estimate(rec.x).detach().cpu()
            if on_event:
                on_event((run, rec))
        knobs = restoration_settings(model, m, req.steps)   # the method's validated settings for this model and budget
        jobs[run] = lambda m=m, corr=corr, cb=cb, knobs=knobs: restore(
            net, op, y, method=m, steps=req.steps, seed=req.seed, sigma_y=req.sigma_y, correction=corr,
            progress=cb, **knobs)
    out = {"y": y, **side_by_side(jobs, model.device)}
    out["methods"] = {"baseline": "ddnm", "corrected": method}
    return out


def preview(model, x0):
    """The first image's x0 estimate as shown in the tab."""
    return _show(model, x0[:1].clamp(-1, 1))


def _show(model, t):
    """(1, C, H, W) in [-1, 1] -> PIL, upscaled with nearest neighbour to about RESTORE_SIDE pixels."""
    size = model_size(model)
    side = size * scale_for(size, RESTORE_SIDE)
    return to_pil(t)[0].resize((side, side), 0)


def _quality(out: torch.Tensor, ref: torch.Tensor) -> dict:
    ref = ref.to(out.device, out.dtype)
    try:
        s = float(ssim(out, ref).mean())
    except ValueError:            # smaller than SSIM's 11x11 window
        s = None
    return {"psnr": float(psnr(out, ref).mean()), "ssim": s}


def _fmt(v, spec):
    return "n/a" if v is None else format(v, spec)


def metrics(req: RestoreRequest, x, op, res: dict) -> dict:
    view = op.view(res["y"]).clamp(-1, 1)
    m = {"degraded input (shown)": _quality(view, x)}
    for run in ("baseline", "corrected"):
        r = res[run]
        m[run] = {**_quality(r.images, x), "consistency": float(r.consistency.mean()),
                  "nfe_per_image": r.nfe_per_image, "seconds": round(r.seconds, 3), "method": res["methods"][run]}
    return m


def metrics_markdown(req: RestoreRequest, m: dict) -> str:
    b, c = m["baseline"], m["corrected"]
    d = m["degraded input (shown)"]
    names = {k: m.title for k, m in RESTORATION_METHODS.items()}
    head = f"| | degraded input | baseline: {names[b['method']]} | corrected: {names[c['method']]} |"
    lines = [head, "|---|---|---|---|",
             f"| closeness to your image, PSNR (dB) ↑ | {d['psnr']:.2f} | {b['psnr']:.2f} | {c['psnr']:.2f} |",
             f"| similarity of structure, SSIM ↑ | {_fmt(d['ssim'], '.4f')} | {_fmt(b['ssim'], '.4f')} | "
             f"{_fmt(c['ssim'], '.4f')} |",
             f"| mismatch with the measurement (consistency), \\|\\|A x − y\\|\\| ↓ | – | {b['consistency']:.2e} | "
             f"{c['consistency']:.2e} |",
             f"| network evaluations per image | – | {b['nfe_per_image']:g} | {c['nfe_per_image']:g} |",
             f"| seconds | – | {b['seconds']:.1f} | {c['seconds']:.1f} |"]
    settings = ", ".join(f"{v:.0%} of the pixels kept" if k == "kept_fraction" else f"{k} {v}"
                         for k, v in req.settings.items())
    desc = (f"{TABS[req.tab].title}" + (f" ({settings})" if settings else "") + f", measurement noise σ_y = {req.sigma_y:g}, "
            f"{req.steps} steps, seed {req.seed}. PSNR/SSIM against the reference (your image at the model's resolution).")
    if req.note:
        desc += f" Input: {req.note}."
    shown = (f"The degraded input is {TABS[req.tab].shown_as}. PSNR and SSIM reward being close on average: "
             f"a blurry or grey picture that sits between all plausible answers can score higher than a sharp, "
             f"plausible one whose details differ from your image.")
    return "\n".join([outcome(names, b, c), "", desc, "", *lines, "", shown])


def outcome(names: dict, b: dict, c: dict) -> str:
    """One sentence with the measured outcome, whichever way it went."""
    diff = c["psnr"] - b["psnr"]
    if abs(diff) < 0.05:
        verdict = f"about the same PSNR as {names[b['method']]}"
    else:
        verdict = f"{abs(diff):.2f} dB {'higher' if diff > 0 else 'lower'} PSNR than {names[b['method']]}"
    return f"**{names[c['method']]} scores {verdict}** ({c['psnr']:.2f} against {b['psnr']:.2f} dB) on this image."


def restore_outputs(model, req: RestoreRequest, x, op, res: dict) -> dict:
    m = metrics(req, x, op, res)
    labels = {run: f"{run} ({RESTORATION_METHODS[res['methods'][run]].title})" for run in ("baseline", "corrected")}
    recs = {labels[run]: res[run].records for run in ("baseline", "corrected")}
    view = op.view(res["y"]).clamp(-1, 1)
    native = {"reference": to_pil(x)[0], "degraded": to_pil(view)[0],
              f"baseline_{res['methods']['baseline']}": to_pil(res["baseline"].images)[0],
              f"corrected_{res['methods']['corrected']}": to_pil(res["corrected"].images)[0]}
    meta = {"tab": req.tab, "model": model.name, "request": {"task": req.task, "settings": req.settings,
            "sigma_y": req.sigma_y, "steps": req.steps, "seed": req.seed, "input_note": req.note},
            "metrics": m, "traces": {run: res[run].trace(per_image=True) for run in ("baseline", "corrected")}}
    return {"reference": _show(model, x), "degraded": _show(model, view),
            "baseline": _show(model, res["baseline"].images), "corrected": _show(model, res["corrected"].images),
            "metrics": metrics_markdown(req, m), "sigma": sigma_frame(recs), "eps": eps_frame(recs),
            "consistency": consistency_frame(recs),
            "bundle": write_bundle(req.tab, native, meta), "meta": meta}


def editor_value(model, image) -> dict | None:
    """The drawing canvas for an image: the reference at model resolution, upscaled to ~256 px."""
    size = model_size(model)
    x, _ = load_reference(image, size)
    big = to_pil(x)[0]
    f = max(1, EDITOR_SIDE // size)
    big = big.resize((size * f, size * f), 0)
    return {"background": big, "layers": [], "composite": big}
