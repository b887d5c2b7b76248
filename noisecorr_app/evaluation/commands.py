"""``evaluate generation`` and ``evaluate restoration``: parsed arguments -> the benchmarks -> JSON,
Markdown and plots. The argparse options are declared in ``cli._add_extra_commands``; model loading,
class names and user-facing errors reuse the CLI's own helpers."""
from __future__ import annotations

from pathlib import Path


def _ints(text: str, what: str, lo: int, hi: int) -> list[int]:
    from ..cli import UserError

    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{what} takes comma-separated whole numbers, got '{text}'") from None
    if not vals or not all(lo <= v <= hi for v in vals):
        raise UserError(f"{what} must be whole numbers from {lo} to {hi}, got '{text}'")
    return list(dict.fromkeys(vals))


def _choices(text: str, what: str, valid) -> list[str]:
    from ..cli import UserError

    vals = list(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
    bad = [v for v in vals if v not in valid]
    if bad or not vals:
        raise UserError(f"unknown {what} {', '.join(bad) or '(none given)'}: choose from {', '.join(valid)}")
    return vals


def _open_table(a, key, settings, header):
    from ..cli import UserError
    from .results import ResultsFile, SettingsChanged

    try:
        return ResultsFile(a.json, key, settings, header, fresh=a.fresh)
    except SettingsChanged as e:
        raise UserError(str(e)) from None


def _write_markdown(path, title, command, table, notes):
    from .results import markdown_document

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(markdown_document(title, command, table, notes))


def _threads(a):
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)


GENERATION_COLUMNS = [("sampler", "sampler", ""), ("steps", "steps", "d"), ("method", "method", ""),
                      ("FID-C10", "fid", ".2f"), ("KID-C10", "kid", ".4f"),
                      ("leftover median", "leftover_median", ".4f"), ("leftover p90", "leftover_p90", ".4f"),
                      ("> real p90", "share_above_real_p90", ".1%"), ("per-image shift", "per_image_shift", ".4f"),
                      ("systematic shift", "noise_shift", ".4f"),
                      ("NFE", "nfe", ".3g"), ("s / image", "seconds_per_image", ".3f"), ("n", "n", "d")]
RESTORATION_COLUMNS = [("task", "task", ""), ("sigma_y", "sigma_y", "g"), ("method", "method", ""),
                       ("PSNR (dB)", "psnr", ".2f"), ("SSIM", "ssim", ".4f"), ("consistency", "consistency", ".2e"),
                       ("NFE", "nfe", ".3g"), ("s / image", "seconds_per_image", ".3f"), ("n", "n", "d")]


def generation_command(a):
    import numpy as np

    from ..cli import UserError, _class_index, _class_map, _load, _load_classifier, clip_choice
    from ..methods import METHODS, check_params, load_estimator_for, recommendations
    from ..sampling.run import MAX_STEPS
    from ..sampling.samplers import SAMPLERS
    from .generation import KEY, Reference, evaluate_generation
    from .metrics import METRIC_NOTE, feature_stats, reference_features
    from .plots import write_generation_plots
    from .results import command_line, markdown_table, weights_fingerprint

    _threads(a)
    samplers = _choices(a.samplers, "sampler", list(SAMPLERS))
    steps = _ints(a.steps, "--steps", 1, MAX_STEPS)
    methods = _choices(a.methods, "method", list(METHODS))
    try:                        # a NaN weight is refused now, not after the reference features
        check_params(nag_scale=a.nag_scale, nag_est_scale=a.nag_est_scale, es_lambda=a.es_lambda, eta=a.eta)
    except ValueError as e:
        raise UserError(str(e)) from None
    if a.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {a.batch_size}")
    if not 2 <= a.n <= 50_000:
        raise UserError("--n must be between 2 and 50000 (FID needs at least 2 images)")
    if a.per_class and a.class_ is not None:
        raise UserError("give either --class or --per-class")
    data = Path(a.data)
    if not data.exists():
        raise UserError(f"no CIFAR-10 data at {data}: pass --data with the CIFAR-10 folder or tarball")
    clf = _load_classifier(a.classifier, a.device)
    model = _load(a)
    labels, class_spec = None, None
    if a.per_class:
        if not getattr(model, "num_classes", None):
            raise UserError(f"{model.name} is unconditional: --per-class needs a class-conditional model")
        labels, class_spec = [i % model.num_classes for i in range(a.n)], "per-class"
    label = None if a.per_class else _class_index(model, a.class_)
    if label is not None:
        labels, class_spec = [label] * a.n, model.class_names[label] if model.class_names else label
    given = {"nag_scale": a.nag_scale, "nag_est_scale": a.nag_est_scale, "es_lambda": a.es_lambda}
    params = {**{k: v for k, v in given.items() if v is not None}, "nlc_mode": a.nlc_mode}
    try:                        # the weights in force (numbers, or {steps: weight} as the model recommends)
        recorded = {k: recommendations(model)[k] if v is None else v for k, v in given.items()}
    except ValueError as e:
        raise UserError(str(e)) from None
    settings = {"model": model.name, "weights": weights_fingerprint(model), "classifier": clf.fingerprint,
                "reference": f"{data}:train", "n": a.n, "seed": a.seed, "class": class_spec, "schedule": a.schedule,
                "eta": a.eta, "x0_clip": a.x0_clip, "method_params": {**recorded, "nlc_mode": a.nlc_mode},
                "batch_size": a.batch_size, "device": str(model.device),
                "kid_subsets": a.kid_subsets, "kid_subset_size": a.kid_subset_size}
    command = command_line(a.parser, a)
    # opened before the long part, so that a file of other settings is refused at once
    table = _open_table(a, KEY, settings, {"benchmark": "generation", "command": command, "model": model.name,
                                           "note": METRIC_NOTE})
    ref = reference_features(clf, data, split="train", batch_size=a.feature_batch_size)
    feats = ref.features
    if label is not None:       # one class: scored against that class's train images, as `evaluate fid`
        to_ref = _class_map(model.class_names, ref.class_names, model.num_classes, len(ref.class_names))
        if to_ref is None:
            raise UserError(f"cannot match {model.name}'s classes with the reference data's classes")
        feats = ref.features[ref.labels == int(to_ref[label])]
    rows = evaluate_generation(model, clf, Reference(feature_stats(feats), np.asarray(feats)), table,
                               samplers=samplers, steps=steps, methods=methods, n=a.n, seed=a.seed,
                               batch_size=a.batch_size, labels=labels, schedule=a.schedule, eta=a.eta,
                               params=params, kid_subsets=a.kid_subsets, kid_subset_size=a.kid_subset_size,
                               clip_x0=clip_choice(a))
    text = markdown_table(GENERATION_COLUMNS, rows)
    estimator = load_estimator_for(model)
    est_ref = getattr(estimator, "reference", None)
    notes = [METRIC_NOTE,
             "leftover median / p90: the noise-level estimator's reading of the final images (real photos read "
             + (f"{est_ref['median']:.4f} / {est_ref['p90']:.4f}" if est_ref else "-") + "); > real p90: the share "
             "of images noisier than 90% of real photos",
             "per-image shift: mean over images and steps of |log(sigma_est_i / sigma_scheduled)|, the final image "
             "counted against the real photos' 10-90% band; systematic shift: the same with sigma_est the median "
             "over the n images, final image left out ('-': the model has no estimator)",
             "s / image: sampling wall time per image (estimator readings for the noise shift excluded)"]
    notes += [f"skipped {s['what']}: {s['reason']}" for s in table.doc["skipped"]]
    if a.markdown:
        _write_markdown(a.markdown, f"Generation benchmark: {model.name}", command, text, notes)
    plots = write_generation_plots(rows, a.plots, est_ref) if a.plots and rows else []
    print(text)
    print(f"wrote {a.json}" + (f", {a.markdown}" if a.markdown else "")
          + (f" and {len(plots)} plots in {a.plots}" if plots else ""))


