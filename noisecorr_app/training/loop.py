"""One training loop shared by every ``train`` command (denoiser, NLC, estimator, classifier).

A command supplies a model, a ``loss(model, batch) -> tensor`` and an endless batch iterator;
the loop owns everything else: AdamW with warm-up (and optional cosine decay), EMA, precision, checkpoints that resume,
a CSV loss log and tqdm progress. Under ``accelerate launch`` the processes start from the main one's weights, take
the same steps (a loss may share its costly part, ``parallel``) and stop together; only the main one writes.

Checkpoints live in ``<out>/training/``: ``params.safetensors`` (the raw weights),
``ema.safetensors``, ``optimizer.safetensors`` (Adam moments; large and not committed) and
``state.json``. Only params, state and the log need committing: the optimizer file is large,
and a command that exports its EMA (the denoiser's ``unet/`` weights) passes ``ema_fallback``. Resuming without the optimizer file (e.g. a fresh clone) restarts Adam with a
short learning-rate warm-up, which costs a few hundred steps of progress and nothing else.
"""
from __future__ import annotations

import csv
import json
import os
import platform
import math
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from safetensors.torch import load_file, save_file

from .. import parallel
from ..extras.storage import atomic_write


@dataclass
class TrainConfig:
    steps: int = 10_000            # total optimisation steps (resume continues up to this)
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup: int = 200              # linear lr warm-up, also applied after a resume without optimizer
    schedule: str = "constant"     # constant | cosine: warm-up times (1 + cos(pi * step / steps)) / 2
    ema_decay: float = 0.9999      # ceiling; the effective decay ramps up as (1+k)/(10+k)
    grad_clip: float = 1.0
    precision: str = "auto"        # auto | fp32 | bf16
    checkpoint_minutes: float = 10.0
    log_every: int = 10
    seed: int = 0
    extra: dict = field(default_factory=dict)   # command-specific settings, kept in state.json


def cpu_has_fast_bf16() -> bool:
    """bf16 autocast only pays on CPUs with AMX or AVX512-BF16; elsewhere it is emulated (~10x slower)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda" or cpu_has_fast_bf16():
        return torch.bfloat16
    return None


def hardware() -> str:
    """What the run is on, for the model card (recorded while training, not when writing the card)."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


class EMA:
    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int):
        d = min(self.decay, (1 + step) / (10 + step))
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(d).add_(v.float(), alpha=1 - d)
            else:
                self.shadow[k].copy_(v)


def read_state(path) -> dict:
    """A training folder's state.json, or ValueError naming the file (a torn or hand-edited one)."""
    path = Path(path)
    try:
        state = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{path} could not be read ({type(e).__name__}): restore it (git checkout) or move the "
                         f"training folder away to start over") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise ValueError(f"{path} holds no training step: restore it (git checkout) or move the training folder "
                         f"away to start over")
    return state


