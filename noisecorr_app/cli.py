"""``python -m noisecorr_app <command>``: argparse in, library calls out, clear messages on failure."""
from __future__ import annotations

import argparse
import sys

from .training.data import default_cifar10


class UserError(Exception):
    """A problem the user can fix (bad argument, missing model, ...): printed without a traceback."""


def _train_denoiser(a):
    from .training.denoiser import train_denoiser

    train_denoiser(a.data, a.out, steps=a.steps, batch_size=a.batch_size, lr=a.lr, image_size=a.image_size,
                   p_class_drop=a.class_dropout, p_noise_drop=a.noise_dropout, unconditional=a.unconditional,
                   max_minutes=a.minutes, precision=a.precision, checkpoint_minutes=a.checkpoint_minutes,
                   split=a.split or None, threads=a.threads)


def _load(a):
    from .models.loading import ModelLoadError, load_model

    try:
        return load_model(a.model, device=a.device, allow_pickle=a.allow_pickle, revision=a.revision)
    except ModelLoadError as e:
        raise UserError(str(e)) from None


def _class_index(model, value: str | None):
    """A class given by index or name; None or 'any' means unconditional."""
    if value is None or value.lower() == "any":
        if getattr(model, "num_classes", None) and not model.supports_null_label:
            raise UserError(f"{model.name} is class-conditional without a null class: give --class")
        return None
    if not getattr(model, "num_classes", None):
        raise UserError(f"{model.name} is unconditional: it takes no --class")
    names = [n.lower() for n in (model.class_names or [])]
    if value.lower() in names:
        return names.index(value.lower())
    if value.isdigit() and int(value) < model.num_classes:
        return int(value)
    listed = ", ".join(model.class_names or map(str, range(model.num_classes)))
    raise UserError(f"unknown class '{value}': choose from {listed}, or 'any'")


def make_correction(a, steps: int):
    from .sampling.corrections import EpsScaling, Correction

    if a.correction == "none":
        return Correction()
    if a.correction == "es":
        return EpsScaling(a.es_lambda)
    raise UserError(f"unknown correction '{a.correction}'")


def _sample(a):
    import json
    from pathlib import Path

    from tqdm import tqdm

    from .images import to_pil
    from .sampling.run import sample

    if a.n < 1 or a.n > 10_000:
        raise UserError("--n must be between 1 and 10000")
    model = _load(a)
    label = _class_index(model, a.class_)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    traces = []
    with tqdm(total=a.n * a.steps, desc=f"{a.sampler} {a.steps} steps", unit="step") as bar:
        for start in range(0, a.n, a.batch_size):
            k = min(a.batch_size, a.n - start)
            seeds = [a.seed + start + i for i in range(k)]
            try:
                res = sample(model, sampler=a.sampler, steps=a.steps, seeds=seeds, n=k,
                             labels=None if label is None else [label] * k, schedule=a.schedule,
                             correction=make_correction(a, a.steps), cfg_scale=a.cfg_scale,
                             nag_scale=a.nag_scale, progress=lambda r: bar.update(k),
                             **({"eta": a.eta} if a.sampler == "ddim" else {}))
            except ValueError as e:
                raise UserError(str(e)) from None
            for img, s in zip(to_pil(res.images), seeds):
                img.save(out / f"seed{s:06d}.png")
            traces.append(res.trace(per_image=True))
    if a.trace:
        steps = traces[0]["steps"]
        for t in traces[1:]:     # merge batches: per-image lists concatenate, means re-average
            for d, e in zip(steps, t["steps"]):
                d["sigma_used_per_image"] += e["sigma_used_per_image"]
                d["eps_norm_per_image"] += e["eps_norm_per_image"]
        for d in steps:
            d["sigma_used"] = sum(d["sigma_used_per_image"]) / len(d["sigma_used_per_image"])
            d["eps_norm"] = sum(d["eps_norm_per_image"]) / len(d["eps_norm_per_image"])
        doc = {"model": model.name, "settings": {**traces[0]["settings"], "n": a.n, "seed": a.seed, "class": label},
               "nfe_per_image": traces[0]["nfe_per_image"],
               "seconds_per_image": sum(t["seconds"] for t in traces) / a.n, "steps": steps}
        Path(a.trace).parent.mkdir(parents=True, exist_ok=True)
        Path(a.trace).write_text(json.dumps(doc, indent=1))
    print(f"wrote {a.n} PNG images to {out}" + (f" and the trace to {a.trace}" if a.trace else ""))


