"""``python -m noisecorr_app <command>``: argparse in, library calls out, clear messages on failure."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .training.data import default_cifar10


class UserError(Exception):
    """A problem the user can fix (bad argument, missing model, ...): printed without a traceback."""


def _train_denoiser(a):
    from .training.denoiser import train_denoiser

    train_denoiser(a.data, a.out, steps=a.steps, batch_size=a.batch_size, lr=a.lr, image_size=a.image_size,
                   p_class_drop=a.class_dropout, p_noise_drop=a.noise_dropout, unconditional=a.unconditional,
                   max_minutes=a.minutes, precision=a.precision, checkpoint_minutes=a.checkpoint_minutes,
                   split=a.split or None, threads=a.threads)


def _train_classifier(a):
    from pathlib import Path

    from .training.classifier import train_classifier

    try:
        widths = tuple(int(w) for w in a.widths.split(","))
    except ValueError:
        raise UserError(f"--widths takes 4 comma-separated channel counts, got '{a.widths}'") from None
    if not Path(a.data).exists():
        raise UserError(f"no data at {a.data}: pass --data with an image folder or tarball "
                        "(class folders under train/ and test/, like CIFAR-10-images)")
    train_classifier(a.data, a.out, steps=a.steps, batch_size=a.batch_size, lr=a.lr, weight_decay=a.weight_decay,
                     warmup=a.warmup, widths=widths, max_minutes=a.minutes, precision=a.precision,
                     checkpoint_minutes=a.checkpoint_minutes, split=a.split or None, test_split=a.test_split or None,
                     threads=a.threads)


def _load(a):
    from .models.loading import ModelLoadError, load_model

    try:
        import torch

        return load_model(a.model, device=a.device, allow_pickle=a.allow_pickle, revision=a.revision,
                          dtype=torch.float16 if getattr(a, "fp16", False) else torch.float32)
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


def _method(a, model) -> dict:
    """sample() keyword arguments for --method and its settings (correction, guidance, estimator)."""
    from .methods import load_estimator_for, setup

    try:
        ms = setup(a.method, model, steps=a.steps, nag_scale=a.nag_scale, nag_est_scale=a.nag_est_scale, es_lambda=a.es_lambda,
                   nlc_mode=a.nlc_mode)
    except (ValueError, FileNotFoundError) as e:
        raise UserError(str(e)) from None
    kw = {"correction": ms.correction, "cfg_scale": a.cfg_scale, "clip_x0": clip_choice(a), **ms.options}
    kw.setdefault("estimator", load_estimator_for(model))     # sigma_est in traces when an estimator exists
    return kw


CLIP_CHOICES = {"model": None, "on": True, "off": False}


def clip_arg(p):
    p.add_argument("--x0-clip", choices=list(CLIP_CHOICES), default="model",
                   help="clamp each step's x0 estimate to [-1, 1], baseline and correction alike; model (default): "
                        "as the model's scheduler config says (clip_sample, on for the embedded model and the "
                        "google/ddpm models); off: the unclamped sampler (the NLC paper's baseline)")


def clip_choice(a) -> bool | None:
    return CLIP_CHOICES[getattr(a, "x0_clip", "model")]


def weight_args(p):
    """The methods' numeric weights; unset, each takes the model's recommendation (``method_defaults``
    in its noisecorr.json), else the paper's value."""
    from .methods import DEFAULTS

    for flag, key, what in (("--nag-scale", "nag_scale", "NAG weight"),
                            ("--nag-est-scale", "nag_est_scale", "estimator-based NAG weight"),
                            ("--es-lambda", "es_lambda", "epsilon-scaling factor")):
        p.add_argument(flag, type=float, default=None,
                       help=f"{what} (default: the model's recommendation for the run's step count, else {DEFAULTS[key]:g})")


def _method_args(p, recommended: bool = False):
    """recommended: --method defaults to the model's recommended correction (noisecorr.json) instead of none."""
    from .methods import METHODS

    clip_arg(p)

    p.add_argument("--method", choices=list(METHODS), default=None if recommended else "none",
                   help=("default: the model's recommended correction (its noisecorr.json), else none. "
                         if recommended else "") + "; ".join(f"{k}: {v}" for k, v in METHODS.items()))
    weight_args(p)
    p.add_argument("--nlc-mode", choices=["reuse", "official"], default="reuse",
                   help="reuse: 1 network call per step; official: re-evaluate at the corrected level")
    p.add_argument("--cfg-scale", type=float, default=1.0, help="classifier-free guidance scale (1 = off)")


def _check_early(a):
    """Settings that need no model, checked before anything is loaded: --steps, --batch-size and the
    method's numbers (a NaN or an infinity is refused here, not after minutes of work)."""
    from .methods import check_params
    from .sampling.run import MAX_STEPS

    steps = getattr(a, "steps", None)
    if isinstance(steps, int) and not 1 <= steps <= MAX_STEPS:
        raise UserError(f"steps must be a whole number from 1 to {MAX_STEPS}, got {steps}")
    for opt in ("batch_size", "batch"):
        v = getattr(a, opt, None)
        if v is not None and v < 1:
            raise UserError(f"--{opt.replace('_', '-')} must be at least 1, got {v}")
    try:
        check_params(nag_scale=getattr(a, "nag_scale", None), nag_est_scale=getattr(a, "nag_est_scale", None),
                     es_lambda=getattr(a, "es_lambda", None), cfg_scale=getattr(a, "cfg_scale", None),
                     eta=getattr(a, "eta", None))
    except ValueError as e:
        raise UserError(str(e)) from None