class Trainer:
    def __init__(self, model: torch.nn.Module, loss_fn: Callable, out: str | Path, cfg: TrainConfig,
                 device: torch.device | None = None, save_dtype: torch.dtype = torch.float16,
                 on_checkpoint: Callable[["Trainer"], None] | None = None,
                 ema_fallback: Callable[[], dict[str, torch.Tensor]] | None = None):
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.to(self.device)
        self.loss_fn, self.cfg = loss_fn, cfg
        self.dir = Path(out) / "training"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.save_dtype, self.on_checkpoint, self.ema_fallback = save_dtype, on_checkpoint, ema_fallback
        if cfg.schedule not in ("constant", "cosine"):
            raise ValueError(f"unknown lr schedule '{cfg.schedule}' (constant or cosine)")
        self.amp = resolve_precision(cfg.precision, self.device)
        self.opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.step, self.seconds, self.warm_from = 0, 0.0, 0
        self.ema = EMA(self.model, cfg.ema_decay)
        self._resume()
        parallel.broadcast([*self.model.state_dict().values(), *self.ema.shadow.values()])

    # -- checkpoints ---------------------------------------------------------------------------
    def _resume(self):
        state_file = self.dir / "state.json"
        if not state_file.exists():
            return
        state = read_state(state_file)
        params = load_file(self.dir / "params.safetensors", device=str(self.device))
        self.model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in params.items()})
        # The EMA may be absent from a clone when the command exports it elsewhere (the shipped weights).
        ema_file = self.dir / "ema.safetensors"
        ema = load_file(ema_file) if ema_file.exists() else (self.ema_fallback() if self.ema_fallback else None)
        if ema is None:      # no EMA saved anywhere for this step: restart it from the weights
            ema = params
        self.ema.shadow = {k: v.float().to(self.device) for k, v in ema.items()}
        self.step, self.seconds = state["step"], state.get("seconds", 0.0)
        opt_file = self.dir / "optimizer.safetensors"
        if opt_file.exists() and state.get("optimizer_step") == self.step:
            flat = load_file(opt_file, device=str(self.device))
            for i, p in enumerate(self.model.parameters()):
                if f"{i}.exp_avg" in flat:
                    self.opt.state[p] = {"step": torch.tensor(float(self.step)),
                                         "exp_avg": flat[f"{i}.exp_avg"], "exp_avg_sq": flat[f"{i}.exp_avg_sq"]}
        else:
            self.warm_from = self.step   # fresh Adam moments: warm up again

    def ema_state(self, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        dtype = dtype or self.save_dtype
        return {k: (v.to(dtype) if v.is_floating_point() else v).contiguous().cpu() for k, v in self.ema.shadow.items()}

    def save(self):
        if not parallel.is_main():      # the processes hold the same weights: one writes them
            return
        cast = lambda sd: {k: (v.detach().to(self.save_dtype) if v.is_floating_point() else v).contiguous().cpu()
                           for k, v in sd.items()}
        save_file(cast(self.model.state_dict()), self.dir / "params.safetensors.tmp")
        save_file(self.ema_state(), self.dir / "ema.safetensors.tmp")
        flat = {}
        for i, p in enumerate(self.model.parameters()):
            st = self.opt.state.get(p)
            if st:
                flat[f"{i}.exp_avg"] = st["exp_avg"].contiguous().cpu()
                flat[f"{i}.exp_avg_sq"] = st["exp_avg_sq"].contiguous().cpu()
        save_file(flat, self.dir / "optimizer.safetensors.tmp")
        for name in ("params", "ema", "optimizer"):
            (self.dir / f"{name}.safetensors.tmp").replace(self.dir / f"{name}.safetensors")
        state = {"step": self.step, "optimizer_step": self.step, "seconds": round(self.seconds, 1),
                 "device": str(self.device), "hardware": hardware(), "precision": str(self.amp or "fp32"), "config": asdict(self.cfg)}
        atomic_write(self.dir / "state.json", lambda tmp: Path(tmp).write_text(json.dumps(state, indent=2)))
        if self.on_checkpoint:
            self.on_checkpoint(self)

    # -- the loop ------------------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        k = step - self.warm_from
        lr = self.cfg.lr * min(1.0, (k + 1) / max(1, self.cfg.warmup))
        if self.cfg.schedule == "cosine":   # decays to 0 at cfg.steps; a resume with other --steps reshapes it
            lr *= 0.5 * (1.0 + math.cos(math.pi * min(1.0, step / max(1, self.cfg.steps))))
        return lr

    def run(self, batches: Iterator, max_minutes: float | None = None) -> Iterator[tuple[int, float]]:
        """Train until cfg.steps (or max_minutes); yields (step, loss). Checkpoints on the way and at the end."""
        from tqdm import tqdm

        main_process = parallel.is_main()
        log_path = self.dir / "loss_log.csv" if main_process else Path(os.devnull)
        new_log = main_process and not log_path.exists()
        stop = {"now": False}
        # a SIGTERM ends the run with a checkpoint; only the main thread may set a handler (the app trains in a worker)
        main = threading.current_thread() is threading.main_thread()
        old = signal.signal(signal.SIGTERM, lambda *a: stop.update(now=True)) if main else None
        start = last_ckpt = time.time()
        bar = tqdm(total=self.cfg.steps, initial=self.step, desc="train", unit="it", dynamic_ncols=True,
                   disable=not main_process)
        running = None
        try:
            with open(log_path, "a", newline="") as f:
                log = csv.writer(f)
                if new_log:
                    log.writerow(["step", "loss", "lr", "seconds"])
                self.model.train()
                while self.step < self.cfg.steps:
                    t0 = time.time()
                    lr = self.lr_at(self.step)
                    for g in self.opt.param_groups:
                        g["lr"] = lr
                    batch = next(batches)
                    # each step's random draws depend on its number only: a resumed run, or each process of a
                    # data-parallel one, draws what one uninterrupted process draws
                    torch.manual_seed(self.cfg.seed + self.step)
                    with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
                        loss = self.loss_fn(self.model, batch)
                    self.opt.zero_grad(set_to_none=True)
                    loss.backward()
                    value = loss.item()
                    if not math.isfinite(value):
                        raise FloatingPointError(f"loss is {value} at step {self.step}")
                    if self.cfg.grad_clip:
                        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
                    self.opt.step()
                    self.step += 1
                    self.ema.update(self.model, self.step)
                    self.seconds += time.time() - t0
                    running = value if running is None else 0.98 * running + 0.02 * value
                    bar.update(1)
                    bar.set_postfix(loss=f"{running:.4f}")
                    if self.step % self.cfg.log_every == 0:
                        log.writerow([self.step, f"{value:.5f}", f"{lr:.2e}", round(self.seconds, 1)])
                        f.flush()
                    yield self.step, value
                    if time.time() - last_ckpt > 60 * self.cfg.checkpoint_minutes:
                        self.save()
                        last_ckpt = time.time()
                    out_of_time = max_minutes is not None and time.time() - start > 60 * max_minutes
                    if parallel.anyone(out_of_time or stop["now"]):
                        break
        finally:
            bar.close()
            if main:
                signal.signal(signal.SIGTERM, old)
            self.save()


def infinite_batches(n: int, batch_size: int, make_batch: Callable, seed: int = 0) -> Iterator:
    """Endless shuffled epochs of index batches turned into training batches by ``make_batch``."""
    g = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(n, generator=g)
        for i in range(0, n - batch_size + 1, batch_size):
            yield make_batch(perm[i:i + batch_size], g)