def restoration_command(a):
    from ..cli import UserError, _load
    from ..restoration.methods import METHODS, SIGMA_Y_MAX
    from ..restoration.operators import TASKS
    from ..sampling.run import MAX_STEPS
    from .restoration import KEY, evaluate_restoration, load_eval_images
    from .results import command_line, markdown_table, weights_fingerprint

    _threads(a)
    tasks = _choices(a.tasks, "task", [t for t in TASKS if t != "sr"])
    methods = _choices(a.methods, "restoration method", list(METHODS))
    try:
        sigma_ys = list(dict.fromkeys(float(s) for s in a.sigma_y.split(",") if s.strip()))
    except ValueError:
        raise UserError(f"--sigma-y takes comma-separated numbers, got '{a.sigma_y}'") from None
    if not sigma_ys or not all(0 <= s <= SIGMA_Y_MAX for s in sigma_ys):
        raise UserError(f"--sigma-y values must lie in [0, {SIGMA_Y_MAX}], got '{a.sigma_y}'")
    if not 1 <= a.n <= 10_000:
        raise UserError("--n must be between 1 and 10000")
    if not 1 <= a.steps <= MAX_STEPS:
        raise UserError(f"--steps must be from 1 to {MAX_STEPS}")
    if a.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {a.batch_size}")
    from ..cli import _restore_options
    options = _restore_options(a)
    model = _load(a)
    if model.sample_shape[0] != 3:
        raise UserError(f"{model.name} makes {model.sample_shape[0]}-channel images: the benchmark needs an RGB model")
    try:
        x, source, note = load_eval_images(a.images, a.n, model.sample_shape[-1], seed=a.seed, cifar=a.data)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from None
    if note:
        print(note)
    task_settings = {"inpaint": {"mask": a.mask_kind}, "deblur": {"sigma": a.blur_sigma}, "cs": {"ratio": a.cs_ratio}}
    task_settings = {t: s for t, s in task_settings.items() if t in tasks}
    settings = {"model": model.name, "weights": weights_fingerprint(model), "images": source, "n": len(x),
                "seed": a.seed, "steps": a.steps, "task_settings": task_settings, "batch_size": a.batch_size, **options,
                "device": str(model.device)}
    command = command_line(a.parser, a)
    table = _open_table(a, KEY, settings, {"benchmark": "restoration", "command": command, "model": model.name})
    rows = evaluate_restoration(model, x, table, tasks=tasks, methods=methods, sigma_ys=sigma_ys, steps=a.steps,
                                seed=a.seed, batch_size=a.batch_size, task_settings=task_settings, **options)
    text = markdown_table(RESTORATION_COLUMNS, rows)
    notes = [f"images: {source}" + (f" ({note})" if note else ""),
             "PSNR/SSIM on [0, 1] pixels, averaged over the images; consistency: mean ||A x - y|| (model's "
             "[-1, 1] space) of the returned images; sigma_y in [0, 1] pixel units",
             f"equal budget: {a.steps} network evaluations per image for every method"]
    notes += [f"skipped {s['what']}: {s['reason']}" for s in table.doc["skipped"]]
    if a.markdown:
        _write_markdown(a.markdown, f"Restoration benchmark: {model.name}", command, text, notes)
    print(text)
    print(f"wrote {a.json}" + (f" and {a.markdown}" if a.markdown else ""))
