"""``evaluate speed | fid | generation | restoration``: measurements, printed and written as JSON
(the benchmarks also as Markdown tables and plots). The computing is library code (``evaluation``)."""
from __future__ import annotations

import json
import time
from pathlib import Path

from ..training.data import default_cifar10
from ..methods import method_params
from .common import UserError, check_early, choices, class_index, clip_arg, clip_choice, given_params, ints, load, \
    load_classifier, method_args, model_args, open_table, param_arg, sampler_options, threads, \
    threads_arg, write_markdown

GENERATION_COLUMNS = [("sampler", "sampler", ""), ("steps", "steps", "d"), ("method", "method", ""),
                      ("FID-C10", "fid", ".2f"), ("KID-C10", "kid", ".4f"),
                      ("leftover median", "leftover_median", ".4f"), ("leftover p90", "leftover_p90", ".4f"),
                      ("> real p90", "share_above_real_p90", ".1%"), ("per-image shift", "per_image_shift", ".4f"),
                      ("systematic shift", "noise_shift", ".4f"),
                      ("NFE", "nfe", ".3g"), ("s / image", "seconds_per_image", ".3f"), ("n", "n", "d")]
RESTORATION_COLUMNS = [("task", "task", ""), ("sigma_y", "sigma_y", "g"), ("method", "method", ""),
                       ("PSNR (dB)", "psnr", ".2f"), ("SSIM", "ssim", ".4f"), ("consistency", "consistency", ".2e"),
                       ("NFE", "nfe", ".3g"), ("s / image", "seconds_per_image", ".3f"), ("n", "n", "d")]


def add_parser(sub):
    """`evaluate` and its speed / fid / generation / restoration subcommands; returns the subparsers
    (levels.py adds `evaluate estimator | nlc`)."""
    ev = sub.add_parser("evaluate", help="measure speed, sample quality or restoration quality")
    esub = ev.add_subparsers(dest="what", required=True, metavar="WHAT")
    for add in (_speed_parser, _fid_parser, _generation_parser, _restoration_parser):
        add(esub)
    return esub


def _scoring_args(p):
    from ..extras.classifier import DEFAULT_CLASSIFIER
    from ..sampling.schedules import SCHEDULES

    p.add_argument("--feature-batch-size", type=int, default=500)
    p.add_argument("--classifier", default=str(DEFAULT_CLASSIFIER), help="FID-C10 classifier folder")
    p.add_argument("--data", default=str(default_cifar10()), help="CIFAR-10 folder or tarball (reference: train/)")
    p.add_argument("--kid-subsets", type=int, default=100)
    p.add_argument("--kid-subset-size", type=int, default=1000)
    p.add_argument("--class", dest="class_", default=None, help="class index or name (reference: that class's "
                                                                "train images); 'any' for unconditional")
    p.add_argument("--per-class", action="store_true", help="n/classes samples of each class")
    p.add_argument("--schedule", choices=list(SCHEDULES), default="model")
    param_arg(p, "eta", default=0.0)
    threads_arg(p)


def _benchmark_output(p, name):
    p.add_argument("--json", default=f"runs/{name}.json",
                   help="results, written after every cell; a rerun with the same file resumes")
    p.add_argument("--fresh", action="store_true", help="start --json over instead of resuming")
    p.add_argument("--markdown", default=None, help="also write the table, with its command, here")


def _speed_parser(esub):
    from ..sampling.samplers import SAMPLERS

    es = esub.add_parser("speed", help="wall time per step and the sampling loop's overhead beyond the network")
    model_args(es)
    es.add_argument("--samplers", default=",".join(SAMPLERS))
    es.add_argument("--steps", type=int, default=20)
    es.add_argument("--batch", type=int, default=1)
    threads_arg(es)
    es.add_argument("--json", default=None, help="also write the rows to this JSON file (for `card`)")
    es.set_defaults(func=speed)


