"""``restore``: degrade one image with a task's operator, restore it, and score the result. The task
settings and methods come from ``restoration.tasks``."""
from __future__ import annotations

from pathlib import Path

from ..restoration.tasks import RESTORATION_METHODS, RESTORE_STEPS, SIGMA_Y, TASKS
from .common import UserError, check_early, free_folder, load, model_args, param_arg


def task_args(p, tasks=None):
    """The tasks' own settings (--factor, --mask-kind, --blur-sigma, --cs-ratio); default: every task's."""
    for task in tasks or TASKS.values():
        for param in task.params:
            if param.key == "mask":      # a drawn mask is a file here (--mask): the presets only
                p.add_argument("--mask-kind", default=param.default, choices=[o for o in param.options if o != "drawn"],
                               help="inpainting: the preset mask when no --mask file is given")
            else:
                p.add_argument(param.flag, type=int if param.integer else float, default=param.default,
                               help=f"{task.name}: {param.label}, {param.lo:g} to {param.hi:g} (default {param.default:g})")


def method_args(p):
    """Every method's free settings (--eta, --prox-weight, --level-ratio, --level-below, --damping) and --grid,
    --tail-steps and --next-level, shared by `restore` and `evaluate restoration`."""
    from ..restoration.tasks import METHOD_KNOBS

    for param in METHOD_KNOBS:
        param_arg(p, param, default_text="the model's validated choice for each method and step count "
                                         f"(noisecorr.json), else {param.default:g}")
    p.add_argument("--grid", default="model", choices=["model", "loglinear"],
                   help="iterproj: the main sigma grid, model (DDNM's: the model's timesteps, 'leading'; default; "
                        "measured: ahead at 20 steps, level at 100) or loglinear (the official IterProj's, 100 down "
                        "to the model's sigma_min)")
    p.add_argument("--tail-steps", type=int, default=None,
                   help="iterproj: steps of the cyclic small-sigma tail, taken from the budget (default none; "
                        "the official setting is 20%% of --steps)")
    p.add_argument("--next-level", default="scheduled", choices=["scheduled", "corrected"],
                   help="iterproj-nlc: re-noise each step to the scheduled level (default; measured better with "
                        "noisy measurements) or to the NLC-corrected one, sigma_next (1 + r), as the official code")


def method_options(a) -> dict:
    """The method_args options, checked here so a bad value is one message before any model loads; a free
    setting left None takes each method's validated value for the model (``methods.restoration_settings``)."""
    from ..restoration.tasks import METHOD_KNOBS

    try:
        knobs = {p.key: None if getattr(a, p.key) is None else p.check(getattr(a, p.key)) for p in METHOD_KNOBS}
    except ValueError as e:
        raise UserError(str(e)) from None
    if a.tail_steps is not None and not 0 <= a.tail_steps < a.steps:
        raise UserError(f"--tail-steps must be from 0 to --steps - 1 ({a.steps - 1}), got {a.tail_steps}")
    return {**knobs, "tail_steps": a.tail_steps, "grid": a.grid, "next_level": a.next_level}


def task_values(a, task) -> dict:
    """The task's settings from the command line, checked against their declarations."""
    values = {}
    for param in task.params:
        try:
            values[param.key] = param.check(getattr(a, "mask_kind" if param.key == "mask" else param.key))
        except ValueError as e:
            raise UserError(str(e)) from None
    return values


def inner_correction(method: str, model, steps: int, correction: str = "none"):
    from ..methods import restoration_correction

    try:
        return restoration_correction(method, model, steps, correction)
    except (ValueError, FileNotFoundError) as e:
        raise UserError(str(e)) from None


def add_parser(sub):
    from ..methods import METHODS

    r = sub.add_parser("restore", help="restore one image: super-resolution, inpainting, deblur, colorize, CS")
    model_args(r)
    r.add_argument("--task", choices=list(TASKS), required=True,
                   help="; ".join(f"{k}: {t.title}, {t.description[0].lower()}{t.description[1:]}" for k, t in TASKS.items()))
    r.add_argument("--input", required=True, help="the clean image (it is degraded, then restored)")
    r.add_argument("--method", choices=list(RESTORATION_METHODS), default="iterproj")
    r.add_argument("--correction", choices=[k for k, s in METHODS.items() if s.in_restoration], default="none",
                   help="a correction inside the method's loop (iterproj; for iterproj-nlc, nlc reads the level "
                        "with the trained r_theta in place of the fixed reading)")
    param_arg(r, SIGMA_Y, default=SIGMA_Y.default)
    r.add_argument("--mask", default=None, help="inpainting: mask image; white (or, with transparency, opaque) "
                                                "pixels are the missing ones")
    task_args(r)
    r.add_argument("--steps", type=int, default=RESTORE_STEPS, help="network evaluations per image (default: %(default)s, as the app)")
    method_args(r)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--out", required=True, help="folder for the measured, restored and reference PNGs")
    r.add_argument("--overwrite", action="store_true", help="replace files of the same names already in --out")
    r.set_defaults(func=run)


def run(a):
    from tqdm import tqdm

    from ..evaluation.metrics import psnr, ssim
    from ..images import open_image, prepare_image, to_pil
    from ..restoration.methods import degrade, restore
    from ..restoration.operators import make_operator

    check_early(a)
    try:
        SIGMA_Y.check(a.sigma_y)
    except ValueError as e:
        raise UserError(str(e)) from None
    task = TASKS[a.task]
    values = task_values(a, task)
    options = method_options(a)
    if a.mask and a.task != "inpaint":
        raise UserError(f"--mask is for --task inpaint, not {a.task}")
    mask = open_image(a.mask, "mask") if a.mask else None       # before the model: a bad file fails fast
    stem = Path(a.input).stem
    out = free_folder(a.out, [f"{stem}_{a.task}_measured.png", f"{stem}_{a.task}_{a.method}.png",
                              f"{stem}_reference.png"], a.overwrite)
    model = load(a)
    size = model.sample_shape[-1]
    x, note = prepare_image(a.input, size)
    if note:
        print(note)
    settings = task.operator_settings(values)
    if mask is not None:             # white (or opaque) pixels of a --mask file are the missing ones
        settings = {"drawing": mask}
    op = make_operator(a.task, size, **settings)
    y = degrade(op, x.to(model.device), a.sigma_y, seed=a.seed)
    correction = inner_correction(a.method, model, a.steps, a.correction)
    from ..methods import restoration_settings

    knobs = restoration_settings(model, a.method, a.steps, **options)
    with tqdm(total=a.steps, desc=f"{a.method} {a.task}", unit="step") as bar:
        res = restore(model, op, y, method=a.method, steps=a.steps, seed=a.seed, sigma_y=a.sigma_y,
                      correction=correction, progress=lambda r: bar.update(1), **knobs)
    to_pil(op.view(y))[0].save(out / f"{stem}_{a.task}_measured.png")
    to_pil(res.images)[0].save(out / f"{stem}_{a.task}_{a.method}.png")
    to_pil(x)[0].save(out / f"{stem}_reference.png")
    ref = x.to(res.images.device)
    try:
        ssim_text = f"{float(ssim(res.images, ref)):.4f}"
    except ValueError:                    # images smaller than SSIM's 11x11 window
        ssim_text = "n/a"
    print(f"{a.method}: PSNR {float(psnr(res.images, ref)):.2f} dB, SSIM {ssim_text}, "
          f"consistency {float(res.consistency.mean()):.2e}, {res.nfe_per_image:g} NFE; images in {out}")
