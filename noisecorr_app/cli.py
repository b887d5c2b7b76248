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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m noisecorr_app",
                                description="Noise-shift corrections (NLC, NAG) for diffusion sampling and restoration.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
