"""The noise-level readers: ``calibrate-estimator``, ``reference-level``, ``build-lut`` and
``evaluate estimator | nlc`` (each reader's error per decade of sigma)."""
from __future__ import annotations

import json
from pathlib import Path

from ..training.data import default_cifar10, default_photos
from .common import UserError, choices, ints, load, model_args, threads, threads_arg

ESTIMATOR = "weights/cifar10-noise-estimator"
PHOTO_CROPS = 400


def add_parsers(sub, esub):
    from ..sampling.samplers import SAMPLERS

    c = sub.add_parser("calibrate-estimator",
                       help="make the noise-level estimator's median reading exact on forward-noised train images")
    c.add_argument("--estimator", default=ESTIMATOR)
    c.add_argument("--data", default=str(default_cifar10()))
    c.add_argument("--images", type=int, default=1000, help="train images, each noised at every level")
    c.add_argument("--knots", type=int, default=49, help="log-spaced sigma levels from 0.01 to 160")
    c.add_argument("--seed", type=int, default=0)
    threads_arg(c)
    c.set_defaults(func=calibrate_estimator, parser=c)

    rl = sub.add_parser("reference-level", help="store the noise-level estimator's reading of real held-out "
                                                "images: the reference for the leftover noise of generated ones")
    rl.add_argument("--estimator", default=ESTIMATOR)
    rl.add_argument("--wavelet", action="store_true",
                    help="instead: the wavelet reading's (any model), per --sizes: CIFAR-10 test images at 32 pixels, "
                         "crops of --photos at the others")
    rl.add_argument("--sizes", default="32,64,128,256", help="with --wavelet: image sizes")
    rl.add_argument("--photos", default=str(default_photos()), help="with --wavelet: a folder of photos")
    rl.add_argument("--data", default=str(default_cifar10()))
    rl.add_argument("--images", type=int, default=5000, help="N random images of the test split (default: 5000)")
    rl.add_argument("--seed", type=int, default=0, help="picks the N images")
    threads_arg(rl)
    rl.set_defaults(func=reference_level, parser=rl)

    b = sub.add_parser("build-lut", help="record NLC's average correction as a lookup table")
    model_args(b)
    b.add_argument("--samplers", default=",".join(SAMPLERS))
    b.add_argument("--steps", default="10,20,50", help="step counts to record (comma-separated)")
    b.add_argument("--n", type=int, default=256, help="images per sampler and step count")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--trajectory", choices=("nlc", "baseline"), default="nlc",
                   help="record the r NLC applies on its own runs (closed loop, default) or r_theta's reading "
                        "of baseline runs (open loop: over-corrects once applied)")
    b.add_argument("--out", default=None, help="default: <nlc folder>/lut")
    b.set_defaults(func=build_lut)

    ee = esub.add_parser("estimator", help="the noise-level estimator's error per decade of sigma (held-out images)")
    ee.add_argument("--estimator", default=ESTIMATOR)
    ee.add_argument("--wavelet", action="store_true", help="instead: the wavelet reading (nothing trained, any size)")
    ee.add_argument("--size", type=int, default=32, help="with --wavelet: image size (32: CIFAR-10 test images; "
                                                         "others: crops of --photos)")
    ee.add_argument("--photos", default=str(default_photos()), help="with --wavelet: a folder of photos")
    ee.add_argument("--data", default=str(default_cifar10()))
    ee.add_argument("--images", type=int, default=2000, help="test images to draw from")
    ee.add_argument("--n", type=int, default=512, help="noised images per decade")
    ee.add_argument("--json", default=None)
    threads_arg(ee)
    ee.set_defaults(func=evaluate_estimator)

    en = esub.add_parser("nlc", help="NLC's r_theta as a level reader: its error per decade of sigma on held-out "
                                     "forward-noised images (told the true sigma)")
    model_args(en)
    en.add_argument("--data", default=str(default_cifar10()))
    en.add_argument("--images", type=int, default=2000, help="test images to draw from")
    en.add_argument("--n", type=int, default=512, help="noised images per decade")
    en.add_argument("--batch-size", type=int, default=64)
    en.add_argument("--json", default=None)
    threads_arg(en)
    en.set_defaults(func=evaluate_nlc)


def _estimator_and_data(a, split: str):
    """(folder, estimator, images of ``split``) for the estimator commands, or a UserError."""
    from ..extras.estimator import load_estimator
    from ..training.data import load_images

    threads(a)
    folder = Path(a.estimator)
    try:
        return folder, load_estimator(folder), load_images(a.data, split=split)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from None


def calibrate_estimator(a):
    from tqdm import tqdm

    from ..evaluation.results import command_line
    from ..extras.estimator import calibrate, save_estimator
    from ..training.data import to_tensor

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


def _real_images(a, size: int, n: int, seed: int, split: str = "test"):
    """Real, clean images of ``size`` pixels: CIFAR-10's ``split`` at 32 (a seeded random subset; the split is
    stored class by class), crops of the photos otherwise (at most PHOTO_CROPS: a 256-pixel crop is 0.8 MB)."""
    import numpy as np

    from ..training.data import load_images, photo_crops, to_tensor

    try:
        if size == 32:
            ds = load_images(a.data, split=split)
            pick = np.random.default_rng(seed).permutation(len(ds))[:n]
            return to_tensor(ds.images[np.sort(pick)])
        return photo_crops(a.photos, size, min(n, PHOTO_CROPS), seed=seed)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from None