def _fid_parser(esub):
    from ..sampling.samplers import SAMPLERS

    ef = esub.add_parser("fid", help="FID-C10 and KID-C10 of samples (our CIFAR-10 classifier's features; "
                                     "not comparable with Inception FID)")
    model_args(ef)
    ef.add_argument("--n", type=int, default=None, help="images (default 1000 samples; all 10000 test images with --floor)")
    ef.add_argument("--floor", action="store_true", help="score CIFAR-10 test images instead of samples (the floor)")
    ef.add_argument("--sampler", choices=list(SAMPLERS), default="ddim")
    ef.add_argument("--steps", type=int, default=50)
    method_args(ef)
    ef.add_argument("--seed", type=int, default=0, help="image i uses seed + i (--floor: the test subset's seed)")
    ef.add_argument("--batch-size", type=int, default=50, help="sampling batch size")
    _scoring_args(ef)
    ef.add_argument("--json", default=None, help="also write the results to this JSON file")
    ef.set_defaults(func=fid)


def _generation_parser(esub):
    from ..methods import METHODS
    from ..sampling.samplers import SAMPLERS

    g = esub.add_parser("generation", help="benchmark: samplers x steps x methods -> FID-C10, KID, noise shift, "
                                           "NFE, seconds per image (resumable)")
    model_args(g)
    g.add_argument("--samplers", default=",".join(SAMPLERS), help="comma-separated")
    g.add_argument("--steps", default="10,20,50", help="comma-separated step counts")
    g.add_argument("--methods", default=",".join(METHODS),
                   help="comma-separated; those the model cannot run are skipped and listed in the JSON")
    g.add_argument("--n", type=int, default=1000, help="images per cell (the same seeds in every cell)")
    g.add_argument("--seed", type=int, default=0, help="image i uses seed + i")
    for key in method_params():
        param_arg(g, key)
    clip_arg(g)
    g.add_argument("--batch-size", type=int, default=50)
    _scoring_args(g)
    g.add_argument("--plots", default=None, help="folder for fid_vs_steps.png and noise_shift_<sampler>_<steps>.png")
    _benchmark_output(g, "evaluate-generation")
    g.set_defaults(func=generation, parser=g)


def _restoration_parser(esub):
    from ..restoration.tasks import RESTORATION_METHODS, TASKS
    from .restore import method_args as restore_method_args, task_args

    rb = esub.add_parser("restoration", help="benchmark: tasks x sigma_y x methods -> PSNR, SSIM, consistency, "
                                             "NFE, seconds per image (resumable)")
    model_args(rb)
    rb.add_argument("--tasks", default=",".join(k for k, t in TASKS.items() if t.benchmark == "default"),
                    help="comma-separated: " + ", ".join(k for k, t in TASKS.items() if t.benchmark != "no"))
    rb.add_argument("--methods", default=",".join(RESTORATION_METHODS), help="comma-separated")
    rb.add_argument("--sigma-y", default="0,0.05", help="comma-separated measurement noise levels in [0, 0.2]")
    rb.add_argument("--images", default=None, help="folder of images (default: random CIFAR-10 images of --split)")
    rb.add_argument("--split", default="test", choices=["train", "test"],
                    help="CIFAR-10 split without --images: train to choose settings on (validation), test to report")
    rb.add_argument("--data", default=str(default_cifar10()), help="CIFAR-10 tarball or folder, used without --images")
    rb.add_argument("--n", type=int, default=200, help="images")
    rb.add_argument("--steps", type=int, default=100, help="network-evaluation budget per image")
    restore_method_args(rb)
    rb.add_argument("--seed", type=int, default=0)
    rb.add_argument("--batch-size", type=int, default=20)
    task_args(rb, [t for t in TASKS.values() if t.benchmark != "no"])
    threads_arg(rb)
    _benchmark_output(rb, "evaluate-restoration")
    rb.set_defaults(func=restoration, parser=rb)


def speed(a):
    import torch

    from ..evaluation.speed import loop_overhead
    from ..sampling.samplers import SAMPLERS

    threads(a)
    samplers = choices(a.samplers, "sampler", list(SAMPLERS))
    check_early(a)
    model = load(a)
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