def _sample(a):
    import json
    from pathlib import Path

    from tqdm import tqdm

    from .images import to_pil
    from .methods import recommended_run
    from .sampling.run import merge_results, sample

    if a.n < 1 or a.n > 10_000:
        raise UserError("--n must be between 1 and 10000")
    _check_early(a)
    model = _load(a)
    label = _class_index(model, a.class_)
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
    method_kw = _method(a, model)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    with tqdm(total=a.n * a.steps, desc=f"{a.sampler} {a.steps} steps", unit="step") as bar:
        for start in range(0, a.n, a.batch_size):
            k = min(a.batch_size, a.n - start)
            seeds = [a.seed + start + i for i in range(k)]
            try:
                res = sample(model, sampler=a.sampler, steps=a.steps, seeds=seeds, n=k,
                             labels=None if label is None else [label] * k, schedule=a.schedule,
                             progress=lambda r: bar.update(k), **method_kw,
                             **({"eta": a.eta} if a.sampler == "ddim" else {}))
            except ValueError as e:
                raise UserError(str(e)) from None
            for img, s in zip(to_pil(res.images), seeds):
                img.save(out / f"seed{s:06d}.png")
            results.append(res)
    res = merge_results(results)
    if a.trace:
        doc = res.trace(per_image=True)
        doc = {"model": model.name, **doc, "settings": {**doc["settings"], "n": a.n, "seed": a.seed, "class": label,
                                                        "method": a.method},
               "seconds_per_image": res.seconds / a.n}
        Path(a.trace).parent.mkdir(parents=True, exist_ok=True)
        Path(a.trace).write_text(json.dumps(doc, indent=1))
    f = res.figures
    if "leftover_median" in f:
        print(f"leftover noise in the final images: median {f['leftover_median']:.4f}, worst {f['leftover_max']:.4f}"
              + (f" (real photos: median {f['real_median']:.4f}, 90% below {f['real_p90']:.4f}; "
                 f"{f['share_above_real_p90']:.0%} of these images are noisier than that)" if "real_p90" in f else ""))
    print(f"wrote {a.n} PNG images to {out}" + (f" and the trace to {a.trace}" if a.trace else ""))


def _evaluate_speed(a):
    import torch

    from .evaluation.speed import loop_overhead

    from .sampling.samplers import SAMPLERS

    if a.threads:
        torch.set_num_threads(a.threads)
    samplers = a.samplers.split(",")
    unknown = [x for x in samplers if x not in SAMPLERS]
    if unknown:
        raise UserError(f"unknown sampler {', '.join(unknown)} (choose from {', '.join(SAMPLERS)})")
    _check_early(a)
    model = _load(a)
    rows = loop_overhead(model, samplers=samplers, steps=a.steps, batch=a.batch)
    print(f"{'sampler':8} {'NFE/step':>8} {'ms/step':>9} {'net ms':>9} {'overhead':>9}")
    for r in rows:
        print(f"{r['sampler']:8} {r['nfe_per_step']:8.2f} {r['ms_per_step']:9.1f} {r['network_ms_per_step']:9.1f} "
              f"{r['overhead_pct']:8.2f}%")
    if a.json:
        for r in rows:
            r["seconds_per_image"] = r["ms_per_step"] * r["steps"] / 1000 / r["batch"]
        doc = {"kind": "speed", "model": model.name, "threads": torch.get_num_threads(), "rows": rows}
        Path(a.json).write_text(json.dumps(doc, indent=1))


def _card(a):
    from .training.card import metrics_from_reports, write_denoiser_card

    folder = Path(a.folder)
    if not (folder / "training" / "state.json").exists():
        raise UserError(f"{folder} holds no training record (training/state.json): train it first")
    try:
        metrics = metrics_from_reports(a.reports)
    except (OSError, KeyError, json.JSONDecodeError) as e:
        raise UserError(f"could not read the reports: {e}") from None
    write_denoiser_card(folder, a.command, metrics, samples=not a.no_samples, note=a.note)
    print(f"wrote {folder / 'README.md'} ({len(metrics)} measured rows)")


def _load_classifier(folder, device):
    from .extras.classifier import load_classifier

    try:
        return load_classifier(folder, device=device or "cpu")
    except (FileNotFoundError, ValueError) as e:
        raise UserError(f"FID-C10 needs the CIFAR-10 classifier: {e}") from None


def _class_map(names_from: list[str] | None, names_to: list[str] | None, n_from: int, n_to: int):
    """Index in one class list -> index in another, by (lower-case) name; by index when names are missing."""
    import numpy as np

    if names_from and names_to:
        low = [n.lower() for n in names_to]
        if all(n.lower() in low for n in names_from):
            return np.array([low.index(n.lower()) for n in names_from])
        return None
    return np.arange(n_from) if n_from <= n_to else None


