"""Restoration methods: DDNM and IterProj(-NLC), built as a correction around the sampling engine.

Restoration is not a new sampler. ``Projected(inner, operator, y)`` is a ``Correction``: it asks its
inner correction (the identity, epsilon scaling, NLC, ...) for a prediction, projects that
prediction's x0 onto the measurement set (DDNM's ``x0 - A^+ (A x0 - y)``, damped per singular value
with noisy measurements as DDNM+ does) and steps from the projected estimate. Samplers only ever see
``Prediction``s, so every sampler restores and every correction composes with the projection.

- ``ddnm``: DDIM (eta 0.85) on the model's timesteps spaced as DDNM's code does; output: the last x0.
- ``iterproj``: the same loop (or the official log-linear grid, ``grid="loglinear"``, and an optional
  cyclic small-sigma tail); output: per image, the most measurement-consistent x0 seen.
- ``iterproj-nlc``: IterProj with NLC inside (``restoration.tasks.RESTORATION_METHODS`` names it).

Every method spends the same network-evaluation budget. The choices where the papers are silent (the
grid, the level a corrected step re-noises to, the tail, clipping, noisy measurements, which x0 to
keep) and their measurements are in docs/restoration.md.
"""
from __future__ import annotations

import math
import numbers
import time
from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from ..models.denoiser import Cond, Wrapper, as_denoiser, bcast
from ..sampling.corrections import Correction, FixedLevel, LevelCorrection, Prediction
from ..sampling.noise import SeededNoise
from ..sampling.run import MAX_STEPS, sample_steps
from ..sampling.samplers import SAMPLERS, StepRecord
from ..sampling.schedules import LogLinear, ModelSpacing
from ..sampling.trace import light, step_summary
from .operators import Inpainting, Operator
from .tasks import DAMPED_FROM, DAMPING, METHOD_KNOBS, RESTORATION_METHODS, RESTORE_ETA, SIGMA_Y

__all__ = ["METHODS", "SIGMA_Y_MAX", "GRIDS", "NEXT_LEVELS", "Projected", "RestoreResult", "restore", "degrade",
           "cyclic_tail", "with_tail", "iterproj_sigmas", "model_grid", "default_tail_steps", "model_noise",
           "check_sigma_y", "measurement_size"]

METHODS = tuple(RESTORATION_METHODS)
SIGMA_Y_MAX = SIGMA_Y.hi     # largest measurement noise std, [0, 1] pixel units
DEFAULT_ETA = RESTORE_ETA.default  # DDNM and the official IterProj code
DEFAULT_STEPS = 100          # DDNM's 100 steps; the official IterProj max_T = 100
TAIL_FRACTION = 0.0          # our default: no tail (measured: it cost PSNR; docs/restoration.md)
OFFICIAL_TAIL_FRACTION = 0.2  # official CIFAR-10 setting: 80 main steps + 20 tail steps
TAIL_SIGMA = (0.003, 0.02)   # official min_sigma, max_sigma of the cyclic tail
TAIL_CYCLE = 10              # official cycle_size
ITERPROJ_START_SIGMA = 100.0  # official start_sigma (capped at the model's sigma_max)
GRIDS = ("model", "loglinear")  # IterProj's main grid: DDNM's (model timesteps, 'leading') or the official log-linear
DEFAULT_GRID = "model"       # measured: docs/restoration.md
NEXT_LEVELS = ("scheduled", "corrected")  # where a level correction's step re-noises to
DEFAULT_NEXT_LEVEL = "scheduled"          # ours (measured: docs/restoration.md); "corrected" is the official
RULES = ("ddnm", "diffpir", "ddrm")           # Projected's data steps
FRESH_SEEDS = 2 ** 40         # a step's own noise (DDRM, DDNM+): image i draws from FRESH_SEEDS + seed + i, apart
                              # from the sampler's
SELECT_TOL = 1e-3            # RMS residual per measurement below which steps count as equally consistent


# ----------------------------------------------------------------------------------------------
# Measurement noise

def check_sigma_y(sigma_y) -> float:
    """The measurement noise std in [0, 1] pixel units, validated: a number in [0, SIGMA_Y_MAX]."""
    return SIGMA_Y.check(sigma_y)


