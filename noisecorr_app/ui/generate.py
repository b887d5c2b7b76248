"""The Generate tab as plain functions: settings -> two runs from the same seeds (baseline and a
correction) -> images, metrics, plot data and a download bundle. No Gradio here."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from ..images import grid, to_pil
from ..methods import METHODS, declared, defaults_for, level_reader_for, method_params, recommended_values, setup, spec
from ..sampling.run import sample
from ..sampling.samplers import NFE_PER_STEP, SAMPLERS
from ..settings import PARAMS, STEPS
from . import limits
from .common import PREVIEW_SIDE, as_int, interruptible, scale_for, side_by_side, write_bundle
from .state import ANY_CLASS, class_index

MAX_STEPS = 200
MAX_IMAGES = 16
FIRST_RUN_IMAGES = 4             # the tab's starting number of images


def controls() -> dict:
    """The tab's setting controls, made from the declarations: one per ``Param.control`` among the
    settings the registered methods read (and the CFG scale), in declaration order; the first
    setting of a control gives its label and range (methods may share one, as both NAG weights do)."""
    out = {}
    for key in method_params():
        p = PARAMS[key]
        if p.control and p.control not in out:
            out[p.control] = p
    return out


def param_for(method: str, control: str) -> str | None:
    """The setting of ``method`` that ``control`` edits, or None (the CFG scale belongs to every run)."""
    if control == "cfg_scale":
        return "cfg_scale"
    return next((k for k in spec(method).params if PARAMS[k].control == control), None)


def method_controls(method: str) -> list[str]:
    """The method-specific controls shown for ``method``."""
    return [c for c in controls() if c != "cfg_scale" and param_for(method, c)]


@dataclass
class GenerateRequest:
    sampler: str
    steps: int
    seed: int
    n: int
    label: int | None
    class_name: str
    method: str
    params: dict                 # the method's settings, resolved (given or the model's recommendation)
    cfg_scale: float
    notes: list


def default_value(method: str, control: str, model=None, steps: int | None = None) -> float:
    """A control's starting value for ``method``: the model's recommendation for ``steps`` steps when it has
    one, else the declared default."""
    key = param_for(method, control) or controls()[control].key
    return (declared() if model is None else defaults_for(model, steps))[key]


def default_nag_weight(method: str, model=None, steps: int | None = None) -> float:
    return default_value(method, "nag_weight", model, steps)


def followed_value(model, method: str, control: str, steps, current) -> float | None:
    """A control's new value when the steps change, or None to leave it. The best weight depends on the
    steps (a model may recommend one per step count): a control still at one of the model's
    recommendations follows the steps; a value the user chose stays."""
    key = param_for(method, control)
    if key is None or control == "cfg_scale":
        return None
    try:
        untouched = float(current) in recommended_values(model, key)
    except (TypeError, ValueError):          # an empty or garbled box: show the recommendation
        untouched = True
    return defaults_for(model, steps)[key] if untouched else None


def followed_nag_weight(model, method: str, steps, current) -> float | None:
    return followed_value(model, method, "nag_weight", steps, current)


def followed_cfg_scale(model, class_name, current) -> float | None:
    """The CFG slider's new value when the class changes, or None to leave it. Picking a class moves a
    slider still at 1 (off) to the model's recommended scale (its noisecorr.json; 1 when it has none);
    going back to 'any class' turns a slider still at that recommendation off again. A scale the user
    chose stays."""
    try:
        label = class_index(model, class_name)
        target = float(defaults_for(model)["cfg_scale"]) if model.supports_null_label else 1.0
        shown = float(current)
    except (TypeError, ValueError):
        return None
    if label is not None and shown == 1.0 and target != 1.0:
        return target
    if label is None and shown == target and target != 1.0:
        return 1.0
    return None


def parse_generate(model, class_name, sampler, steps, seed, n_images, correction, *values) -> GenerateRequest:
    """Validate the tab's inputs (ValueError with a message for the user); ``values`` are the controls'
    (``controls()`` order), None for one not given (the model's recommendation)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler '{sampler}' (choose from {', '.join(SAMPLERS)})")
    if correction not in METHODS or correction == "none":
        raise ValueError(f"unknown correction '{correction}' (choose from "
                         f"{', '.join(m for m in METHODS if m != 'none')})")
    steps = STEPS.narrowed(MAX_STEPS).parse(steps)
    seed = as_int(seed, "seed", 0, 2 ** 31 - 1)
    n = as_int(n_images, "number of images", 1, MAX_IMAGES)
    label = class_index(model, class_name)
    given = dict(zip(controls(), values))
    resolved = defaults_for(model, steps)
    params = {}
    for key in spec(correction).params:
        v = given.get(PARAMS[key].control)
        params[key] = resolved[key] if v is None else PARAMS[key].parse(v)
    cfg = PARAMS["cfg_scale"].parse(given.get("cfg_scale"))          # None: 1, off (it follows the class)
    notes = []
    if cfg != 1 and label is None:
        notes.append("CFG needs a class: with 'any class' it is off (scale 1).")
        cfg = 1.0
    if cfg != 1 and not model.supports_null_label:
        raise ValueError("classifier-free guidance needs a class-conditional model with a null class; set CFG to 1")
    check_cost(model, n, steps, sampler, correction, cfg)
    return GenerateRequest(sampler, steps, seed, n, label, ANY_CLASS if label is None else str(class_name),
                           correction, params, cfg, notes)


def check_cost(model, n: int, steps: int, sampler: str, method: str, cfg: float):
    """Refuse, in one sentence, a request that would hold the server for minutes (both runs counted)."""
    per_step = NFE_PER_STEP.get(sampler, 1.0) * (2 if cfg != 1 else 1)
    limits.check_cost(model, n * steps * per_step * (1 + METHODS[method].nfe))


def run_kwargs(model, req: GenerateRequest) -> tuple[dict, dict]:
    """sample() keyword arguments for the baseline and the corrected run (same seeds and labels).
    Both get the model's noise-level reading for the per-step plot; it only reads the states (nag-est follows
    a reading of its own, ``guide``), so the baseline is the plain sampler."""
    common = dict(sampler=req.sampler, steps=req.steps, n=req.n, seed=req.seed,
                  labels=None if req.label is None else [req.label] * req.n, cfg_scale=req.cfg_scale)
    estimator = level_reader_for(model)
    ms = setup(req.method, model, steps=req.steps, sampler=req.sampler, **req.params)
    base = {**common, "estimator": estimator}
    corrected = {**common, "correction": ms.correction, **ms.options, "estimator": estimator}
    return base, corrected


def needs_exclusive(method: str) -> bool:
    return METHODS[method].exclusive


def run_generate(model, req: GenerateRequest, on_event=None, stop=None) -> dict:
    """Both runs; ``on_event((run, record))`` after every step (records carry the x0 tensors); once
    ``stop`` (a threading.Event) is set, they end at their next network evaluation."""
    base_kw, corr_kw = run_kwargs(model, req)
    net = interruptible(model, stop)
    jobs = {}
    for run, kw in (("baseline", base_kw), ("corrected", corr_kw)):
        cb = (lambda rec, run=run: on_event((run, rec))) if on_event else None
        jobs[run] = lambda kw=kw, cb=cb: sample(net, progress=cb, **kw)
    return side_by_side(jobs, model.device)


def preview(model, x0) -> "object":
    """A grid of x0 estimates (B, C, H, W) as shown in the tab."""
    return grid(to_pil(x0.clamp(-1, 1)), scale=scale_for(model.sample_shape[-1], PREVIEW_SIDE))


def _fmt(v, spec=".3f"):
    return "n/a" if v is None else format(v, spec)


NOISY, CLEAN, PLAIN = "#c62828", "#2e7d32", "#333333"


def captions(res) -> list[tuple[str, str]] | None:
    """Each image's own leftover-noise reading, red where it is noisier than 90% of real photos."""
    if res.leftover is None:
        return None
    p90 = (res.reference or {}).get("p90")
    return [(f"#{i + 1} noise {float(v):.3f}", PLAIN if p90 is None else NOISY if float(v) > p90 else CLEAN)
            for i, v in enumerate(res.leftover)]


def outcome(b, c, method: str) -> str:
    """One sentence with the measured outcome, whichever way it went."""
    fb, fc = b.figures, c.figures
    if "leftover_median" not in fb or "leftover_median" not in fc or fb["leftover_median"] <= 0:
        return ""
    change = fc["leftover_median"] / fb["leftover_median"] - 1
    real = f"; clean photos read {fb['real_median']:.3f}" if "real_median" in fb else ""
    if abs(change) < 0.05:
        verdict = "about as much leftover noise as the baseline"
    else:
        verdict = f"{abs(change):.0%} {'less' if change < 0 else 'more'} leftover noise than the baseline"
    text = (f"**With {METHODS[method].title}, the images carry {verdict}** (median {fc['leftover_median']:.3f} "
            f"against {fb['leftover_median']:.3f}{real}).")
    if "share_above_real_p90" in fb:
        n = len(b.leftover)
        nb, nc = round(fb["share_above_real_p90"] * n), round(fc["share_above_real_p90"] * n)
        text += f" Noisier than 9 in 10 real photos: {nb} of {n} baseline images, {nc} of {n} corrected."
    return text


def metrics_markdown(req: GenerateRequest, runs: dict) -> str:
    b, c = runs["baseline"], runs["corrected"]
    fb, fc = b.figures, c.figures
    title = f"corrected ({req.method})"

    def row(what, key, spec=".3f"):
        return f"| {what} | {_fmt(fb.get(key), spec)} | {_fmt(fc.get(key), spec)} |"

    lines = [f"| ↓ lower is better | baseline | {title} |", "|---|---|---|",
             row("noise left in the final images, median ↓", "leftover_median"),
             row("noise left, worst image ↓", "leftover_max"),
             row("share of images noisier than 90% of real photos ↓", "share_above_real_p90", ".0%"),
             row("distance from the schedule, per image, over all steps (mean \\|log σ_est/σ\\|) ↓", "per_image_shift"),
             row("the same for the batch median only (systematic shift) ↓", "systematic_shift"),
             f"| network evaluations per image | {b.nfe_per_image:g} | {c.nfe_per_image:g} |",
             f"| seconds | {b.seconds:.1f} s | {c.seconds:.1f} s |"]
    desc = (f"{req.n} image(s), class **{req.class_name}**, sampler **{req.sampler}**, {req.steps} steps, "
            f"seed {req.seed}" + (f", CFG {req.cfg_scale:g}" if req.cfg_scale != 1 else "")
            + "".join(f", {PARAMS[k].label} {v:g}" for k, v in req.params.items() if PARAMS[k].control)
            + ". Same seeds for both runs.")
    if b.settings.get("clip_x0"):
        desc += (" Both runs keep each step's guess of the final image within the valid pixel range, as the "
                 "model's configuration asks.")
    if b.leftover is None:
        desc += " No noise-level estimator for this model: no noise figures."
    elif "real_median" in fb:
        desc += (f" Noise is the noise level read off each image (σ): clean real photos read {fb['real_median']:.3f} "
                 f"(median), 90% of them below {fb['real_p90']:.3f}. Each image's reading is under it in the grids.")
    said = outcome(b, c, req.method)
    return "\n".join(([said, ""] if said else []) + [desc, "", *lines]
                     + ([""] + [f"*{n}*" for n in req.notes] if req.notes else []))


def noise_plots(runs: dict, labels: dict):
    """The two figures of the tab: per-step band of the noise level, and each final image's leftover noise."""
    from ..evaluation.plots import leftover_figure, level_band_figure

    bands = level_band_figure({labels[k]: v.level_bands for k, v in runs.items()})
    left = {labels[k]: [float(x) for x in v.leftover] for k, v in runs.items() if v.leftover is not None}
    return bands, leftover_figure(left, runs["baseline"].reference) if left else None


def generate_outputs(model, req: GenerateRequest, runs: dict, bundle: bool = True) -> dict:
    """Final outputs: upscaled grids (each image captioned with its leftover noise), metrics, figures, the
    zip bundle (None without ``bundle``)."""
    scale = scale_for(model.sample_shape[-1], PREVIEW_SIDE)
    labels = {"baseline": "baseline", "corrected": f"corrected ({req.method})"}
    images = {}
    for run, res in runs.items():
        for i, im in enumerate(to_pil(res.images)):
            images[f"{run}_{i:02d}"] = im
    meta = {"tab": "generate", "model": model.name, "request": asdict(req), "metrics": {
        run: {"noise_shift": res.noise_shift, **res.figures, "nfe_per_image": res.nfe_per_image,
              "seconds": round(res.seconds, 3)} for run, res in runs.items()},
        "traces": {run: res.trace(per_image=True) for run, res in runs.items()}}
    bands, leftover = noise_plots(runs, labels)
    return {"baseline": grid(to_pil(runs["baseline"].images), scale=scale, captions=captions(runs["baseline"])),
            "corrected": grid(to_pil(runs["corrected"].images), scale=scale, captions=captions(runs["corrected"])),
            "metrics": metrics_markdown(req, runs), "sigma": bands, "leftover": leftover,
            "bundle": write_bundle("generate", images, meta) if bundle else None, "meta": meta}


FIRST_RUN_MAX_SIDE = 64          # a larger model takes minutes per image on a CPU: no run at start-up
_first_runs: dict = {}


def first_comparison(model, method: str | None, steps: int) -> dict | None:
    """The tab's own defaults, run once per model when the app is built, so that a visitor sees a finished
    comparison before clicking anything. None for large models, or if the run fails (the tab then
    starts empty; the failure shows when the visitor runs it)."""
    if model is None or method is None or model.sample_shape[-1] > FIRST_RUN_MAX_SIDE:
        return None
    key = (model.name, model.info.get("folder"), method, steps)
    if key not in _first_runs:
        try:
            req = parse_generate(model, ANY_CLASS, "ddim", steps, 0, FIRST_RUN_IMAGES, method)
            _first_runs[key] = generate_outputs(model, req, run_generate(model, req), bundle=False)
        except Exception:            # a model that cannot run its own defaults: say so on the first click
            _first_runs[key] = None
        while len(_first_runs) > 4:
            _first_runs.pop(next(iter(_first_runs)))
    return _first_runs[key]