def _class_name(model, label_list):
    if label_list is None:
        return None
    names = model.class_names or []
    return names[label_list[0]] if label_list[0] < len(names) else label_list[0]


def _evaluate_fid(a):
    import json
    import time
    from pathlib import Path

    import numpy as np
    import torch
    from tqdm import tqdm

    from .evaluation.metrics import METRIC_NOTE, extract_features, fid, kid, predict_from_features, reference_features
    from .images import to_uint8
    from .training.data import load_images

    if a.threads:
        torch.set_num_threads(a.threads)
    if a.n is not None and not 2 <= a.n <= 50_000:
        raise UserError("--n must be between 2 and 50000")
    _check_early(a)
    data = Path(a.data)
    if not data.exists():
        raise UserError(f"no CIFAR-10 data at {data}: pass --data with the CIFAR-10 folder or tarball "
                        "(class folders under train/ and test/)")
    if a.floor and (a.class_ is not None or a.per_class):
        raise UserError("--floor compares the test split with the train split: it takes no --class/--per-class")
    if a.per_class and a.class_ is not None:
        raise UserError("give either --class or --per-class")
    t0 = time.time()
    clf = _load_classifier(a.classifier, a.device)
    model, label_list = None, None
    if not a.floor:      # resolve the model and its labels before any long computation
        model = _load(a)
        n = a.n or 1000
        if a.per_class:
            if not getattr(model, "num_classes", None):
                raise UserError(f"{model.name} is unconditional: --per-class needs a class-conditional model")
            if n < model.num_classes:
                raise UserError(f"--per-class needs --n of at least {model.num_classes}")
            label_list = [i % model.num_classes for i in range(n)]
        else:
            label = _class_index(model, a.class_)
            label_list = None if label is None else [label] * n
    ref = reference_features(clf, data, split="train", batch_size=a.feature_batch_size)
    doc = {"metric": "FID-C10", "note": METRIC_NOTE,
           "classifier": {"folder": str(a.classifier), "sha1": clf.fingerprint,
                          "test_accuracy": clf.info.get("test_accuracy")}}
    ref_label = None
    if a.floor:
        test = load_images(data, split="test", size=32)
        n = min(a.n or len(test), len(test))
        idx = np.sort(np.random.default_rng(a.seed).choice(len(test), n, replace=False)) if n < len(test) else np.arange(n)
        feats = extract_features(clf, test.images[idx], a.feature_batch_size, desc="features (test split)")
        remap = _class_map(test.class_names, clf.class_names, len(test.class_names), clf.num_classes)
        labels = None if remap is None else remap[test.labels[idx]]
        doc["samples"] = {"kind": "floor: CIFAR-10 test images", "n": int(n), "seed": a.seed}
    else:
        from .sampling.run import sample

        method_kw = _method(a, model)
        method_kw.pop("estimator") if a.method != "nag-est" else None    # no traces needed here
        images = []
        with tqdm(total=n * a.steps, desc=f"sampling {a.sampler} {a.steps} steps", unit="step") as bar:
            for start in range(0, n, a.batch_size):
                k = min(a.batch_size, n - start)
                try:
                    res = sample(model, sampler=a.sampler, steps=a.steps, seeds=[a.seed + start + i for i in range(k)],
                                 n=k, labels=None if label_list is None else label_list[start:start + k],
                                 schedule=a.schedule, progress=lambda r: bar.update(k), **method_kw,
                                 **({"eta": a.eta} if a.sampler == "ddim" else {}))
                except ValueError as e:
                    raise UserError(str(e)) from None
                images.append(to_uint8(res.images))   # 8 bits, as the reference images are
        feats = extract_features(clf, np.concatenate(images), a.feature_batch_size, desc="features (samples)")
        labels = None
        if label_list is not None:
            nc = model.num_classes
            to_clf = _class_map(model.class_names, clf.class_names, nc, clf.num_classes)
            to_ref = _class_map(model.class_names, ref.class_names, nc, len(ref.class_names))
            if to_clf is not None:
                labels = to_clf[np.array(label_list)]
            if not a.per_class:
                if to_ref is None:
                    raise UserError(f"cannot match {model.name}'s classes with the reference data's classes")
                ref_label = int(to_ref[label_list[0]])
        doc["samples"] = {"kind": "model samples", "model": model.name, "n": n, "seed": a.seed, "sampler": a.sampler,
                          "steps": a.steps, "schedule": a.schedule, "eta": a.eta if a.sampler == "ddim" else None,
                          "method": a.method, "cfg_scale": a.cfg_scale,
                          "class": "per-class" if a.per_class else _class_name(model, label_list)}
    ref_feats = ref.features if ref_label is None else ref.features[ref.labels == ref_label]
    doc["reference"] = {"data": str(data), "split": "train", "n": int(len(ref_feats)),
                        "class": None if ref_label is None else ref.class_names[ref_label]}
    doc["fid_c10"] = fid(feats, ref.stats(ref_label))
    doc["kid_c10_mean"], doc["kid_c10_std"] = kid(feats, ref_feats, subsets=a.kid_subsets,
                                                  subset_size=a.kid_subset_size, seed=a.seed)
    doc["kid_c10_subsets"], doc["kid_c10_subset_size"] = a.kid_subsets, min(a.kid_subset_size, n, len(ref_feats))
    if labels is not None:
        doc["accuracy"] = float((predict_from_features(clf, feats) == labels).mean())
    doc["seconds"] = round(time.time() - t0, 1)

    s = doc["samples"]
    what = (f"{s['n']} CIFAR-10 test images" if a.floor else
            f"{s['n']} samples of {s['model']} ({a.sampler}, {a.steps} steps, seed {a.seed}"
            + (f", class {s['class']}" if s["class"] is not None else "") + ")")
    r = doc["reference"]
    print(f"FID-C10 / KID-C10 ({METRIC_NOTE})")
    print(f"  {what} vs the train split" + (f" of class {r['class']}" if r["class"] else "") + f" ({r['n']} images)")
    print(f"  FID-C10  {doc['fid_c10']:.4f}")
    print(f"  KID-C10  {doc['kid_c10_mean']:.6f} ± {doc['kid_c10_std']:.6f}")
    if "accuracy" in doc:
        print(f"  accuracy {doc['accuracy']:.4f} (fraction the classifier assigns to their class)")
    if n < clf.feature_dim:
        print(f"  note: FID with fewer images ({n}) than feature dimensions ({clf.feature_dim}) is strongly biased")
    print("  FID depends on the number of images: compare only runs with equal --n")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(doc, indent=2))
        print(f"wrote {a.json}")