def wavelet_reference(a):
    from ..evaluation.results import command_line
    from ..extras.estimator import reference_level as read_reference
    from ..extras.wavelet import REFERENCE_FILE, WaveletLevel, usable

    sizes = ints(a.sizes, "--sizes", 8, 4096)
    if any(not usable((3, s, s)) for s in sizes) or a.images < 10:
        raise UserError("--sizes must be even numbers of at least 8 pixels, and --images at least 10")
    out = {}
    for size in sizes:
        out[str(size)] = {**read_reference(WaveletLevel(size, {}), _real_images(a, size, a.images, a.seed)),
                          "data": "CIFAR-10 test" if size == 32 else f"crops of {Path(a.photos).name}/"}
        r = out[str(size)]
        print(f"{size:4d} px: real images read {r['p10']:.4f} / {r['median']:.4f} / {r['p90']:.4f} (p10 / median / p90)")
    REFERENCE_FILE.parent.mkdir(parents=True, exist_ok=True)
    REFERENCE_FILE.write_text(json.dumps({"sizes": out, "seed": a.seed, "command": command_line(a.parser, a)}, indent=1))
    print(f"stored in {REFERENCE_FILE}")


def reference_level(a):
    import numpy as np

    from ..evaluation.results import command_line
    from ..extras.estimator import reference_level as read_reference
    from ..training.data import to_tensor

    if a.wavelet:
        return wavelet_reference(a)
    if a.images < 10:
        raise UserError(f"--images must be at least 10, got {a.images}")
    folder, est, ds = _estimator_and_data(a, "test")
    # a seeded random subset: the split is stored class by class, so its first images are all airplanes
    pick = np.random.default_rng(a.seed).permutation(len(ds))[: a.images]
    ref = read_reference(est, to_tensor(ds.images[np.sort(pick)]))
    cfg = json.loads((folder / "config.json").read_text())
    cfg.setdefault("info", {})["reference"] = {**ref, "data": f"{Path(a.data).name}:test",
                                               "seed": a.seed, "command": command_line(a.parser, a)}
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    print(f"real images read {ref['p10']:.4f} / {ref['median']:.4f} / {ref['p90']:.4f} (p10 / median / p90, "
          f"{ref['images']} held-out test images); stored in {folder / 'config.json'}")


def build_lut(a):
    from tqdm import tqdm

    from ..extras.nlc import load_level_net
    from ..extras.nlc_table import build_table
    from ..models.registry import nlc_for
    from ..sampling.run import MAX_STEPS
    from ..sampling.samplers import SAMPLERS

    samplers = choices(a.samplers, "sampler", list(SAMPLERS))      # before loading anything
    steps = ints(a.steps, "--steps", 1, MAX_STEPS)
    if a.n < 1:
        raise UserError(f"--n must be at least 1, got {a.n}")
    model = load(a)
    nlc_dir, why = nlc_for(model)
    if nlc_dir is None:
        raise UserError(f"no NLC weights for {model.name}: {why or 'train them with `train nlc`'}")
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


def evaluate_estimator(a):
    from ..evaluation.estimator import estimator_reader
    from ..extras.estimator import load_estimator

    if a.wavelet:
        from ..extras.wavelet import WaveletLevel, usable

        if not usable((3, a.size, a.size)):
            raise UserError(f"--size must be an even number of at least 8 pixels, got {a.size}")
        threads(a)
        images = _real_images(a, a.size, a.images, seed=1)        # not the reference's images (seed 0)
        return _decade_report(a, estimator_reader(WaveletLevel(a.size, {})), {"reader": "wavelet", "size": a.size},
                              images=images, sigma_min=0.1 if a.size != 32 else 0.01)
    try:
        est = load_estimator(a.estimator)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from None
    _decade_report(a, estimator_reader(est), {"estimator": a.estimator})


def evaluate_nlc(a):
    from ..evaluation.estimator import nlc_reader
    from ..extras.nlc import load_level_net
    from ..models.registry import extras_for

    model = load(a)
    path = extras_for(model).get("nlc")
    if path is None:
        raise UserError(f"{model.name} has no NLC network (train one with `python -m noisecorr_app train nlc`)")
    _decade_report(a, nlc_reader(model, load_level_net(path, device=model.device)), {"model": model.name, "nlc": str(path)})


def _decade_report(a, reader, about: dict, images=None, sigma_min: float = 0.01):
    """Per-decade error of a level reader on held-out forward-noised images (CIFAR-10 test unless ``images``):
    printed, and as JSON."""
    from ..evaluation.estimator import error_per_decade
    from ..training.data import load_images, to_tensor

    threads(a)
    if images is None:
        try:
            images = to_tensor(load_images(a.data, split="test").images[: a.images])
        except (FileNotFoundError, ValueError) as e:
            raise UserError(str(e)) from None
    rows = error_per_decade(reader, images, per_decade=a.n, batch_size=getattr(a, "batch_size", 256),
                            sigma_min=sigma_min)
    print(f"{'sigma':>12} {'bias (log)':>11} {'mean |log err|':>15} {'median |log err|':>17} {'within 10%':>11}")
    for r in rows:
        print(f"{r['decade']:>12} {r['bias_log']:11.4f} {r['mean_abs_log_error']:15.4f} "
              f"{r['median_abs_log_error']:17.4f} {r['within_10pct']:11.3f}")
    if a.json:
        Path(a.json).write_text(json.dumps({**about, "images": a.images, "per_decade": a.n, "rows": rows}, indent=1))