def model_noise(sigma_y: float) -> float:
    """sigma_y in [0, 1] pixel units -> the std in the model's [-1, 1] space (twice as large)."""
    return 2.0 * check_sigma_y(sigma_y)


def measurement_size(operator: Operator, y: torch.Tensor) -> int:
    """Number of measured values per image: the kept entries for inpainting (y is image-shaped with
    zeros in the holes, which carry no measurement), every entry of y otherwise."""
    if isinstance(operator, Inpainting):
        c = y.shape[1] if y.dim() == 4 else 1
        return int(operator.mask.expand(c, *operator.mask.shape[1:]).sum())
    return int(y[0].numel())


def _measurement_noise(operator: Operator, like: torch.Tensor, seeds) -> torch.Tensor:
    """Standard-normal noise shaped like the measurement, per-image seeded; zero in inpainting holes."""
    n = SeededNoise(list(seeds))(like)
    return operator.A(n) if isinstance(operator, Inpainting) else n


def degrade(operator: Operator, x: torch.Tensor, sigma_y: float = 0.0, seed: int = 0) -> torch.Tensor:
    """The measurement ``y = A x + n`` of images x (B, C, H, W) in [-1, 1].

    n ~ N(0, (2 sigma_y)^2) per measured value (sigma_y in [0, 1] pixel units), image i drawing from
    its own generator seeded ``seed + i``; inpainting holes stay 0 (nothing is measured there).
    """
    s = model_noise(sigma_y)
    y = operator.A(x)
    if s > 0:
        y = y + s * _measurement_noise(operator, y, [seed + i for i in range(y.shape[0])])
    return y


# ----------------------------------------------------------------------------------------------
# The projection as a correction