def _train_estimator(a):
    from .training.extras import train_estimator

    train_estimator(a.data, a.out, steps=a.steps, batch_size=a.batch_size, lr=a.lr, max_minutes=a.minutes,
                    threads=a.threads)


def _train_nlc(a):
    from .models.loading import ModelLoadError
    from .training.extras import train_nlc

    try:
        train_nlc(a.model, a.data, out=a.out, steps=a.steps, batch_size=a.batch_size, lr=a.lr,
                  max_minutes=a.minutes, threads=a.threads)
    except ModelLoadError as e:
        raise UserError(str(e)) from None


def _estimator_and_data(a, split: str):
    """(folder, estimator, images of ``split``) for the estimator commands, or a UserError."""
    from .evaluation.commands import _threads
    from .extras.estimator import load_estimator
    from .training.data import load_images

    _threads(a)
    folder = Path(a.estimator)
    try:
        return folder, load_estimator(folder), load_images(a.data, split=split)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from None


def _calibrate_estimator(a):
    import json

    from tqdm import tqdm

    from .evaluation.results import command_line
    from .extras.estimator import calibrate, save_estimator
    from .training.data import to_tensor

    if not 2 <= a.knots <= 1000 or a.images < 1:
        raise UserError("--knots must be from 2 to 1000 and --images at least 1")
    folder, est, ds = _estimator_and_data(a, "train")
    images = to_tensor(ds.images[: a.images])
    with tqdm(total=a.knots, desc="calibrating (sigma levels)", unit="level") as bar:
        fitted = calibrate(est, images, knots=a.knots, seed=a.seed, progress=bar.update)
    info = json.loads((folder / "config.json").read_text()).get("info", {})
    save_estimator(fitted, folder, {**info, "calibration": {
        "data": f"{a.data}:train", "images": len(images), "knots": a.knots, "seed": a.seed,
        "sigma": [0.01, 160.0], "command": command_line(a.parser, a)}})
    print(f"calibrated {folder}: {a.knots} levels from 0.01 to 160, {len(images)} train images each")


def _reference_level(a):
    import json

    import numpy as np

    from .evaluation.results import command_line
    from .extras.estimator import reference_level
    from .training.data import to_tensor

    if a.images < 10:
        raise UserError(f"--images must be at least 10, got {a.images}")
    folder, est, ds = _estimator_and_data(a, "test")
    # a seeded random subset: the split is stored class by class, so its first images are all airplanes
    pick = np.random.default_rng(a.seed).permutation(len(ds))[: a.images]
    ref = reference_level(est, to_tensor(ds.images[np.sort(pick)]))
    cfg = json.loads((folder / "config.json").read_text())
    cfg.setdefault("info", {})["reference"] = {**ref, "data": f"{Path(a.data).name}:test",
                                               "seed": a.seed, "command": command_line(a.parser, a)}
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    print(f"real images read {ref['p10']:.4f} / {ref['median']:.4f} / {ref['p90']:.4f} (p10 / median / p90, "
          f"{ref['images']} held-out test images); stored in {folder / 'config.json'}")


def _build_lut(a):
    from tqdm import tqdm

    from .evaluation.commands import _choices, _ints
    from .extras.nlc import load_level_net
    from .extras.nlc_table import build_table
    from .sampling.run import MAX_STEPS
    from .sampling.samplers import SAMPLERS

    samplers = _choices(a.samplers, "sampler", list(SAMPLERS))      # before loading anything
    steps = _ints(a.steps, "--steps", 1, MAX_STEPS)
    if a.n < 1:
        raise UserError(f"--n must be at least 1, got {a.n}")
    model = _load(a)
    nlc_dir = Path(a.nlc or Path(model.info["folder"]) / "nlc")
    try:
        net = load_level_net(nlc_dir, device=model.device)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from None
    labels = list(range(model.num_classes)) if model.num_classes else None
    with tqdm(total=len(samplers) * sum(steps) * a.n, desc=f"recording r on {a.trajectory} runs",
              unit="img-step") as bar:
        table = build_table(model, net, samplers=samplers, steps=steps, n=a.n, seed=a.seed, labels=labels,
                            progress=bar.update, trajectory=a.trajectory)
    out = Path(a.out or nlc_dir / "lut")
    table.save(out, {"model": model.name, "nlc": str(nlc_dir), "n": a.n, "seed": a.seed, "trajectory": a.trajectory})
    print(f"wrote the NLC lookup table to {out}")


