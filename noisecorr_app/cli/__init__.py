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
    _show_defaults(p)
    return p


def _show_defaults(parser: argparse.ArgumentParser):
    """Every option's --help line says its default (those written by hand keep their own words)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _show_defaults(child)
        elif action.default not in (None, False, argparse.SUPPRESS) and "default" not in (action.help or ""):
            action.help = f"{action.help or ''} (default: %(default)s)".strip()


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
