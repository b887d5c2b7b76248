"""``train denoiser | classifier | estimator | nlc`` and ``card``: resumable training runs and the
model card written from their records."""
from __future__ import annotations

import json
from pathlib import Path

from .. import parallel
from ..training.data import default_cifar10
from ..training.extras import DATA_FREE
from .common import UserError, threads_arg


def add_parser(sub):
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
    d.add_argument("--overwrite", action="store_true",
                   help="train a model that has NLC weights or measured settings, which then no longer match it")
    threads_arg(d)
    d.set_defaults(func=denoiser)

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
    threads_arg(c)
    c.set_defaults(func=classifier)

    def small_net(name, help, batch_size, lr, func):
        p = tsub.add_parser(name, help=help)
        p.add_argument("--data", default=str(default_cifar10()))
        p.add_argument("--steps", type=int, default=20_000)
        p.add_argument("--batch-size", type=int, default=batch_size)
        p.add_argument("--lr", type=float, default=lr)
        p.add_argument("--minutes", type=float, default=None)
        threads_arg(p)
        p.set_defaults(func=func)
        return p

    e = small_net("estimator", "train the noise-level estimator g_phi on forward-noised images", 128, 1e-3, estimator)
    e.add_argument("--out", default="weights/cifar10-noise-estimator")
    n = small_net("nlc", "train NLC's r_theta on a frozen denoiser's bottleneck features", 64, 3e-4, nlc)
    n.add_argument("--model", default=None, help="Hub id or folder (default: the embedded model)")
    n.add_argument("--out", default=None, help="default: <model folder>/nlc, or for a Hub model noisecorr's cache "
                                                "(~/.cache/noisecorr/nlc/<owner--name>), where the app finds it")
    n.add_argument("--data-free", action="store_true",
                   help="train on images the model draws itself instead of --data (any model, no dataset)")
    n.add_argument("--pool", type=int, default=DATA_FREE["pool"], help="with --data-free: how many images the model draws")
    n.add_argument("--pool-steps", type=int, default=DATA_FREE["pool_steps"],
                   help="with --data-free: DDIM steps per drawn image")

    cd = sub.add_parser("card", help="(re)write a trained denoiser's model card from its records and evaluation reports")
    cd.add_argument("--folder", default="weights/noisecorr-ddpm-cifar10")
    cd.add_argument("--command", required=True, help="the exact training command, as the card should show it")
    cd.add_argument("reports", nargs="*", help="`evaluate fid --json` / `evaluate speed --json` files")
    cd.add_argument("--no-samples", action="store_true", help="keep the sample grid as it is (it takes a minute)")
    cd.add_argument("--note", default="", help="a paragraph for the top of the card (the model's state, caveats)")
    cd.set_defaults(func=card)


KINDS = {"denoiser": "a diffusion model (UNet)", "classifier": "a classifier", "nlc": "NLC weights (r_theta)",
         "noise-level-estimator": "a noise-level estimator", "other": "files that are not a trained network"}


def folder_kind(folder: Path) -> str | None:
    """What a folder holds, from its configs: one of KINDS, or None when it is missing or empty."""
    if not folder.exists():
        return None
    if not folder.is_dir():
        raise UserError(f"--out {folder} is a file: give a folder")
    if (folder / "unet" / "config.json").exists() or (folder / "model_index.json").exists():
        return "denoiser"
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        config = None
    if isinstance(config, dict):
        if config.get("_class_name") == "UNet2DModel":
            return "denoiser"
        if config.get("kind") in KINDS:
            return config["kind"]
        if "architecture" in config:
            return "classifier"
    return "other" if any(folder.iterdir()) else None


def training_folder(out, kind: str, overwrite: bool = False) -> Path:
    """``--out`` for training a ``kind``: new, empty, or one of the same kind to resume. A denoiser that has NLC
    weights or settings measured on it is trained again only with ``--overwrite``: its UNet changes under them."""
    out = Path(out)
    held = folder_kind(out)
    if held not in (None, kind):
        raise UserError(f"--out {out} holds {KINDS[held]}, not {KINDS[kind]}: choose a new folder")
    if kind == "denoiser" and held and not overwrite:
        try:
            extra = json.loads((out / "noisecorr.json").read_text())
        except (OSError, ValueError):
            extra = {}
        stale = (["NLC weights (nlc/)"] if (out / "nlc").exists() else []) + \
            (["settings measured on it (noisecorr.json)"] if {"method_defaults", "recommended", "restoration"} & set(extra) else [])
        if stale:
            raise UserError(f"--out {out} is a trained model with {' and '.join(stale)}; training replaces its UNet "
                            f"and they would no longer match it. Train into a new folder, or pass --overwrite (then "
                            f"retrain NLC with `train nlc` and `build-lut`, and measure the settings again).")
    return out