class Projected(Correction):
    """Wrap a correction so that every prediction's x0 lies on (or, with noise, moves towards)
    ``{x : A x = y}``; docs/restoration.md has the rules.

    inner: the correction whose prediction is projected (``Correction()`` = the plain network).
    operator, y: the measurement; y (B or 1, ...) is moved to x's device and dtype as needed.
    sigma_y: measurement noise std in [0, 1] pixel units.
    rule: the data step, one spectral filter of the residual each (``Operator.pinv_filtered``):
      "ddnm": DDNM's projection; with noise DDNM+'s damping min(1, sigma_next s / sigma_y) (raised to
      ``damping`` where sigma_y / s > ``damped_from``; 1: DDNM+'s own) and, given ``noise``, DDNM+'s
      re-noising: each range component gets only the fresh noise that tops the measurement noise it
      carries up to sigma_next (the prediction then carries the step);
      "diffpir": DiffPIR's proximal step, argmin ||A x - y||^2 + rho ||x - x0||^2 with
      rho = prox_weight sigma_y^2 / sigma^2 (the projection without noise);
      "ddrm": DDRM's per-singular-value update with its own fresh noise (``eta``; eta_b = 1): the
      prediction then carries the whole step, so the sampler runs DDIM with eta 0.
    clip: clip the inner x0 to [-1, 1] before the data step (official order).
    next_level: where a level correction's step goes, "scheduled" (ours, default) or "corrected"
    (the official sigma_next (1 + r)); see docs/restoration.md.
    """

    def __init__(self, inner: Correction | None, operator: Operator, y: torch.Tensor, sigma_y: float = 0.0,
                 clip: bool = True, next_level: str = DEFAULT_NEXT_LEVEL, rule: str = "ddnm",
                 prox_weight: float = 1.0, eta: float = DEFAULT_ETA, noise=None, damping: float = 1.0,
                 damped_from: float = DAMPED_FROM):
        self.inner = inner if inner is not None else Correction()
        if not isinstance(self.inner, Correction):
            raise ValueError(f"the inner correction must be a Correction, got {type(inner).__name__}")
        if next_level not in NEXT_LEVELS:
            raise ValueError(f"next_level must be one of {', '.join(NEXT_LEVELS)}, got {next_level!r}")
        if rule not in RULES:
            raise ValueError(f"rule must be one of {', '.join(RULES)}, got {rule!r}")
        if rule == "ddrm" and noise is None:
            raise ValueError("DDRM's step draws its own fresh noise: pass noise= (per-image seeded)")
        self.next_level, self.rule, self.prox_weight, self.eta, self.fresh = next_level, rule, prox_weight, eta, noise
        self.damping, self.damped_from = DAMPING.check(damping), float(damped_from)
        self.operator, self.y, self.clip = operator, y, bool(clip)
        self.sigma_y = check_sigma_y(sigma_y)
        self.noise = model_noise(self.sigma_y)
        # the prediction carries the whole step (its fresh noise included): the sampler must add none
        self.carries_noise = rule == "ddrm" or (rule == "ddnm" and self.noise > 0 and noise is not None)
        self.gain = operator.noise_gain(y) if self.noise > 0 else 1.0
        self.s_top = operator.top_singular_value(y) if self.noise > 0 else 1.0
        self.name = f"projected+{self.inner.name}" if rule == "ddnm" else f"{rule}+{self.inner.name}"
        self.history: list[dict] = []
        self._ys: dict = {}

    def reset(self, sigmas: torch.Tensor | None = None):
        self.inner.reset(sigmas)
        self.history = []

    def measurement(self, like: torch.Tensor) -> torch.Tensor:
        """y on like's device and dtype, expanded to its batch."""
        key = (like.device, like.dtype)
        if key not in self._ys:
            self._ys[key] = self.y.to(like.device, like.dtype)
        y = self._ys[key]
        if y.shape[0] != like.shape[0]:
            if y.shape[0] != 1:
                raise ValueError(f"the measurement has {y.shape[0]} images but the batch has {like.shape[0]}")
            y = y.expand(like.shape[0], *y.shape[1:])
        return y

    def lam(self, sigma_next: torch.Tensor, sigma: torch.Tensor | None = None) -> torch.Tensor:
        """The data step's weight on A's top singular value, per image: 1 without noise (y is
        imposed), below 1 once the noise keeps the estimate from fitting y (the noise crossover)."""
        if self.noise == 0:
            return torch.ones_like(sigma_next, dtype=torch.float32)
        s = self.s_top
        if self.rule == "diffpir":         # at the step's own level sigma
            return s * s / (s * s + self.prox_weight * self.noise ** 2 / sigma.float().clamp_min(1e-12) ** 2)
        return self.ddnm_weight(s, sigma_next.float())

    def ddnm_weight(self, s, sigma_next):
        """DDNM+'s weight on the measurement along singular value s, u = min(1, sigma_next s / sigma_y),
        raised to p where the crossover sigma_y / s lies above ``damped_from``: p = 1 is DDNM+'s own; p > 1
        takes less of the measurement, and so less of its noise, where it knows less than the state
        (u < 1): that noise is the same at every step, and a component damped from early in a long run
        has it fed back many times (measured: docs/restoration.md)."""
        u = (sigma_next * s / self.noise).clamp(max=1.0)
        if self.damping == 1:
            return u
        early = torch.as_tensor(s, dtype=u.dtype, device=u.device) * self.damped_from < self.noise
        return torch.where(early, u ** self.damping, u)

    def data_step(self, x0, resid, sigma, sigma_next):
        """x0 moved towards the measurement (see ``rule``); per image levels of shape (B,)."""
        op, sn = self.operator, bcast(sigma_next.float(), x0)
        if self.noise == 0:
            return x0 - op.pinv(resid)
        if self.rule == "diffpir":
            rho = self.prox_weight * self.noise ** 2 / bcast(sigma.float().clamp_min(1e-12), x0) ** 2
            return x0 - op.pinv_filtered(resid, lambda s: s / (s * s + rho))
        if self.rule == "ddrm":   # components the measurement knows better than the level: imposed
            w = lambda s: torch.where(s * sn < self.noise, (1 - self.eta ** 2) ** 0.5 * sn * s / self.noise, 1.0)
            return x0 - op.pinv_filtered(resid, lambda s: w(s) / s)
        return x0 - op.pinv_filtered(resid, lambda s: self.ddnm_weight(s, sn) / s)

    def ddim_mix(self, x, x0, sigma, xi):
        """DDIM's direction for a step that carries its own noise: the share sqrt(1 - eta^2) of the
        direction from x0 and eta of the fresh noise xi (eta in DDNM's form)."""
        return (1 - self.eta ** 2) ** 0.5 * (x - x0) / bcast(sigma.float().clamp_min(1e-12), x) + self.eta * xi

    def ddrm_direction(self, x, x0, sigma, sigma_next):
        """DDRM's direction for x_next = x0' + sigma_next eps': the null space (and components lost to
        truncation) keeps DDIM's mix of the network's direction and fresh noise; the range carries fresh
        noise of DDRM's per-component std (eta where the measurement is noisier than the level,
        sqrt(1 - sigma_y^2 / (s sigma_next)^2) where it is not)."""
        op, xi = self.operator, self.fresh(x)
        sn = bcast(sigma_next.float(), x).clamp_min(1e-12)
        mixed = self.ddim_mix(x, x0, sigma, xi)
        null = mixed - op.pinv(op.A(mixed))
        if self.noise == 0:
            return null + op.pinv(op.A(xi))
        std = lambda s: torch.where(s * sn < self.noise, torch.full_like(s * sn, self.eta),
                                    (1 - (self.noise / (s * sn)) ** 2).clamp_min(0).sqrt())
        return null + op.pinv_filtered(op.A(xi), lambda s: std(s) / s)

    def ddnm_plus_direction(self, x, x0p, sigma, sigma_next):
        """DDNM+'s direction for x_next = x0p + sigma_next d: DDIM's mix (eta in DDNM's form) of the
        direction from x0p and fresh noise, its range components scaled so that with the measurement
        noise the damped step passed on (its weight times sigma_y / s along s) each holds sigma_next in
        all: the state stays at the scheduled level (without it the range carries up to
        sqrt(2) sigma_next; docs/restoration.md)."""
        op = self.operator
        sn = bcast(sigma_next.float(), x).clamp_min(1e-12)
        d = self.ddim_mix(x, x0p, sigma, self.fresh(x))
        share = lambda s: (1 - (self.ddnm_weight(s, sn) * self.noise / (s * sn)) ** 2).clamp_min(0).sqrt()
        return d - op.pinv(op.A(d)) + op.pinv_filtered(op.A(d), lambda s: share(s) / s)

    def predict(self, model, x, sigma, sigma_next, cond: Cond | None, step: int) -> Prediction:
        p = self.inner.predict(model, x, sigma, sigma_next, cond, step)
        if self.next_level == "scheduled":     # the correction's level serves this evaluation only
            p = replace(p, sigma_next=torch.broadcast_to(
                torch.as_tensor(sigma_next, dtype=p.sigma_next.dtype, device=p.sigma_next.device), p.sigma_next.shape))
        x0 = p.x0.clamp(-1, 1) if self.clip else p.x0
        y = self.measurement(x0)
        resid = self.operator.A(x0) - y
        x0p = self.data_step(x0, resid, p.sigma, p.sigma_next)
        if not self.history or self.history[-1]["step"] != step:   # EDM calls twice per step: keep the first
            self.history.append({"step": step, "sigma_used": p.sigma.detach().cpu(),
                                 "lambda": self.lam(p.sigma_next, p.sigma).detach().cpu(),
                                 "consistency_before": resid.flatten(1).norm(dim=1).detach().cpu(),
                                 "consistency": self.operator.consistency(x0p, y).detach().cpu()})
        if self.carries_noise:
            d = (self.ddrm_direction(p.x, x0, p.sigma, p.sigma_next) if self.rule == "ddrm"
                 else self.ddnm_plus_direction(x, x0p, p.sigma, p.sigma_next))
            return Prediction(x, d, p.sigma, p.sigma_next, p.eps_norm, clamped_x0=x0p)
        eps = (x - x0p) / bcast(p.sigma.clamp_min(1e-12), x)
        return Prediction(x, eps, p.sigma, p.sigma_next, p.eps_norm)


