"""``python -m noisecorr_app <command>``: argparse in, library calls out, clear messages on failure.

One module per group of commands, each with ``add_parser``; the method and task flags are made
from the registries (``methods.METHODS``, ``settings.PARAMS``, ``restoration.tasks``).
"""
from __future__ import annotations

import argparse
import sys

from . import deploy, evaluate, levels, restore, sample, train
from .common import UserError

__all__ = ["UserError", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m noisecorr_app",
                                description="Noise-shift corrections (NLC, NAG) for diffusion sampling and restoration.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sample.add_parser(sub)
    esub = evaluate.add_parser(sub)
    train.add_parser(sub)
    levels.add_parsers(sub, esub)
    restore.add_parser(sub)
    deploy.add_parser(sub)
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