def _check_scoring(a, n_max: int = 50_000):
    if a.n is not None and not 2 <= a.n <= n_max:
        raise UserError(f"--n must be between 2 and {n_max} (FID needs at least 2 images)")
    if a.per_class and a.class_ is not None:
        raise UserError("give either --class or --per-class")
    if not Path(a.data).exists():
        raise UserError(f"no CIFAR-10 data at {a.data}: pass --data with the CIFAR-10 folder or tarball "
                        "(class folders under train/ and test/)")


def _labels(a, model, n: int):
    """(a label per image or None, how the run's class is recorded)."""
    if a.per_class:
        if not model.num_classes:
            raise UserError(f"{model.name} is unconditional: --per-class needs a class-conditional model")
        if n < model.num_classes:
            raise UserError(f"--per-class needs --n of at least {model.num_classes}")
        return [i % model.num_classes for i in range(n)], "per-class"
    label = class_index(model, a.class_)
    if label is None:
        return None, None
    return [label] * n, model.class_names[label] if model.class_names else label


def fid(a):
    from tqdm import tqdm

    from ..evaluation import fid as scoring
    from ..evaluation.metrics import METRIC_NOTE, extract_features, reference_features
    from ..training.data import load_images
    from .common import method_kwargs

    threads(a)
    _check_scoring(a)
    check_early(a)
    if a.floor and (a.class_ is not None or a.per_class):
        raise UserError("--floor compares the test split with the train split: it takes no --class/--per-class")
    t0 = time.time()
    clf = load_classifier(a.classifier, a.device)
    doc = {"metric": "FID-C10", "note": METRIC_NOTE,
           "classifier": {"folder": str(a.classifier), "sha1": clf.fingerprint,
                          "test_accuracy": clf.info.get("test_accuracy")}}
    if a.floor:
        test = load_images(a.data, split="test", size=32)
        n = min(a.n or len(test), len(test))
        ref = reference_features(clf, Path(a.data), split="train", batch_size=a.feature_batch_size)
        feats, labels = scoring.test_split_features(clf, test, n, a.seed, a.feature_batch_size)
        ref_label = None
        doc["samples"] = {"kind": "floor: CIFAR-10 test images", "n": int(n), "seed": a.seed}
    else:                # the model and its labels are resolved before any long computation
        model = load(a)
        n = a.n or 1000
        label_list, class_spec = _labels(a, model, n)
        ref = reference_features(clf, Path(a.data), split="train", batch_size=a.feature_batch_size)
        method_kw = method_kwargs(a, model)
        method_kw.pop("estimator")     # no traces needed here
        with tqdm(total=n * a.steps, desc=f"sampling {a.sampler} {a.steps} steps", unit="step") as bar:
            images = scoring.sample_uint8(model, n, a.batch_size, a.seed, label_list, bar.update, sampler=a.sampler,
                                          steps=a.steps, schedule=a.schedule, **method_kw, **sampler_options(a))
        feats = extract_features(clf, images, a.feature_batch_size, desc="features (samples)")
        labels, ref_label = scoring.sample_labels(model, clf, ref, label_list, a.per_class)
        doc["samples"] = {"kind": "model samples", "model": model.name, "n": n, "seed": a.seed, "sampler": a.sampler,
                          "steps": a.steps, "schedule": a.schedule, "eta": a.eta if a.sampler == "ddim" else None,
                          "method": a.method, "cfg_scale": a.cfg_scale,
                          "class": "per-class" if a.per_class else scoring.class_name(model, label_list)}
    s = scoring.scores(clf, feats, ref, ref_label, labels, a.kid_subsets, a.kid_subset_size, a.seed)
    doc["reference"] = {"data": str(a.data), "split": "train", "n": s.pop("reference_n"),
                        "class": None if ref_label is None else ref.class_names[ref_label]}
    doc.update(s)
    doc["seconds"] = round(time.time() - t0, 1)
    _print_fid(a, doc, n, clf.feature_dim)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(doc, indent=2))
        print(f"wrote {a.json}")