def denoiser(a):
    from ..training.denoiser import train_denoiser

    training_folder(a.out, "denoiser", a.overwrite)
    train_denoiser(a.data, a.out, steps=a.steps, batch_size=a.batch_size, lr=a.lr, image_size=a.image_size,
                   p_class_drop=a.class_dropout, p_noise_drop=a.noise_dropout, unconditional=a.unconditional,
                   max_minutes=a.minutes, precision=a.precision, checkpoint_minutes=a.checkpoint_minutes,
                   split=a.split or None, threads=a.threads)


def classifier(a):
    from ..training.classifier import train_classifier

    try:
        widths = tuple(int(w) for w in a.widths.split(","))
    except ValueError:
        raise UserError(f"--widths takes 4 comma-separated channel counts, got '{a.widths}'") from None
    if not Path(a.data).exists():
        raise UserError(f"no data at {a.data}: pass --data with an image folder or tarball "
                        "(class folders under train/ and test/, like CIFAR-10-images)")
    training_folder(a.out, "classifier")
    train_classifier(a.data, a.out, steps=a.steps, batch_size=a.batch_size, lr=a.lr, weight_decay=a.weight_decay,
                     warmup=a.warmup, widths=widths, max_minutes=a.minutes, precision=a.precision,
                     checkpoint_minutes=a.checkpoint_minutes, split=a.split or None, test_split=a.test_split or None,
                     threads=a.threads)


def estimator(a):
    from ..training.extras import train_estimator

    training_folder(a.out, "noise-level-estimator")
    train_estimator(a.data, a.out, steps=a.steps, batch_size=a.batch_size, lr=a.lr, max_minutes=a.minutes,
                    threads=a.threads)


def nlc(a):
    from ..models.loading import ModelLoadError
    from ..training.extras import train_nlc

    if a.out:
        training_folder(a.out, "nlc")
    if a.data_free and (a.pool < 1 or a.pool_steps < 1):
        raise UserError("--pool and --pool-steps must be at least 1")
    if a.batch_size % parallel.count():       # under `accelerate launch` each process takes equal rows of a batch
        raise UserError(f"--batch-size ({a.batch_size}) must be a multiple of the number of processes "
                        f"({parallel.count()})")
    try:
        train_nlc(a.model, None if a.data_free else a.data, out=a.out, steps=a.steps, batch_size=a.batch_size,
                  lr=a.lr, max_minutes=a.minutes, threads=a.threads, pool=a.pool, pool_steps=a.pool_steps,
                  command=" ".join(["python -m noisecorr_app train nlc", *(["--model", a.model] if a.model else []),
                                    *(["--data-free", "--pool", str(a.pool), "--pool-steps", str(a.pool_steps)]
                                      if a.data_free else ["--data", str(a.data)]),
                                    "--steps", str(a.steps), "--batch-size", str(a.batch_size),
                                    *(["--out", str(a.out)] if a.out else [])]))
    except ModelLoadError as e:
        raise UserError(str(e)) from None
    if parallel.count() > 1 and parallel.is_main():
        print(f"{parallel.count()} processes shared the work")


def card(a):
    from ..training.card import metrics_from_reports, write_denoiser_card

    folder = Path(a.folder)
    if not (folder / "training" / "state.json").exists():
        raise UserError(f"{folder} holds no training record (training/state.json): train it first")
    try:
        metrics = metrics_from_reports(a.reports)
    except (OSError, KeyError, json.JSONDecodeError) as e:
        raise UserError(f"could not read the reports: {e}") from None
    write_denoiser_card(folder, a.command, metrics, samples=not a.no_samples, note=a.note)
    print(f"wrote {folder / 'README.md'} ({len(metrics)} measured rows)")