def _restore(a):
    from .images import open_image, prepare_image, to_pil
    from .restoration.methods import degrade, restore
    from .restoration.operators import make_operator

    _check_early(a)
    if a.mask and a.task != "inpaint":
        raise UserError(f"--mask is for --task inpaint, not {a.task}")
    mask = open_image(a.mask, "mask") if a.mask else None       # before the model: a bad file fails fast
    model = _load(a)
    size = model.sample_shape[-1]
    x, note = prepare_image(a.input, size)
    if note:
        print(note)
    settings = {}
    if a.task == "inpaint":
        if mask is not None:
            settings["drawing"] = mask          # white (or opaque) pixels are the missing ones
        else:
            settings["mask"] = a.mask_kind
    if a.task == "deblur":
        settings["sigma"] = a.blur_sigma
    if a.task == "cs":
        settings["ratio"] = a.cs_ratio
    op = make_operator(a.task, size, **settings)
    y = degrade(op, x.to(model.device), a.sigma_y, seed=a.seed)
    correction = _restore_correction(a, model)
    res = restore(model, op, y, method=a.method, steps=a.steps, seed=a.seed, sigma_y=a.sigma_y, correction=correction,
                  **_restore_options(a))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = Path(a.input).stem
    to_pil(op.view(y))[0].save(out / f"{stem}_{a.task}_measured.png")
    to_pil(res.images)[0].save(out / f"{stem}_{a.task}_{a.method}.png")
    to_pil(x)[0].save(out / f"{stem}_reference.png")
    from .evaluation.metrics import psnr, ssim

    ref = x.to(res.images.device)
    try:
        ssim_text = f"{float(ssim(res.images, ref)):.4f}"
    except ValueError:                    # images smaller than SSIM's 11x11 window
        ssim_text = "n/a"
    print(f"{a.method}: PSNR {float(psnr(res.images, ref)):.2f} dB, SSIM {ssim_text}, "
          f"consistency {float(res.consistency.mean()):.2e}, {res.nfe_per_image:g} NFE; images in {out}")


def restore_method_args(p):
    """--eta, --grid, --tail-steps and --next-level, shared by `restore` and `evaluate restoration`
    (``_restore_options`` checks them)."""
    p.add_argument("--eta", type=float, default=0.85, help="DDIM stochasticity of every method (0.85: DDNM's "
                                                           "and the official IterProj's)")
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


def _restore_options(a) -> dict:
    """The restore_method_args options, checked here so a bad value is one message before any model loads."""
    import math

    if not (math.isfinite(a.eta) and 0 <= a.eta <= 1):
        raise UserError(f"--eta must be in [0, 1], got {a.eta}")
    if a.tail_steps is not None and not 0 <= a.tail_steps < a.steps:
        raise UserError(f"--tail-steps must be from 0 to --steps - 1 ({a.steps - 1}), got {a.tail_steps}")
    return {"eta": a.eta, "tail_steps": a.tail_steps, "grid": a.grid, "next_level": a.next_level}


def _restore_correction(a, model):
    """The correction inside the restoration loop: NLC for iterproj-nlc, else --method's."""
    from .methods import RESTORATION_PARAMS, setup

    method = "nlc" if a.method == "iterproj-nlc" else a.correction
    try:
        return setup(method, model, steps=a.steps, **RESTORATION_PARAMS).correction
    except (ValueError, FileNotFoundError) as e:
        raise UserError(str(e)) from None


def _evaluate_estimator(a):
    from .evaluation.estimator import estimator_reader
    from .extras.estimator import load_estimator

    try:
        est = load_estimator(a.estimator)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from None
    _decade_report(a, estimator_reader(est), {"estimator": a.estimator})


def _evaluate_nlc(a):
    from .evaluation.estimator import nlc_reader
    from .extras.nlc import load_level_net
    from .models.registry import extras_for

    model = _load(a)
    path = extras_for(model).get("nlc")
    if path is None:
        raise UserError(f"{model.name} has no NLC network (train one with `python -m noisecorr_app train nlc`)")
    _decade_report(a, nlc_reader(model, load_level_net(path, device=model.device)), {"model": model.name, "nlc": str(path)})


def _decade_report(a, reader, about: dict):
    """Per-decade error of a level reader on held-out forward-noised images: printed, and as JSON."""
    import json

    from .evaluation.commands import _threads
    from .evaluation.estimator import error_per_decade
    from .training.data import load_images, to_tensor

    _threads(a)
    try:
        ds = load_images(a.data, split="test")
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from None
    rows = error_per_decade(reader, to_tensor(ds.images[: a.images]), per_decade=a.n,
                            batch_size=getattr(a, "batch_size", 256))
    print(f"{'sigma':>12} {'bias (log)':>11} {'mean |log err|':>15} {'within 10%':>11}")
    for r in rows:
        print(f"{r['decade']:>12} {r['bias_log']:11.4f} {r['mean_abs_log_error']:15.4f} {r['within_10pct']:11.3f}")
    if a.json:
        Path(a.json).write_text(json.dumps({**about, "images": a.images, "per_decade": a.n, "rows": rows}, indent=1))