# ----------------------------------------------------------------------------------------------
# Schedules

def default_tail_steps(steps: int, fraction: float = TAIL_FRACTION) -> int:
    """The cyclic tail's share of the budget: none by default; ``OFFICIAL_TAIL_FRACTION`` gives the
    official 80 + 20 of 100. No tail below 5 steps."""
    return int(round(fraction * steps)) if steps >= 5 else 0


def cyclic_tail(length: int, sigma_min: float = TAIL_SIGMA[0], sigma_max: float = TAIL_SIGMA[1],
                cycle: int = TAIL_CYCLE) -> torch.Tensor:
    """The official 'redesign_sigma' tail: ``length`` levels in saw-tooth cycles of ``cycle`` steps,
    ``log s_i = log s_min + (log s_max - log s_min) (1 - u)`` with u = (i mod cycle) / cycle: every
    cycle restarts at s_max and decays towards s_min (the official decay factor across cycles is 1)."""
    if length <= 0:
        return torch.zeros(0, dtype=torch.float64)
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"the tail needs 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    if int(cycle) != cycle or cycle < 1:
        raise ValueError(f"the tail's cycle size must be a positive integer, got {cycle!r}")
    u = torch.arange(length, dtype=torch.float64).remainder(cycle) / cycle
    lo, hi = math.log(sigma_min), math.log(sigma_max)
    return torch.exp(lo + (hi - lo) * (1 - u).clamp_min(0))