def _evaluate_speed(a):
    import torch

    from .evaluation.speed import loop_overhead

    if a.threads:
        torch.set_num_threads(a.threads)
    model = _load(a)
    rows = loop_overhead(model, samplers=a.samplers.split(","), steps=a.steps, batch=a.batch)
    print(f"{'sampler':8} {'NFE/step':>8} {'ms/step':>9} {'net ms':>9} {'overhead':>9}")
    for r in rows:
        print(f"{r['sampler']:8} {r['nfe_per_step']:8.2f} {r['ms_per_step']:9.1f} {r['network_ms_per_step']:9.1f} "
              f"{r['overhead_pct']:8.2f}%")


def _model_args(p):
    p.add_argument("--model", default=None, help="Hub repo id or local folder (default: the embedded model in weights/)")
    p.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) to pin")
    p.add_argument("--allow-pickle", action="store_true",
                   help="allow a pickle (.bin) checkpoint when no safetensors exist; read with weights_only=True")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: GPU if present)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m noisecorr_app",
                                description="Noise-shift corrections (NLC, NAG) for diffusion sampling and restoration.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from .sampling.samplers import SAMPLERS
    from .sampling.schedules import SCHEDULES

    sp = sub.add_parser("sample", help="generate images; optionally write the per-step trace as JSON")
    _model_args(sp)
    sp.add_argument("--sampler", choices=list(SAMPLERS), default="ddim")
    sp.add_argument("--steps", type=int, default=20, help="1 to 1000")
    sp.add_argument("--schedule", choices=list(SCHEDULES), default="model",
                    help="model: the model's own timesteps (trailing); loglinear; karras (EDM)")
    sp.add_argument("--eta", type=float, default=0.0, help="DDIM stochasticity (0 = deterministic)")
    sp.add_argument("--n", type=int, default=4, help="number of images")
    sp.add_argument("--seed", type=int, default=0, help="image i uses seed + i")
    sp.add_argument("--class", dest="class_", default=None, help="class index or name; 'any' for unconditional")
    sp.add_argument("--correction", choices=["none", "es"], default="none", help="es = epsilon scaling")
    sp.add_argument("--es-lambda", type=float, default=1.005, help="epsilon-scaling factor")
    sp.add_argument("--cfg-scale", type=float, default=1.0, help="classifier-free guidance scale (1 = off)")
    sp.add_argument("--nag-scale", type=float, default=0.0, help="classifier-free NAG weight (0 = off)")
    sp.add_argument("--batch-size", type=int, default=16)
    sp.add_argument("--out", required=True, help="folder for the PNG images")
    sp.add_argument("--trace", default=None, help="write per-step records (sigma, eps norm, NFE) to this JSON file")
    sp.set_defaults(func=_sample)

    ev = sub.add_parser("evaluate", help="measure speed, sample quality or restoration quality")
    esub = ev.add_subparsers(dest="what", required=True, metavar="WHAT")
    es = esub.add_parser("speed", help="wall time per step and the sampling loop's overhead beyond the network")
    _model_args(es)
    es.add_argument("--samplers", default=",".join(SAMPLERS))
    es.add_argument("--steps", type=int, default=20)
    es.add_argument("--batch", type=int, default=1)
    es.add_argument("--threads", type=int, default=None)
    es.set_defaults(func=_evaluate_speed)

    train = sub.add_parser("train", help="train the default denoiser or an extra network")
    tsub = train.add_subparsers(dest="what", required=True, metavar="WHAT")
    d = tsub.add_parser("denoiser", help="train a class-conditional UNet2DModel with class and noise-condition dropout")
    d.add_argument("--data", default=str(default_cifar10()), help="image folder or tarball (class = parent folder name)")
    d.add_argument("--split", default="train", help="keep only images under a folder of this name ('' for all)")
    d.add_argument("--out", required=True, help="model folder to write (resumes if it holds a checkpoint)")
    d.add_argument("--steps", type=int, default=200_000, help="total steps; a resumed run continues to this")
    d.add_argument("--minutes", type=float, default=None, help="stop (with a checkpoint) after this long")
    d.add_argument("--batch-size", type=int, default=64)
    d.add_argument("--lr", type=float, default=2e-4)
    d.add_argument("--image-size", type=int, default=32)
    d.add_argument("--class-dropout", type=float, default=0.1)
    d.add_argument("--noise-dropout", type=float, default=0.1)
    d.add_argument("--unconditional", action="store_true")
    d.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    d.add_argument("--checkpoint-minutes", type=float, default=10.0)
    d.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    d.set_defaults(func=_train_denoiser)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (UserError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
