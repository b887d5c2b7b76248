"""``sample``: images from a model with a correction, a one-line noise summary, optionally a trace."""
from __future__ import annotations

import json
from pathlib import Path

from .common import UserError, check_early, class_index, free_folder, load, method_args, method_kwargs, model_args, \
    param_arg, sampler_options


def add_parser(sub):
    from ..sampling.samplers import SAMPLERS
    from ..sampling.schedules import SCHEDULES

    sp = sub.add_parser("sample", help="generate images; optionally write the per-step trace as JSON")
    model_args(sp)
    sp.add_argument("--sampler", choices=list(SAMPLERS), default="ddim")
    sp.add_argument("--steps", type=int, default=None,
                    help="1 to 1000 (default: the model's recommended step count, else 20)")
    sp.add_argument("--schedule", choices=list(SCHEDULES), default="model",
                    help="model: the model's own timesteps (trailing); loglinear; karras (EDM)")
    param_arg(sp, "eta", default=0.0)
    sp.add_argument("--n", type=int, default=4, help="number of images")
    sp.add_argument("--seed", type=int, default=0, help="image i uses seed + i")
    sp.add_argument("--class", dest="class_", default=None, help="class index or name; 'any' for unconditional")
    method_args(sp, recommended=True)
    sp.add_argument("--batch-size", type=int, default=16)
    sp.add_argument("--out", required=True, help="folder for the PNG images")
    sp.add_argument("--overwrite", action="store_true", help="replace images of the same names already in --out")
    sp.add_argument("--trace", default=None, help="write per-step records (sigma, eps norm, NFE) to this JSON file")
    sp.set_defaults(func=run)


def pick_recommended(a, model):
    """--method / --steps left out: the model's recommendation, said aloud."""
    from ..methods import recommended_run

    try:
        method, steps = recommended_run(model)
    except ValueError as e:
        raise UserError(str(e)) from None
    if a.method is None or a.steps is None:
        picked = [f"method {a.method or method or 'none'}"] if a.method is None else []
        picked += [f"{steps} steps"] if a.steps is None else []
        print(f"{' and '.join(picked)}: the model's recommendation (--method / --steps to choose)")
    a.method = a.method or method or "none"
    a.steps = a.steps or steps


def run(a):
    from tqdm import tqdm

    from ..images import to_pil
    from ..sampling.run import merge_results, sample

    if a.n < 1 or a.n > 10_000:
        raise UserError("--n must be between 1 and 10000")
    check_early(a)
    out = free_folder(a.out, [f"seed{a.seed + i:06d}.png" for i in range(a.n)], a.overwrite)   # before any work
    model = load(a)
    label = class_index(model, a.class_)
    pick_recommended(a, model)
    method_kw = method_kwargs(a, model)
    results = []
    with tqdm(total=a.n * a.steps, desc=f"{a.sampler} {a.steps} steps", unit="step") as bar:
        for start in range(0, a.n, a.batch_size):
            k = min(a.batch_size, a.n - start)
            seeds = [a.seed + start + i for i in range(k)]
            res = sample(model, sampler=a.sampler, steps=a.steps, seeds=seeds, n=k,
                         labels=None if label is None else [label] * k, schedule=a.schedule,
                         progress=lambda r: bar.update(k), **method_kw, **sampler_options(a))
            for img, s in zip(to_pil(res.images), seeds):
                img.save(out / f"seed{s:06d}.png")
            results.append(res)
    res = merge_results(results)
    if a.trace:
        write_trace(a, model, label, res)
    print_leftover(res.figures)
    print(f"wrote {a.n} PNG images to {out}" + (f" and the trace to {a.trace}" if a.trace else ""))


def write_trace(a, model, label, res):
    doc = res.trace(per_image=True)
    doc = {"model": model.name, **doc, "settings": {**doc["settings"], "n": a.n, "seed": a.seed, "class": label,
                                                    "method": a.method},
           "seconds_per_image": res.seconds / a.n}
    Path(a.trace).parent.mkdir(parents=True, exist_ok=True)
    Path(a.trace).write_text(json.dumps(doc, indent=1))


def print_leftover(f: dict):
    if "leftover_median" in f:
        print(f"leftover noise in the final images: median {f['leftover_median']:.4f}, worst {f['leftover_max']:.4f}"
              + (f" (real photos: median {f['real_median']:.4f}, 90% below {f['real_p90']:.4f}; "
                 f"{f['share_above_real_p90']:.0%} of these images are noisier than that)" if "real_p90" in f else ""))