def with_tail(main: torch.Tensor, tail_steps: int, tail_sigma: tuple[float, float] = TAIL_SIGMA,
              cycle: int | None = None) -> torch.Tensor:
    """A main grid (descending levels, without the final 0) followed by ``cyclic_tail`` (cycles of
    ``cycle`` steps, default min(10, tail_steps)) and 0, whose step returns the x0 estimate. The
    array jumps *up* at every cycle restart: a sampler step from sigma to a larger sigma_next
    re-noises from the step's x0 (DDIM's ``x0 + sigma_next (...)`` is valid for any pair)."""
    cycle = cycle or max(1, min(TAIL_CYCLE, tail_steps))
    tail = cyclic_tail(tail_steps, tail_sigma[0], tail_sigma[1], cycle)
    return torch.cat([main.double(), tail, torch.zeros(1, dtype=torch.float64)]).float()


def iterproj_sigmas(main_steps: int, tail_steps: int, sigma_max: float, sigma_min: float,
                    tail_sigma: tuple[float, float] = TAIL_SIGMA, cycle: int | None = None) -> torch.Tensor:
    """The official IterProj sigma array (main_steps + tail_steps + 1 values, ending in 0): log-linear
    from sigma_max to sigma_min (the official 'Linear'), clamped below at the tail's minimum, then
    ``with_tail``. ``restore(grid="loglinear")`` uses it."""
    if main_steps < 1:
        raise ValueError("IterProj needs at least one main step")
    main = LogLinear(sigma_min, sigma_max).sigmas(main_steps)[:-1].double().clamp_min(tail_sigma[0])
    return with_tail(main, tail_steps, tail_sigma, cycle)


def model_grid(denoiser, steps: int) -> tuple[torch.Tensor, str]:
    """DDNM's grid, without the final 0: the model's own timesteps spaced 'leading' (t = 990, 980, ...,
    0 for 100 steps), or log-linear over the model's range when it has no discrete timesteps."""
    if denoiser.schedule is not None:
        return ModelSpacing(denoiser.schedule.alphas_cumprod, "leading").sigmas(steps)[:-1], "model-leading"
    return LogLinear(denoiser.sigma_min, denoiser.sigma_max).sigmas(steps)[:-1], "loglinear"


# ----------------------------------------------------------------------------------------------
# The entry point

@dataclass
class RestoreResult:
    images: torch.Tensor                 # (B, C, H, W) in [-1, 1]
    records: list[StepRecord]            # per step, without image tensors; .extras holds consistency
    history: list[dict]                  # per step: plain numbers (batch means) for plots
    consistency: torch.Tensor            # (B,) ||A images - y|| of the returned images
    nfe_per_image: float
    seconds: float
    settings: dict = field(default_factory=dict)
    kept_step: torch.Tensor | None = None  # (B,) the step whose x0 each image is

    def trace(self, per_image: bool = False) -> dict:
        return {"settings": self.settings, "nfe_per_image": self.nfe_per_image, "seconds": round(self.seconds, 4),
                "consistency": [round(float(c), 6) for c in self.consistency],
                "steps": [step_summary(r, per_image) for r in self.records]}


class _Shaped(Wrapper):
    """A denoiser that does not state its sample shape, told it (from the measurement)."""

    def __init__(self, model, shape):
        super().__init__(model)
        self.shape = tuple(shape)

    @property
    def sample_shape(self):
        return self.shape


def _check_int(name, value, lo, hi):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not lo <= value <= hi:
        raise ValueError(f"{name} must be a whole number from {lo} to {hi}, got {value!r}")
    return int(value)


