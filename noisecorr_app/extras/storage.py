"""Save and load the small networks trained beside a denoiser: ``model.safetensors`` + ``config.json``.

A network keeps its constructor arguments in ``net.config``; loading rebuilds it from them, so no
pickle is ever read.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file



def save_net(net: torch.nn.Module, folder: Path, kind: str, info: dict):
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().float().contiguous().cpu() for k, v in net.state_dict().items()},
              folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({"kind": kind, **net.config, "info": info}, indent=2))


def load_net(folder: Path, build: Callable[[dict], torch.nn.Module], what: str, train_command: str,
             device="cpu") -> torch.nn.Module:
    """Rebuild a network from its config and load its weights, or raise a message that says what to run."""
    folder = Path(folder)
    if not (folder / "config.json").exists() or not (folder / "model.safetensors").exists():
        raise FileNotFoundError(f"no {what} in {folder}: train one with `python -m noisecorr_app {train_command}`")
    cfg = json.loads((folder / "config.json").read_text())
    try:
        net = build(cfg)
        net.load_state_dict(load_file(folder / "model.safetensors"))
    except Exception as e:
        raise ValueError(f"the {what} weights in {folder} could not be read ({type(e).__name__}); retrain them") from None
    return net.to(device).eval()


def atomic_write(path: str | Path, write, suffix: str = "") -> Path:
    """``write(tmp)`` to a temporary file of its own beside ``path``, then renamed into place: a reader
    never sees half a file, and two processes writing the same file at once do not collide."""
    import os
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path

