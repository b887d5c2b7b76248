"""The restoration benchmark: every task x measurement noise x method -> PSNR, SSIM, consistency, NFE and
seconds per image, averaged over the same n images, written cell by cell to a resumable JSON file.

Comparability: within a (task, sigma_y) every method sees the same measurements (``degrade`` draws
image i's noise from seed + i) and the same start noise, and spends the same network-evaluation budget
(``steps``; see ``restoration.methods``).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ..methods import METHODS, restoration_available, restoration_correction, restoration_settings
from ..restoration.methods import degrade, restore
from ..restoration.tasks import RESTORATION_METHODS
from ..restoration.operators import make_operator
from .. import parallel
from .metrics import psnr, ssim
from .results import ResultsFile, finite_or_none

KEY = ("task", "sigma_y", "method")
SSIM_MIN_SIZE = 11                 # SSIM's window: smaller images get no SSIM


def load_eval_images(folder: str | Path | None, n: int, size: int, seed: int = 0,
                     cifar: str | Path | None = None, split: str = "test") -> tuple[torch.Tensor, str, str | None]:
    """n images (n, 3, size, size) in [-1, 1], a description of where they came from, and a note on what
    was done to them (None if nothing). From ``folder``: its first n image files in sorted order, each
    through ``images.prepare_image``. Without a folder: n random CIFAR-10 images of ``split`` (seeded: a
    split is stored class by class, so its first n would all be aeroplanes); "train" is the validation
    set settings are chosen on, "test" the one tables report."""
    from ..images import prepare_image
    from ..training.data import IMAGE_SUFFIXES, default_cifar10, load_images, to_tensor

    if folder is None:
        path = Path(cifar) if cifar else default_cifar10()
        if not path.exists():
            raise FileNotFoundError(f"no CIFAR-10 data at {path}: pass --images with a folder of images")
        ds = load_images(path, split=split)
        if n > len(ds):
            raise ValueError(f"--n {n} is more than the {len(ds)} {split} images")
        idx = np.sort(np.random.default_rng(seed).choice(len(ds), n, replace=False))
        source = f"{path.name}:{split}, {n} random images (seed {seed})"
        if ds.images.shape[1:3] == (size, size):
            return to_tensor(ds.images[idx]), source, None
        x = torch.cat([prepare_image(a, size)[0] for a in ds.images[idx]])     # another model size: resized
        return x, source, f"CIFAR-10 {split} images resized to {size}x{size}, the model's resolution"
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"--images {folder} is not a folder of images")
    files = sorted(f for f in folder.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    files = files[:n]
    xs, changed = [], 0
    for f in files:
        try:
            x, note = prepare_image(f, size)
        except ValueError as e:
            raise ValueError(f"{f}: {e}") from None
        xs.append(x)
        changed += note is not None
    note = (f"{changed} of {len(files)} images were cropped/resized to {size}x{size}, the model's resolution"
            if changed else None)
    return torch.cat(xs), f"{folder} ({len(files)} images)", note


def run_cell(model, op, x: torch.Tensor, method: str, *, sigma_y: float, steps: int, seed: int, batch_size: int,
             correction=None, progress=None, **options) -> dict:
    """Degrade and restore x in batches; per-image PSNR/SSIM/consistency and totals. ``options`` go
    to ``restore`` (eta, tail_steps)."""
    batches = []
    for start in parallel.share(list(range(0, len(x), batch_size))):     # all of them in one process
        xb = x[start:start + batch_size].to(model.device)
        y = degrade(op, xb, sigma_y, seed=seed + start)
        res = restore(model, op, y, method=method, steps=steps, seed=seed + start, sigma_y=sigma_y,
                      correction=correction, progress=(lambda r: progress(len(xb))) if progress else None,
                      **options)
        out = res.images.float().cpu()
        batches.append((start, psnr(out, xb.cpu()), ssim(out, xb.cpu()) if min(out.shape[-2:]) >= SSIM_MIN_SIZE else None,
                        res.consistency.cpu(), res.seconds, res.nfe_per_image))
    batches = sorted(parallel.gather(batches), key=lambda b: b[0])
    ps, cons = torch.cat([b[1] for b in batches]), torch.cat([b[3] for b in batches])
    ss = [b[2] for b in batches if b[2] is not None]
    seconds, nfe = sum(b[4] for b in batches), batches[-1][5]
    return {"psnr": float(ps.mean()), "psnr_std": float(ps.std()) if len(ps) > 1 else 0.0,
            "ssim": float(torch.cat(ss).mean()) if ss else None, "consistency": float(cons.mean()),
            "consistency_max": float(cons.max()), "nfe": nfe, "seconds_per_image": seconds / len(x)}


def evaluate_restoration(model, x: torch.Tensor, table: ResultsFile, *, tasks: list[str], methods: list[str],
                         sigma_ys: list[float], steps: int, seed: int = 0, batch_size: int = 20,
                         task_settings: dict | None = None, log=print, **options) -> list[dict]:
    """Fill ``table`` with every (task, sigma_y, method) cell not already in it; returns this grid's rows.
    A method whose inner correction the model cannot run is recorded as skipped, with the reason."""
    from tqdm import tqdm

    task_settings = task_settings or {}
    runnable = list(methods)
    can = restoration_available(model)
    for m in [m for m in methods if not can[m]]:
        reason = f"{model.name}: {METHODS[RESTORATION_METHODS[m].inner].why_unavailable(model)}"
        table.skip(m, reason)
        log(f"skipping {m}: {reason}")
        runnable.remove(m)
    size, channels = model.sample_shape[-1], model.sample_shape[0]
    ops = {t: make_operator(t, size, channels, **task_settings.get(t, {})) for t in tasks}   # bad settings fail now
    cells = [(t, s, m) for t in tasks for s in sigma_ys for m in runnable]
    todo = table.todo(cells, log)
    with tqdm(total=len(todo), desc="cells", unit="cell", disable=not parallel.is_main()) as outer:
        for task, sigma_y, method in todo:
            outer.set_postfix_str(f"{task} sigma_y {sigma_y} {method}")
            corr = restoration_correction(method, model, steps)
            knobs = restoration_settings(model, method, steps, **options)
            with tqdm(total=len(x) * steps, desc=f"  {task} {sigma_y} {method}", unit="img-step",
                      leave=False, disable=not parallel.is_main()) as bar:
                r = run_cell(model, ops[task], x, method, sigma_y=sigma_y, steps=steps, seed=seed,
                             batch_size=batch_size, correction=corr, progress=bar.update, **knobs)
            table.add({"task": task, "method": method, "sigma_y": sigma_y, "n": len(x), "settings": knobs,
                       **{k: finite_or_none(v) if k != "nfe" else v for k, v in r.items()},
                       "seconds_per_image": round(r["seconds_per_image"], 5),
                       "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
            outer.update(1)
    return table.rows_for(cells)