def _check_method(method: str, sampler: str, correction) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown restoration method {method!r} (choose from {', '.join(METHODS)})")
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r} (choose from {', '.join(SAMPLERS)})")
    if RESTORATION_METHODS[method].level_ratio is not None:
        if correction is not None and type(correction) is not Correction and not isinstance(correction, LevelCorrection):
            raise ValueError(f"method {method!r} reads the noise level itself: pass no correction, or a noise-level "
                             f"correction (LevelCorrection, e.g. the NLC network) as its reading, not "
                             f"{type(correction).__name__}")
    elif RESTORATION_METHODS[method].inner is not None:
        if correction is None:
            raise ValueError(f"method {method!r} needs the noise-level correction: pass correction= "
                             "(the NLC network or its lookup table, a LevelCorrection)")
        if not isinstance(correction, LevelCorrection):
            raise ValueError(f"method {method!r} needs a noise-level correction (LevelCorrection), got "
                             f"{type(correction).__name__}; use method='iterproj' with correction= "
                             f"for other corrections")
    if correction is not None and not isinstance(correction, Correction):
        raise ValueError(f"correction must be a Correction, got {type(correction).__name__}")


def _batched(base, operator: Operator, y, n: int | None):
    """(denoiser that knows its sample shape, y as a (n, ...) batch on its device, n)."""
    y = torch.as_tensor(y).to(device=base.device, dtype=torch.float32)
    shape = base.sample_shape
    if shape is None:
        if y.dim() < 2:
            raise ValueError("cannot tell the image shape: give a model with sample_shape, or a batched y")
        shape = tuple(operator.pinv(y[:1]).shape[1:])
        base = _Shaped(base, shape)
    meas_shape = tuple(operator.A(torch.zeros(1, *shape, device=base.device)).shape[1:])
    if tuple(y.shape) == meas_shape:
        y = y[None]
    if tuple(y.shape[1:]) != meas_shape:
        raise ValueError(f"the measurement has shape {tuple(y.shape[1:])} per image, but this operator makes "
                         f"{meas_shape} from the model's {'x'.join(map(str, shape))} images")
    n = y.shape[0] if n is None else _check_int("n", n, 1, 10_000)
    if y.shape[0] != n:
        if y.shape[0] != 1:
            raise ValueError(f"the measurement has {y.shape[0]} images but n = {n}")
        y = y.expand(n, *y.shape[1:])
    return base, y, n


@dataclass
class Grid:
    sigmas: torch.Tensor
    schedule: str
    tail: int = 0
    cycle: int | None = None


def restoration_grid(method: str, base, steps: int, grid: str = DEFAULT_GRID, tail_steps: int | None = None,
                     cycle_size: int | None = None, tail_sigma=TAIL_SIGMA, sigma_max: float | None = None) -> Grid:
    """The sigma grid a method walks: DDNM's (the model's timesteps, 'leading'); IterProj's main grid
    (DDNM's or the official log-linear one) with the optional cyclic tail."""
    if not RESTORATION_METHODS[method].iterproj:
        main, schedule = model_grid(base, steps)
        return Grid(with_tail(main, 0), schedule)
    if grid not in GRIDS:
        raise ValueError(f"unknown IterProj grid {grid!r} (choose from {', '.join(GRIDS)})")
    if sigma_max is not None and grid != "loglinear":
        raise ValueError("sigma_max sets where the log-linear grid starts: use it with grid='loglinear'")
    tail = default_tail_steps(steps) if tail_steps is None else _check_int("tail_steps", tail_steps, 0, steps - 1)
    cycle = cycle_size if cycle_size is not None else max(1, min(TAIL_CYCLE, tail))
    if grid == "model":
        main, schedule = model_grid(base, steps - tail)
        sigmas = with_tail(main, tail, tuple(tail_sigma), cycle)
    else:
        hi = float(sigma_max) if sigma_max is not None else min(ITERPROJ_START_SIGMA, float(base.sigma_max))
        sigmas = iterproj_sigmas(steps - tail, tail, hi, float(base.sigma_min), tuple(tail_sigma), cycle)
        schedule = "loglinear"
    return Grid(sigmas, schedule + ("+cyclic-tail" if tail else ""), tail, cycle)