def _print_fid(a, doc, n, feature_dim):
    from ..evaluation.metrics import METRIC_NOTE

    s, r = doc["samples"], doc["reference"]
    what = (f"{s['n']} CIFAR-10 test images" if a.floor else
            f"{s['n']} samples of {s['model']} ({a.sampler}, {a.steps} steps, seed {a.seed}"
            + (f", class {s['class']}" if s["class"] is not None else "") + ")")
    print(f"FID-C10 / KID-C10 ({METRIC_NOTE})")
    print(f"  {what} vs the train split" + (f" of class {r['class']}" if r["class"] else "") + f" ({r['n']} images)")
    print(f"  FID-C10  {doc['fid_c10']:.4f}")
    print(f"  KID-C10  {doc['kid_c10_mean']:.6f} ± {doc['kid_c10_std']:.6f}")
    if "accuracy" in doc:
        print(f"  accuracy {doc['accuracy']:.4f} (fraction the classifier assigns to their class)")
    if n < feature_dim:
        print(f"  note: FID with fewer images ({n}) than feature dimensions ({feature_dim}) is strongly biased")
    print("  FID depends on the number of images: compare only runs with equal --n")


def generation(a):
    import numpy as np

    from ..evaluation.fid import class_map
    from ..evaluation.generation import KEY, Reference, evaluate_generation
    from ..evaluation.metrics import METRIC_NOTE, feature_stats, reference_features
    from ..evaluation.plots import write_generation_plots
    from ..parallel import count, is_main
    from ..evaluation.results import command_line, markdown_table, weights_fingerprint
    from ..methods import METHODS, level_reader_for, recommendations
    from ..sampling.run import MAX_STEPS
    from ..sampling.samplers import SAMPLERS

    threads(a)
    samplers = choices(a.samplers, "sampler", list(SAMPLERS))
    steps = ints(a.steps, "--steps", 1, MAX_STEPS)
    methods = choices(a.methods, "method", list(METHODS))
    check_early(a)        # a NaN weight is refused now, not after the reference features
    _check_scoring(a)
    clf = load_classifier(a.classifier, a.device)
    model = load(a)
    labels, class_spec = _labels(a, model, a.n)
    params = given_params(a)
    try:                  # the settings in force (numbers, or {steps: value} as the model recommends)
        recorded = {k: recommendations(model)[k] if k not in params else params[k] for k in method_params()}
    except ValueError as e:
        raise UserError(str(e)) from None
    settings = {"model": model.name, "weights": weights_fingerprint(model), "classifier": clf.fingerprint,
                "reference": f"{a.data}:train", "n": a.n, "seed": a.seed, "class": class_spec, "schedule": a.schedule,
                "eta": a.eta, "x0_clip": a.x0_clip, "method_params": recorded, "batch_size": a.batch_size,
                "device": str(model.device), "kid_subsets": a.kid_subsets, "kid_subset_size": a.kid_subset_size}
    command = command_line(a.parser, a)
    # opened before the long part, so that a file of other settings is refused at once
    table = open_table(a, KEY, settings, {"benchmark": "generation", "command": command, "model": model.name,
                                          "note": METRIC_NOTE})
    ref = reference_features(clf, Path(a.data), split="train", batch_size=a.feature_batch_size)
    feats = ref.features
    if labels is not None and not a.per_class:   # one class: scored against that class's train images
        to_ref = class_map(model.class_names, ref.class_names, model.num_classes, len(ref.class_names))
        if to_ref is None:
            raise UserError(f"cannot match {model.name}'s classes with the reference data's classes")
        feats = ref.features[ref.labels == int(to_ref[labels[0]])]
    rows = evaluate_generation(model, clf, Reference(feature_stats(feats), np.asarray(feats)), table,
                               samplers=samplers, steps=steps, methods=methods, n=a.n, seed=a.seed,
                               batch_size=a.batch_size, labels=labels, schedule=a.schedule, eta=a.eta,
                               params=params, kid_subsets=a.kid_subsets, kid_subset_size=a.kid_subset_size,
                               clip_x0=clip_choice(a))
    if not is_main():                    # under `accelerate launch`: the main process reports
        return
    if count() > 1:
        print(f"{count()} processes shared the batches")
    text = markdown_table(GENERATION_COLUMNS, rows)
    estimator = level_reader_for(model)
    est_ref = None if estimator is None else estimator.reference
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
        write_markdown(a.markdown, f"Generation benchmark: {model.name}", command, text, notes)
    plots = write_generation_plots(rows, a.plots, est_ref) if a.plots and rows else []
    print(text)
    print(f"wrote {a.json}" + (f", {a.markdown}" if a.markdown else "")
          + (f" and {len(plots)} plots in {a.plots}" if plots else ""))