def _model_args(p):
    p.add_argument("--model", default=None, help="Hub repo id or local folder (default: the embedded model in weights/)")
    p.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) to pin")
    p.add_argument("--allow-pickle", action="store_true",
                   help="allow a pickle (.bin) checkpoint when no safetensors exist; read with weights_only=True")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: GPU if present)")
    p.add_argument("--fp16", action="store_true", help="half-precision weights on a GPU (ignored on the CPU)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m noisecorr_app",
                                description="Noise-shift corrections (NLC, NAG) for diffusion sampling and restoration.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from .sampling.samplers import SAMPLERS
    from .sampling.schedules import SCHEDULES

    sp = sub.add_parser("sample", help="generate images; optionally write the per-step trace as JSON")
    _model_args(sp)
    sp.add_argument("--sampler", choices=list(SAMPLERS), default="ddim")
    sp.add_argument("--steps", type=int, default=None,
                    help="1 to 1000 (default: the model's recommended step count, else 20)")
    sp.add_argument("--schedule", choices=list(SCHEDULES), default="model",
                    help="model: the model's own timesteps (trailing); loglinear; karras (EDM)")
    sp.add_argument("--eta", type=float, default=0.0, help="DDIM stochasticity (0 = deterministic)")
    sp.add_argument("--n", type=int, default=4, help="number of images")
    sp.add_argument("--seed", type=int, default=0, help="image i uses seed + i")
    sp.add_argument("--class", dest="class_", default=None, help="class index or name; 'any' for unconditional")
    _method_args(sp, recommended=True)
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
    es.add_argument("--json", default=None, help="also write the rows to this JSON file (for `card`)")
    es.set_defaults(func=_evaluate_speed)

    from .extras.classifier import DEFAULT_CLASSIFIER

    ef = esub.add_parser("fid", help="FID-C10 and KID-C10 of samples (our CIFAR-10 classifier's features; "
                                     "not comparable with Inception FID)")
    _model_args(ef)
    ef.add_argument("--n", type=int, default=None, help="images (default 1000 samples; all 10000 test images with --floor)")
    ef.add_argument("--class", dest="class_", default=None, help="class index or name (reference: that class's "
                                                                 "train images); 'any' for unconditional")
    ef.add_argument("--per-class", action="store_true", help="n/10 samples of each class, labels 0..9")
    ef.add_argument("--floor", action="store_true", help="score CIFAR-10 test images instead of samples (the floor)")
    ef.add_argument("--sampler", choices=list(SAMPLERS), default="ddim")
    ef.add_argument("--steps", type=int, default=50)
    ef.add_argument("--schedule", choices=list(SCHEDULES), default="model")
    ef.add_argument("--eta", type=float, default=0.0, help="DDIM stochasticity (0 = deterministic)")
    _method_args(ef)
    ef.add_argument("--seed", type=int, default=0, help="image i uses seed + i (--floor: the test subset's seed)")
    ef.add_argument("--batch-size", type=int, default=50, help="sampling batch size")
    ef.add_argument("--feature-batch-size", type=int, default=500)
    ef.add_argument("--classifier", default=str(DEFAULT_CLASSIFIER), help="classifier folder (train classifier --out)")
    ef.add_argument("--data", default=str(default_cifar10()), help="CIFAR-10 folder or tarball (train/ and test/)")
    ef.add_argument("--kid-subsets", type=int, default=100)
    ef.add_argument("--kid-subset-size", type=int, default=1000)
    ef.add_argument("--threads", type=int, default=None)
    ef.add_argument("--json", default=None, help="also write the results to this JSON file")
    ef.set_defaults(func=_evaluate_fid)

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

    c = tsub.add_parser("classifier", help="train the CIFAR-10 classifier behind FID-C10 (resumable)")
    c.add_argument("--data", default=str(default_cifar10()), help="image folder or tarball (class = parent folder name)")
    c.add_argument("--split", default="train", help="training images: those under a folder of this name")
    c.add_argument("--test-split", default="test", help="split scored at each checkpoint ('' for none)")
    c.add_argument("--out", required=True, help="classifier folder to write (resumes if it holds a checkpoint)")
    c.add_argument("--steps", type=int, default=7800, help="total steps (the cosine lr reaches 0 here); 390 = 1 epoch at 128")
    c.add_argument("--minutes", type=float, default=None, help="stop (with a checkpoint) after this long")
    c.add_argument("--batch-size", type=int, default=128)
    c.add_argument("--lr", type=float, default=2e-3, help="AdamW peak lr (warm-up, then cosine to 0)")
    c.add_argument("--weight-decay", type=float, default=5e-2)
    c.add_argument("--warmup", type=int, default=300)
    c.add_argument("--widths", default="32,64,128,256", help="channels of the 4 stages (ResNet-9 style)")
    c.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    c.add_argument("--checkpoint-minutes", type=float, default=15.0, help="also scores the test split each time")
    c.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    c.set_defaults(func=_train_classifier)
    cd = sub.add_parser("card", help="(re)write a trained denoiser's model card from its records and evaluation reports")
    cd.add_argument("--folder", default="weights/noisecorr-ddpm-cifar10")
    cd.add_argument("--command", required=True, help="the exact training command, as the card should show it")
    cd.add_argument("reports", nargs="*", help="`evaluate fid --json` / `evaluate speed --json` files")
    cd.add_argument("--no-samples", action="store_true", help="keep the sample grid as it is (it takes a minute)")
    cd.add_argument("--note", default="", help="a paragraph for the top of the card (the model's state, caveats)")
    cd.set_defaults(func=_card)
    _add_extra_commands(sub, tsub, esub)
    return p


def _add_extra_commands(sub, tsub, esub):
    from .restoration.methods import METHODS as RESTORE_METHODS
    from .restoration.operators import TASKS
    from .sampling.samplers import SAMPLERS

    e = tsub.add_parser("estimator", help="train the noise-level estimator g_phi on forward-noised images")
    e.add_argument("--data", default=str(default_cifar10()))
    e.add_argument("--out", default="weights/cifar10-noise-estimator")
    e.add_argument("--steps", type=int, default=20_000)
    e.add_argument("--batch-size", type=int, default=128)
    e.add_argument("--lr", type=float, default=1e-3)
    e.add_argument("--minutes", type=float, default=None)
    e.add_argument("--threads", type=int, default=None)
    e.set_defaults(func=_train_estimator)

    n = tsub.add_parser("nlc", help="train NLC's r_theta on a frozen denoiser's bottleneck features")
    n.add_argument("--model", default=None, help="Hub id or folder (default: the embedded model)")
    n.add_argument("--data", default=str(default_cifar10()))
    n.add_argument("--out", default=None, help="default: <model folder>/nlc")
    n.add_argument("--steps", type=int, default=20_000)
    n.add_argument("--batch-size", type=int, default=64)
    n.add_argument("--lr", type=float, default=3e-4)
    n.add_argument("--minutes", type=float, default=None)
    n.add_argument("--threads", type=int, default=None)
    n.set_defaults(func=_train_nlc)

    c = sub.add_parser("calibrate-estimator",
                       help="make the noise-level estimator's median reading exact on forward-noised train images")
    c.add_argument("--estimator", default="weights/cifar10-noise-estimator")
    c.add_argument("--data", default=str(default_cifar10()))
    c.add_argument("--images", type=int, default=1000, help="train images, each noised at every level")
    c.add_argument("--knots", type=int, default=49, help="log-spaced sigma levels from 0.01 to 160")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--threads", type=int, default=None)
    c.set_defaults(func=_calibrate_estimator, parser=c)

    rl = sub.add_parser("reference-level", help="store the noise-level estimator's reading of real held-out "
                                                "images: the reference for the leftover noise of generated ones")
    rl.add_argument("--estimator", default="weights/cifar10-noise-estimator")
    rl.add_argument("--data", default=str(default_cifar10()))
    rl.add_argument("--images", type=int, default=5000, help="N random images of the test split (default: 5000)")
    rl.add_argument("--seed", type=int, default=0, help="picks the N images")
    rl.add_argument("--threads", type=int, default=None)
    rl.set_defaults(func=_reference_level, parser=rl)

    b = sub.add_parser("build-lut", help="record NLC's average correction as a lookup table")
    _model_args(b)
    b.add_argument("--nlc", default=None, help="NLC folder (default: <model folder>/nlc)")
    b.add_argument("--samplers", default=",".join(SAMPLERS))
    b.add_argument("--steps", default="10,20,50", help="step counts to record (comma-separated)")
    b.add_argument("--n", type=int, default=256, help="images per sampler and step count")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--trajectory", choices=("nlc", "baseline"), default="nlc",
                   help="record the r NLC applies on its own runs (closed loop, default) or r_theta's reading "
                        "of baseline runs (open loop: over-corrects once applied)")
    b.add_argument("--out", default=None, help="default: <nlc folder>/lut")
    b.set_defaults(func=_build_lut)

    r = sub.add_parser("restore", help="restore one image: super-resolution, inpainting, deblur, colorize, CS")
    _model_args(r)
    r.add_argument("--task", choices=list(TASKS), required=True, help="; ".join(f"{k}: {v}" for k, v in TASKS.items()))
    r.add_argument("--input", required=True, help="the clean image (it is degraded, then restored)")
    r.add_argument("--method", choices=list(RESTORE_METHODS), default="iterproj")
    r.add_argument("--correction", choices=["none", "es", "ts", "self"], default="none",
                   help="training-free correction inside iterproj")
    r.add_argument("--sigma-y", type=float, default=0.0, help="measurement noise in [0, 0.2] (0..1 pixel units)")
    r.add_argument("--mask", default=None, help="inpainting: mask image; white (or, with transparency, opaque) "
                                                "pixels are the missing ones")
    r.add_argument("--mask-kind", default="box", choices=["box", "random", "half"])
    r.add_argument("--blur-sigma", type=float, default=3.0)
    r.add_argument("--cs-ratio", type=float, default=0.25)
    r.add_argument("--steps", type=int, default=100)
    restore_method_args(r)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--out", required=True)
    r.set_defaults(func=_restore)

    ee = esub.add_parser("estimator", help="the noise-level estimator's error per decade of sigma (held-out images)")
    ee.add_argument("--estimator", default="weights/cifar10-noise-estimator")
    ee.add_argument("--data", default=str(default_cifar10()))
    ee.add_argument("--images", type=int, default=2000, help="test images to draw from")
    ee.add_argument("--n", type=int, default=512, help="noised images per decade")
    ee.add_argument("--json", default=None)
    ee.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    ee.set_defaults(func=_evaluate_estimator)

    en = esub.add_parser("nlc", help="NLC's r_theta as a level reader: its error per decade of sigma on held-out "
                                     "forward-noised images (told the true sigma)")
    _model_args(en)
    en.add_argument("--data", default=str(default_cifar10()))
    en.add_argument("--images", type=int, default=2000, help="test images to draw from")
    en.add_argument("--n", type=int, default=512, help="noised images per decade")
    en.add_argument("--batch-size", type=int, default=64)
    en.add_argument("--json", default=None)
    en.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    en.set_defaults(func=_evaluate_nlc)

    from .evaluation.commands import generation_command, restoration_command
    from .extras.classifier import DEFAULT_CLASSIFIER
    from .methods import METHODS as GEN_METHODS
    from .sampling.schedules import SCHEDULES

    def benchmark_output(p, name):
        p.add_argument("--json", default=f"runs/{name}.json",
                       help="results, written after every cell; a rerun with the same file resumes")
        p.add_argument("--fresh", action="store_true", help="start --json over instead of resuming")
        p.add_argument("--markdown", default=None, help="also write the table, with its command, here")
        p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")

    g = esub.add_parser("generation", help="benchmark: samplers x steps x methods -> FID-C10, KID, noise shift, "
                                           "NFE, seconds per image (resumable)")
    _model_args(g)
    g.add_argument("--samplers", default=",".join(SAMPLERS), help="comma-separated")
    g.add_argument("--steps", default="10,20,50", help="comma-separated step counts")
    g.add_argument("--methods", default=",".join(GEN_METHODS),
                   help="comma-separated; those the model cannot run are skipped and listed in the JSON")
    g.add_argument("--n", type=int, default=1000, help="images per cell (the same seeds in every cell)")
    g.add_argument("--seed", type=int, default=0, help="image i uses seed + i")
    g.add_argument("--class", dest="class_", default=None, help="class index or name (reference: that class's "
                                                                "train images); 'any' for unconditional")
    g.add_argument("--per-class", action="store_true", help="n/classes samples of each class")
    g.add_argument("--schedule", choices=list(SCHEDULES), default="model")
    g.add_argument("--eta", type=float, default=0.0, help="DDIM stochasticity (0 = deterministic)")
    weight_args(g)
    g.add_argument("--nlc-mode", choices=["reuse", "official"], default="reuse")
    clip_arg(g)
    g.add_argument("--batch-size", type=int, default=50)
    g.add_argument("--feature-batch-size", type=int, default=500)
    g.add_argument("--classifier", default=str(DEFAULT_CLASSIFIER), help="FID-C10 classifier folder")
    g.add_argument("--data", default=str(default_cifar10()), help="CIFAR-10 folder or tarball (reference: train/)")
    g.add_argument("--kid-subsets", type=int, default=100)
    g.add_argument("--kid-subset-size", type=int, default=1000)
    g.add_argument("--plots", default=None, help="folder for fid_vs_steps.png and noise_shift_<sampler>_<steps>.png")
    benchmark_output(g, "evaluate-generation")
    g.set_defaults(func=generation_command, parser=g)

    rb = esub.add_parser("restoration", help="benchmark: tasks x sigma_y x methods -> PSNR, SSIM, consistency, "
                                             "NFE, seconds per image (resumable)")
    _model_args(rb)
    rb.add_argument("--tasks", default="sr4,inpaint,deblur,colorize,cs", help="comma-separated")
    rb.add_argument("--methods", default=",".join(RESTORE_METHODS), help="comma-separated")
    rb.add_argument("--sigma-y", default="0,0.05", help="comma-separated measurement noise levels in [0, 0.2]")
    rb.add_argument("--images", default=None, help="folder of images (default: random CIFAR-10 test images)")
    rb.add_argument("--data", default=str(default_cifar10()), help="CIFAR-10 tarball or folder, used without --images")
    rb.add_argument("--n", type=int, default=200, help="images")
    rb.add_argument("--steps", type=int, default=100, help="network-evaluation budget per image")
    restore_method_args(rb)
    rb.add_argument("--seed", type=int, default=0)
    rb.add_argument("--batch-size", type=int, default=20)
    rb.add_argument("--mask-kind", default="box", choices=["box", "random", "half"])
    rb.add_argument("--blur-sigma", type=float, default=3.0)
    rb.add_argument("--cs-ratio", type=float, default=0.25)
    benchmark_output(rb, "evaluate-restoration")
    rb.set_defaults(func=restoration_command, parser=rb)


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
