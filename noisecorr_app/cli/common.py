"""What the commands share: the user's errors, model loading, the method flags made from the
registry, and the parsing of comma-separated lists."""
from __future__ import annotations

from pathlib import Path

from ..methods import METHODS, method_params
from ..settings import PARAMS, STEPS, Choice, check_values


class UserError(Exception):
    """A problem the user can fix (bad argument, missing model, ...): printed without a traceback."""


def model_args(p):
    p.add_argument("--model", default=None, help="Hub repo id or local folder (default: the embedded model in weights/)")
    p.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) to pin")
    p.add_argument("--allow-pickle", action="store_true",
                   help="allow a pickle (.bin) checkpoint when no safetensors exist; read with weights_only=True")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: GPU if present)")
    p.add_argument("--fp16", action="store_true", help="half-precision weights on a GPU (ignored on the CPU)")
    p.add_argument("--nlc", default=None, help="folder or Hub repo id of NLC weights trained for this model (default: "
                                               "the model's own, or those `train nlc` wrote for it)")


def threads_arg(p):
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")


def load(a):
    import torch

    from ..models.loading import ModelLoadError, load_model

    try:
        return load_model(a.model, device=a.device, allow_pickle=a.allow_pickle, revision=a.revision,
                          dtype=torch.float16 if getattr(a, "fp16", False) else torch.float32, nlc=getattr(a, "nlc", None))
    except ModelLoadError as e:
        raise UserError(str(e)) from None


def threads(a):
    import torch

    if getattr(a, "threads", None):
        torch.set_num_threads(a.threads)


def class_index(model, value: str | None):
    """A class given by index or name; None or 'any' means unconditional."""
    if value is None or value.lower() == "any":
        if model.num_classes and not model.supports_null_label:
            raise UserError(f"{model.name} is class-conditional without a null class: give --class")
        return None
    if not model.num_classes:
        raise UserError(f"{model.name} is unconditional: it takes no --class")
    names = [n.lower() for n in (model.class_names or [])]
    if value.lower() in names:
        return names.index(value.lower())
    if value.isdigit() and int(value) < model.num_classes:
        return int(value)
    listed = ", ".join(model.class_names or map(str, range(model.num_classes)))
    raise UserError(f"unknown class '{value}': choose from {listed}, or 'any'")


# -- the methods' flags, from the registry ------------------------------------------------------------
CLIP_CHOICES = {"model": None, "on": True, "off": False}


def clip_arg(p):
    p.add_argument("--x0-clip", choices=list(CLIP_CHOICES), default="model",
                   help="clamp each step's x0 estimate to [-1, 1], baseline and correction alike; model (default): "
                        "as the model's scheduler config says (clip_sample, on for the embedded model and the "
                        "google/ddpm models); off: the unclamped sampler (the NLC paper's baseline)")


def clip_choice(a) -> bool | None:
    return CLIP_CHOICES[getattr(a, "x0_clip", "model")]


def param_arg(p, key, default=None, default_text: str | None = None):
    """One setting (a key of PARAMS, or a Param) as a flag; unset (None) it takes the model's
    recommendation, else the declared default."""
    param = PARAMS[key] if isinstance(key, str) else key
    if isinstance(param, Choice):
        p.add_argument(param.flag, choices=list(param.options), default=default,
                       help=f"{param.help} (default: {param.default})")
        return
    follows = param.tunable and any(param.key in s.params for s in METHODS.values())
    source = "the model's recommendation for the run's step count, else " if follows else ""
    shown = default_text or f"{source}{param.default if default is None else default:g}"
    p.add_argument(param.flag, type=int if param.integer else float, default=default,
                   help=f"{param.label}, {param.lo:g} to {param.hi:g}: {param.help} (default: {shown})")