class MostConsistent:
    """Per image, the x0 to return: the most measurement-consistent one seen (IterProj), scored by
    ``|c - delta|`` among the steps below the noise crossover when there is noise (docs/restoration.md),
    or simply the last one (DDNM)."""

    def __init__(self, delta: float, tol: float, keep_best: bool, n: int):
        self.delta, self.tol, self.keep_best, self.n = delta, tol, keep_best, n
        self.best = self.score = self.kept = None

    def offer(self, out, c, lam, step: int):
        score = (c - self.delta).abs()
        if self.delta > 0:   # with noise, only x0s made below the noise crossover (lambda < 1) compete
            score = torch.where(lam.to(score.device) < 1, score, torch.full_like(score, math.inf))
        if self.best is None or not self.keep_best:
            self.best, self.score = out, score
            self.kept = torch.full((self.n,), step, dtype=torch.long)
            return
        take = score <= self.score + self.tol
        self.best = torch.where(take.view(-1, *[1] * (out.dim() - 1)), out, self.best)
        self.kept = torch.where(take.cpu(), torch.full_like(self.kept, step), self.kept)
        self.score = torch.minimum(self.score, score)


def restore(model, operator: Operator, y: torch.Tensor, method: str = "iterproj", steps: int = DEFAULT_STEPS,
            seed: int = 0, sigma_y: float = 0.0, correction: Correction | None = None, eta: float | None = None,
            tail_steps: int | None = None, labels=None, progress: Callable[[StepRecord], None] | None = None, *,
            n: int | None = None, sampler: str = "ddim", clip: bool = True, cycle_size: int | None = None,
            tail_sigma: tuple[float, float] = TAIL_SIGMA, sigma_max: float | None = None,
            grid: str = DEFAULT_GRID, next_level: str = DEFAULT_NEXT_LEVEL,
            prox_weight: float | None = None, level_ratio: float | None = None,
            level_below: float | None = None, damping: float | None = None) -> RestoreResult:
    """Restore images from the measurement ``y`` (of ``operator``) with one of ``METHODS``.

    model: a denoiser (``eps(x, sigma, cond)``) or a callable eps(x, sigma).
    y: (B, ...) measurement as ``operator.A`` makes it (``degrade``), or one image without batch dim.
    steps: network-evaluation budget (ddnm: DDIM steps; iterproj: main + tail steps).
    seed: image i uses seed + i (start noise and fresh noise); n: number of restorations when y
    holds one measurement (default: y's batch). sigma_y: measurement noise std in [0, 1] pixel units.
    correction: the inner correction (required, a LevelCorrection, for iterproj-nlc; optional otherwise).
    eta: the method's fresh-noise knob (default its paper's value): DDIM's eta in DDNM's form for
    ddnm and iterproj, DDRM's eta (eta_b = 1), DiffPIR's zeta. prox_weight: DiffPIR's lambda. tail_steps: iterproj's tail length (default none), cycles
    of ``cycle_size`` (default min(10, tail_steps)) between ``tail_sigma`` = (0.003, 0.02).
    grid: iterproj's main grid, "model" (DDNM's, the default) or "loglinear" (the official one, from
    ``sigma_max``, default min(100, the model's sigma_max), to the model's sigma_min).
    damping: iterproj-nlc's exponent p on DDNM+'s damping with a noisy measurement, on the components
    damped from early on (crossover above DAMPED_FROM; default its declared 1).
    level_ratio, level_below: iterproj-nlc's level reading, r in sigma (1 + r) at sigma <= level_below
    (default its declared values); a LevelCorrection passed as ``correction`` reads the level instead
    (e.g. NLC's r_theta).
    next_level: with a level correction inside, re-noise to the "scheduled" sigma_next (default) or
    to the "corrected" sigma_next (1 + r) of the official code.
    sampler: "ddim" by definition of the methods; the others work too (eta is DDIM's only).
    progress(record): called after each step with the full record (its ``extras`` filled in).
    """
    t0 = time.perf_counter()
    _check_method(method, sampler, correction)
    spec = RESTORATION_METHODS[method]
    sigma_y = check_sigma_y(sigma_y)
    steps = _check_int("steps", steps, 1, MAX_STEPS)
    # the method's own knobs: the value given, else its declared one; a knob it does not declare is ignored
    given = {"eta": eta, "prox_weight": prox_weight, "level_ratio": level_ratio, "level_below": level_below,
             "damping": damping}
    declared = spec.knobs()
    knobs = {p.key: p.check(declared[p.key] if given[p.key] is None else given[p.key])
             for p in METHOD_KNOBS if p.key in declared}
    eta, prox_weight, level_ratio = knobs["eta"], knobs.get("prox_weight"), knobs.get("level_ratio")
    damping = knobs.get("damping", DAMPING.default)
    if level_ratio is not None and not isinstance(correction, LevelCorrection):
        correction = FixedLevel(level_ratio, max_sigma=knobs["level_below"])
    base, y, n = _batched(as_denoiser(model), operator, y, n)
    g = restoration_grid(method, base, steps, grid, tail_steps, cycle_size, tail_sigma, sigma_max)

    fresh = SeededNoise([FRESH_SEEDS + seed + i for i in range(n)])
    proj = Projected(correction, operator, y, sigma_y=sigma_y, clip=clip, next_level=next_level, rule=spec.rule,
                     prox_weight=prox_weight, eta=eta, noise=fresh, damping=damping)
    m = measurement_size(operator, y)
    keep = MostConsistent(model_noise(sigma_y) * math.sqrt(m), SELECT_TOL * math.sqrt(m), spec.iterproj, n)
    # the sampler's own fresh noise: DDNM's eta; DiffPIR's sqrt(zeta); none where the step carries it
    # (DDRM, DDNM+ with a noisy measurement)
    sampler_eta = 0.0 if proj.carries_noise else {"diffpir": eta ** 0.5}.get(spec.rule, eta)
    options = {"eta": sampler_eta, "eta_style": "ddnm"} if sampler == "ddim" else {}
    records, history = [], []
    for rec in sample_steps(base, sampler=sampler, steps=len(g.sigmas) - 1, n=n, seed=seed, labels=labels,
                            correction=proj, sigmas=g.sigmas, clip_x0=False, **options):
        out = rec.x0.clamp(-1, 1)
        c = operator.consistency(out, proj.measurement(out)).float()
        h = proj.history[-1] if proj.history and proj.history[-1]["step"] == rec.step else None
        before = h["consistency_before"] if h else torch.full_like(c.cpu(), float("nan"))
        lam = h["lambda"] if h else torch.full_like(c.cpu(), float("nan"))
        rec.extras.update(consistency=c.detach().cpu(), consistency_before=before, **{"lambda": lam})
        keep.offer(out, c, lam, rec.step)
        if progress:
            progress(rec)
        records.append(light(rec))
        history.append({"step": rec.step, "sigma": rec.sigma, "sigma_next": rec.sigma_next,
                        "sigma_used": float(rec.sigma_used.float().mean()), "consistency": float(c.mean()),
                        "consistency_before": float(before.float().mean()), "lambda": float(lam.float().mean()),
                        "nfe": rec.nfe})

    # Exact measurements: end on {A x = y} *and* in the pixel range (the clamp alone breaks A x = y).
    images = operator.project_box(keep.best, proj.measurement(keep.best)) if sigma_y == 0 and clip else keep.best
    consistency = operator.consistency(images, proj.measurement(images)).float().cpu()
    settings = {"method": method, "sampler": sampler, "steps": steps, "main_steps": steps - g.tail,
                "tail_steps": g.tail, "eta": eta if sampler == "ddim" else None, "seed": seed, "n": n,
                "sigma_y": sigma_y, "sigma_y_model": model_noise(sigma_y), "noise_gain": proj.gain, "clip": bool(clip),
                "schedule": g.schedule, "sigma_first": float(g.sigmas[0]), "operator": type(operator).__name__,
                "correction": proj.inner.name, "output": "most consistent x0" if keep.keep_best else "last x0"}
    if spec.iterproj:
        settings.update(grid=grid, next_level=next_level, cycle_size=g.cycle, tail_sigma=list(tail_sigma))
    if prox_weight is not None:
        settings["prox_weight"] = prox_weight
    if "damping" in knobs:
        settings["damping"] = damping
    if isinstance(proj.inner, FixedLevel):
        settings.update(level_ratio=proj.inner.r, level_below=proj.inner.max_sigma)
    return RestoreResult(images, records, history, consistency, sum(r.nfe for r in records),
                         time.perf_counter() - t0, settings, keep.kept)