def restoration(a):
    from ..evaluation.restoration import KEY, evaluate_restoration, load_eval_images
    from ..parallel import count, is_main
    from ..evaluation.results import command_line, markdown_table, weights_fingerprint
    from ..restoration.tasks import RESTORATION_METHODS, SIGMA_Y, TASKS
    from ..sampling.run import MAX_STEPS
    from .restore import method_options, task_values

    threads(a)
    tasks = choices(a.tasks, "task", [k for k, t in TASKS.items() if t.benchmark != "no"])
    methods = choices(a.methods, "restoration method", list(RESTORATION_METHODS))
    try:
        values = [float(s) for s in a.sigma_y.split(",") if s.strip()]
    except ValueError:
        values = []
    if not values:
        raise UserError(f"--sigma-y takes comma-separated numbers, got '{a.sigma_y}'")
    try:
        sigma_ys = list(dict.fromkeys(SIGMA_Y.check(v) for v in values))
    except ValueError as e:
        raise UserError(str(e)) from None
    if not 1 <= a.n <= 10_000:
        raise UserError("--n must be between 1 and 10000")
    if not 1 <= a.steps <= MAX_STEPS:
        raise UserError(f"--steps must be from 1 to {MAX_STEPS}")
    if a.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {a.batch_size}")
    options = method_options(a)
    task_settings = {t: s for t in tasks if (s := TASKS[t].operator_settings(task_values(a, TASKS[t])))}
    model = load(a)
    if model.sample_shape[0] != 3:
        raise UserError(f"{model.name} makes {model.sample_shape[0]}-channel images: the benchmark needs an RGB model")
    try:
        x, source, note = load_eval_images(a.images, a.n, model.sample_shape[-1], seed=a.seed, cifar=a.data,
                                           split=a.split)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from None
    if note:
        print(note)
    settings = {"model": model.name, "weights": weights_fingerprint(model), "images": source, "n": len(x),
                "seed": a.seed, "steps": a.steps, "task_settings": task_settings, "batch_size": a.batch_size, **options,
                "device": str(model.device)}
    command = command_line(a.parser, a)
    table = open_table(a, KEY, settings, {"benchmark": "restoration", "command": command, "model": model.name})
    rows = evaluate_restoration(model, x, table, tasks=tasks, methods=methods, sigma_ys=sigma_ys, steps=a.steps,
                                seed=a.seed, batch_size=a.batch_size, task_settings=task_settings, **options)
    if not is_main():                    # under `accelerate launch`: the main process reports
        return
    if count() > 1:
        print(f"{count()} processes shared the batches")
    text = markdown_table(RESTORATION_COLUMNS, rows)
    notes = [f"images: {source}" + (f" ({note})" if note else ""),
             "PSNR/SSIM on [0, 1] pixels, averaged over the images; consistency: mean ||A x - y|| (model's "
             "[-1, 1] space) of the returned images; sigma_y in [0, 1] pixel units",
             f"equal budget: {a.steps} network evaluations per image for every method"]
    notes += [f"skipped {s['what']}: {s['reason']}" for s in table.doc["skipped"]]
    if a.markdown:
        write_markdown(a.markdown, f"Restoration benchmark: {model.name}", command, text, notes)
    print(text)
    print(f"wrote {a.json}" + (f" and {a.markdown}" if a.markdown else ""))