def method_args(p, recommended: bool = False):
    """--method and every setting a method reads. recommended: --method defaults to the model's
    recommended correction (its noisecorr.json) instead of none."""
    clip_arg(p)
    p.add_argument("--method", choices=list(METHODS), default=None if recommended else "none",
                   help=("default: the model's recommended correction (its noisecorr.json), else none. "
                         if recommended else "") + "; ".join(f"{k}: {s.title}" for k, s in METHODS.items()))
    for key in method_params():
        param_arg(p, key)


def given_params(a) -> dict:
    """The method settings given on the command line (the others follow the model)."""
    return {k: getattr(a, k) for k in method_params() if getattr(a, k, None) is not None}


def check_early(a):
    """Settings that need no model, checked before anything is loaded: --steps, batch sizes and every
    declared setting (a NaN or an infinity is refused here, not after minutes of work)."""
    steps = getattr(a, "steps", None)
    for opt in ("batch_size", "batch"):
        v = getattr(a, opt, None)
        if v is not None and v < 1:
            raise UserError(f"--{opt.replace('_', '-')} must be at least 1, got {v}")
    try:
        if isinstance(steps, int):
            STEPS.check(steps)
        check_values({k: getattr(a, k, None) for k in PARAMS})
    except ValueError as e:
        raise UserError(str(e)) from None


def method_kwargs(a, model) -> dict:
    """sample() keyword arguments for --method and its settings (correction, guidance, estimator)."""
    from ..methods import level_reader_for, setup

    values = given_params(a)
    cfg = values.pop("cfg_scale", PARAMS["cfg_scale"].default)
    try:
        ms = setup(a.method, model, steps=a.steps, sampler=a.sampler, **values)
    except (ValueError, FileNotFoundError) as e:
        raise UserError(str(e)) from None
    kw = {"correction": ms.correction, "cfg_scale": cfg, "clip_x0": clip_choice(a), **ms.options}
    kw["estimator"] = level_reader_for(model)     # sigma_est in traces when the level can be read
    return kw


def sampler_options(a) -> dict:
    return {"eta": a.eta} if a.sampler == "ddim" else {}


# -- lists and result files -------------------------------------------------------------------------
def free_folder(folder, names: list[str], overwrite: bool = False) -> Path:
    """The output folder, made; refused (before any work) if it is a file, or if it already holds files
    of these names and ``overwrite`` was not asked for: earlier results are never replaced silently."""
    out = Path(folder)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder: give a folder for the images")
    taken = [n for n in names if (out / n).exists()]
    if taken and not overwrite:
        raise UserError(f"--out {out} already holds {len(taken)} of these files ({taken[0]}, ...): choose another "
                        f"folder, or pass --overwrite to replace them")
    out.mkdir(parents=True, exist_ok=True)
    return out


def ints(text: str, what: str, lo: int, hi: int) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{what} takes comma-separated whole numbers, got '{text}'") from None
    if not vals or not all(lo <= v <= hi for v in vals):
        raise UserError(f"{what} must be whole numbers from {lo} to {hi}, got '{text}'")
    return list(dict.fromkeys(vals))


def choices(text: str, what: str, valid) -> list[str]:
    vals = list(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
    bad = [v for v in vals if v not in valid]
    if bad or not vals:
        raise UserError(f"unknown {what} {', '.join(bad) or '(none given)'}: choose from {', '.join(valid)}")
    return vals


def open_table(a, key, settings, header):
    from ..evaluation.results import ResultsFile, SettingsChanged

    try:
        return ResultsFile(a.json, key, settings, header, fresh=a.fresh)
    except SettingsChanged as e:
        raise UserError(str(e)) from None


def write_markdown(path, title, command, table, notes):
    from ..evaluation.results import markdown_document

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(markdown_document(title, command, table, notes))


def load_classifier(folder, device):
    from ..extras.classifier import load_classifier as load

    try:
        return load(folder, device=device or "cpu")
    except (FileNotFoundError, ValueError) as e:
        raise UserError(f"FID-C10 needs the CIFAR-10 classifier: {e}") from None
