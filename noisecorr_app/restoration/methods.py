"""Restoration methods: DDNM and IterProj(-NLC), built as a correction around the sampling engine.

Restoration is not a new sampler. ``Projected(inner, operator, y)`` is a ``Correction``: it asks its
inner correction (the identity, epsilon scaling, NLC, ...) for a prediction, takes that
prediction's x0, projects it onto the measurement set (DDNM's range/null-space step,
``x0p = x0 - A^+ (A x0 - y)``) and returns a ``Prediction`` whose direction is recomputed from the
projected estimate, ``eps' = (x - x0p) / sigma_used`` (the official NLC code's
``ddim_simple_orig``). Samplers only ever see ``Prediction``s, so DDIM, DDPM, EDM-Heun and
DPM-Solver++ all restore with no sampler-specific code, and every correction composes with it.

Methods (METHODS.md section 7; notes/nlc.md section 5; notes/restoration_app.md A.1):

- ``ddnm``: DDIM with eta (0.85, as DDNM) on the model's own timesteps spaced as DDNM's code does
  (t = 990, 980, ..., 0 for 100 steps; "leading"), identity inner correction; output: the last x0.
- ``iterproj``: the official IterProj loop without NLC: ``steps - tail_steps`` main steps on DDNM's
  grid (``grid="model"``, our default) or on the official one (``grid="loglinear"``: log-linear
  from min(100, model sigma_max) to the model's sigma_min), then the optional cyclic small-sigma
  tail (``cyclic_tail``: saw-tooth cycles in log sigma from 0.02 down towards 0.003, 10 steps per
  cycle), then 0; DDIM with eta 0.85; output: per image, the most measurement-consistent x0 seen
  over all steps. Any correction may sit inside the loop (``correction=EpsScaling(...)``:
  training-free corrections as options).
- ``iterproj-nlc``: the same loop with an NLC-style ``LevelCorrection`` inside (the caller passes
  it: the NLC network or its lookup table).

The main grid (our decision, measured): the official log-linear grid spreads its steps evenly over
four decades of sigma (100 to 0.01), so at 20 steps 6 of them fall below sigma 0.18, where a
CIFAR-10 image hardly changes; DDNM's grid (the model's timesteps, 'leading') has one step there and
spends the rest between 0.2 and 100. On 32 CIFAR-10 *train* images (a validation set; the README's
table uses test images), 20 NFE, IterProj-NLC minus DDNM in dB, sr4 / inpaint / deblur / colorize /
cs: log-linear grid -0.02 / -0.47 / -0.02 / -0.48 / -0.37 at sigma_y = 0 and +0.04 / -0.25 / -0.72 /
-0.12 / -0.32 at 0.05; DDNM's grid +0.07 / +0.02 / +0.06 / +0.80 / +0.00 and +0.07 / +0.05 / -0.67 /
+0.59 / +0.03 (diffusers' 'trailing' spacing, tried at 0.05: within 0.16 dB of 'leading').
At 100 NFE (16 train images, sigma_y = 0) the two grids are level: log-linear +0.06 / +0.11 / -0.02 /
+0.28 / +0.48 (average +0.18), DDNM's +0.19 / +0.04 / +0.10 / +0.25 / +0.08 (+0.13).
(These grid figures were taken with the official next level, before the decision below.) On DDNM's
grid IterProj without NLC is DDNM step for step, differing only where its selection keeps an
earlier, more consistent x0 (0.001 dB or less in the README's table): the table's IterProj-NLC minus
IterProj is NLC's own effect.
The level a level correction re-noises to (our decision, measured): the official loop steps to
``sigma_next (1 + r)`` as NLC does in plain sampling, but after a projection r does not describe the
next state. With noisy measurements DDNM+'s per-component damping passes up to sigma_next of
measurement noise on the damped components and the sampler adds its fresh noise on top (DDNM+'s
gamma, which would shrink it, is left out: see below), so a noisy deblur's states carry up to ~1.4 x
the scheduled level (r_theta reads +0.3 to +0.44 at sigma 1-5 at sigma_y = 0.05, +0.02 to +0.1 at
sigma_y = 0); stepping to sigma_next (1 + r) feeds that excess back into every later step. We
re-noise to the scheduled sigma_next (``next_level="scheduled"``): NLC sets the level the network is
evaluated at, the schedule the level stepped to, and every step measures afresh. On the same 32
train images (DDNM's grid, 20 NFE) IterProj-NLC minus DDNM went, sigma_y = 0: +0.07 / +0.02 / +0.06 /
+0.80 / +0.00 -> -0.03 / +0.10 / -0.04 / +0.77 / +0.02 (average +0.19 -> +0.16); sigma_y = 0.05:
+0.07 / +0.05 / -0.67 / +0.59 / +0.03 -> -0.01 / +0.12 / +1.27 / +0.73 / +0.05 (+0.01 -> +0.43).
At 100 NFE (16 train images, DDNM's grid): +0.13 -> +0.24 at sigma_y = 0 and +0.00 -> +0.36 at 0.05,
ahead of DDNM on all 10 rows with the scheduled level.
``next_level="corrected"`` (CLI ``--next-level corrected``) is the official rule. Also tried with
both decisions in place (same images, IterProj-NLC against itself): NLC without its normalisation
-0.04 to -0.19 dB on all 10 rows; the official 20% tail (4 of 20 steps) -0.99 to +0.23, worse on
7 of 10 (inpaint -0.48 / -0.45, colorize -0.99 / -0.84): both stay off. Without a level
correction inside (ddnm, iterproj) the two are the same.

Equal network evaluations: for a budget of ``steps``, ddnm takes ``steps`` DDIM steps and iterproj
takes ``steps - tail_steps`` main steps plus ``tail_steps`` tail steps, one evaluation each, so
with the identity inner correction both report ``nfe_per_image == steps``. The tail is off by
default (our decision, measured): the official CIFAR-10 setting spends 20% of the budget on it
(80 main + 20 tail of 100, ``OFFICIAL_TAIL_FRACTION``), but with our default model it cost PSNR at
both budgets we measured (16 CIFAR-10 test images, sigma_y = 0; IterProj-NLC with the tail /
without): 20 NFE colorize 19.92 / 20.70 dB, inpaint 21.43 / 21.54; 100 NFE colorize 24.87 / 25.40,
sr4 20.83 / 20.93, inpaint 20.64 / 20.97. ``tail_steps=`` (CLI ``--tail-steps``) turns it on;
cycles are ``min(10, tail_steps)`` steps.

Decisions where the papers are silent (ours; documented here and in ``settings``):

- Clipping: the network's x0 is clipped to [-1, 1] *before* the projection (the official order,
  ``x0 = clip(x - sigma eps)`` then ``P_C``), never after it: clipping a projected estimate would
  undo ``A x0p = y`` (e.g. a block mean in super-resolution). ``clip=False`` turns it off. The
  returned images are in [-1, 1], and consistency is always measured on the returned images (the
  official code measures ``||A clamp(x0) - y||`` too). With exact measurements (sigma_y = 0) the
  returned images are brought onto ``{A x = y}`` within the pixel range by alternating projections
  (``Operator.project_box``; every method): a plain clamp left residuals of 5e-3 to 8e-2, this
  leaves < 1e-3 (measured on CIFAR-10 at 20 steps). With noise nothing is forced onto the noisy y.
- Noisy measurements ``y = A x + n``: ``sigma_y`` is the noise std in [0, 1] pixel units (DDRM/DDNM
  convention), i.e. ``2 sigma_y`` in the model's [-1, 1] space (``model_noise``); supported range
  [0, 0.2], anything else raises ValueError. Handling is DDNM+'s lambda rule per singular value:
  the component of ``A^+ (A x0 - y)`` on singular value s is scaled by
  ``lambda(s) = min(1, sigma_next s / (2 sigma_y))`` (``Operator.pinv_damped``), where
  ``sigma_next`` is the level the step re-noises to (DDNM+'s sigma_t / a_t in sigma space): the
  noise A^+ passes on along s is 2 sigma_y / s, so each component carries at most sigma_next of it.
  For the operators whose nonzero singular values are all equal (inpainting, average-pooling SR,
  colorization, compressive sensing) this is one scalar per step and image; for deblurring and
  bicubic SR the separable SVD damps each singular value on its own. (One scalar from the RMS
  gain of A^+ was used before: for the blur that gain is dominated by the smallest kept singular
  values, and deblurring at sigma_y = 0.05 fell to 10-13 dB for every method, n = 50.) The
  scalar ``lambda`` recorded per step and used by the selection rule below is the largest of
  them, the one on A's top singular value: ``min(1, sigma_next s_max / (2 sigma_y))``. It is 1
  while some component is still pinned to y and falls below 1 once every component is damped
  (for the blur, s_max = 1: sigma_next < 2 sigma_y). The RMS version used before,
  ``sigma_next / (g 2 sigma_y)`` with g the RMS of 1/s, fell below 1 at the first steps of a
  deblur, so early, blurry x0s competed in the selection (noisy deblur, n = 200: IterProj
  15.87 dB against DDNM's 17.47). DDNM+'s second part, shrinking the re-noising to
  ``sqrt(sigma_next^2 - (lambda sigma_y / s)^2)`` (gamma), is left out: the sampler owns the fresh
  noise, so the range space may carry up to sqrt(2) sigma_next of noise at the crossover steps.
  With ``sigma_y = 0``, lambda = 1: the exact projection. At the last step (sigma_next = 0)
  lambda = 0, so with noise the final x0 is the model's own (not forced onto the noisy y).
  Measured on exact Gaussian priors (tests): the output residual is 0.6-1.0 times the noise norm
  at 20 steps (a posterior sample has 1.0), lower on finer grids (~0.4-0.7 at 100 steps): the rule
  pulls towards y at every step of the lambda < 1 regime, so it fits part of the noise; the same
  holds for DDNM+'s own rule with gamma (checked in a 1-D simulation).
- Keeping "the most consistent x0" (iterproj): the score of a step is ``|c - delta|`` with ``c``
  the consistency of its (clamped) x0 and ``delta = 2 sigma_y sqrt(m)`` the expected norm of the
  measurement noise (m measured values): with ``sigma_y = 0`` this is the official "smallest
  residual", with noise it is the discrepancy principle (fitting the noise is not better), among
  the steps below the noise crossover only (lambda < 1): above it the projection pins x0 to the
  noisy y, and an early, still blurry x0 can match delta by chance (measured before this rule, at
  sigma_y = 0.05 and 20 steps: steps 2-5 of 20 were kept and PSNR fell to ~10 dB). A later
  step replaces the kept one unless it is worse than the best seen by more than
  ``1e-3 * sqrt(m)`` (an eighth of a grey level RMS): with an exact projection every step is
  consistent to round-off, and the float noise must not select an early, blurry x0. The official
  loop also stops once the batch-mean residual reaches 0; ours always spends the whole budget (same
  NFE for every method).
- The projection's ``eps'`` replaces the network's eps in the re-noising (official IterProj);
  DDNM's own code re-noises with the network's eps. Both end at the projected x0.

Per-step records: ``restore`` adds ``consistency``, ``consistency_before`` and ``lambda`` (per-image
tensors) to every record's ``extras``, which ``trace.step_summary`` reads, and
``RestoreResult.history`` holds the same per step as plain numbers (batch means) for plots.
``Projected.history`` (reset by ``reset()``) keeps them for any other use of the wrapper.
"""
from __future__ import annotations

import math
import numbers
import time
from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from ..models.denoiser import Cond, as_denoiser, bcast
from ..sampling.corrections import Correction, LevelCorrection, Prediction
from ..sampling.noise import SeededNoise
from ..sampling.run import MAX_STEPS, sample_steps
from ..sampling.samplers import SAMPLERS, StepRecord
from ..sampling.schedules import LogLinear, ModelSpacing
from ..sampling.trace import light, step_summary
from .operators import Inpainting, Operator

__all__ = ["METHODS", "SIGMA_Y_MAX", "GRIDS", "NEXT_LEVELS", "Projected", "RestoreResult", "restore", "degrade",
           "cyclic_tail", "with_tail", "iterproj_sigmas", "model_grid", "default_tail_steps", "model_noise",
           "check_sigma_y", "measurement_size", "pinv_noise_gain"]

METHODS = ("ddnm", "iterproj", "iterproj-nlc")
SIGMA_Y_MAX = 0.2            # largest measurement noise std, [0, 1] pixel units
DEFAULT_ETA = 0.85           # DDNM and the official IterProj code
DEFAULT_STEPS = 100          # DDNM's 100 steps; the official IterProj max_T = 100
TAIL_FRACTION = 0.0          # our default: no tail (measured: it cost PSNR; module docstring)
OFFICIAL_TAIL_FRACTION = 0.2  # official CIFAR-10 setting: 80 main steps + 20 tail steps
TAIL_SIGMA = (0.003, 0.02)   # official min_sigma, max_sigma of the cyclic tail
TAIL_CYCLE = 10              # official cycle_size
ITERPROJ_START_SIGMA = 100.0  # official start_sigma (capped at the model's sigma_max)
GRIDS = ("model", "loglinear")  # IterProj's main grid: DDNM's (model timesteps, 'leading') or the official log-linear
DEFAULT_GRID = "model"       # measured: module docstring
NEXT_LEVELS = ("scheduled", "corrected")  # where a level correction's step re-noises to
DEFAULT_NEXT_LEVEL = "scheduled"          # ours (measured: module docstring); "corrected" is the official
SELECT_TOL = 1e-3            # RMS residual per measurement below which steps count as equally consistent


# ----------------------------------------------------------------------------------------------
# Measurement noise

def check_sigma_y(sigma_y) -> float:
    """The measurement noise std in [0, 1] pixel units, validated: a number in [0, SIGMA_Y_MAX]."""
    if isinstance(sigma_y, bool) or not isinstance(sigma_y, numbers.Real) or not 0 <= sigma_y <= SIGMA_Y_MAX:
        raise ValueError(f"measurement noise sigma_y must be a number in [0, {SIGMA_Y_MAX}] "
                         f"(std in [0, 1] pixel units), got {sigma_y!r}")
    return float(sigma_y)


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


def pinv_noise_gain(operator: Operator, y: torch.Tensor) -> float:
    """RMS gain of A^+ on measurement noise (the RMS of 1/s over the kept singular values); see
    ``Operator.noise_gain``."""
    return operator.noise_gain(y)


# ----------------------------------------------------------------------------------------------
# The projection as a correction

class Projected(Correction):
    """Wrap a correction so that every prediction's x0 lies on (or, with noise, moves towards)
    ``{x : A x = y}``; see the module docstring for the rules.

    inner: the correction whose prediction is projected (``Correction()`` = the plain network).
    operator, y: the measurement; y (B or 1, ...) is moved to x's device and dtype as needed.
    sigma_y: measurement noise std in [0, 1] pixel units (DDNM+ lambda rule when > 0).
    clip: clip the inner x0 to [-1, 1] before projecting (official order).
    next_level: where a level correction's step goes, "scheduled" (ours, default) or "corrected"
    (the official sigma_next (1 + r)); see the module docstring.
    """

    def __init__(self, inner: Correction | None, operator: Operator, y: torch.Tensor, sigma_y: float = 0.0,
                 clip: bool = True, next_level: str = DEFAULT_NEXT_LEVEL):
        self.inner = inner if inner is not None else Correction()
        if not hasattr(self.inner, "predict"):
            raise ValueError(f"the inner correction must be a Correction, got {type(inner).__name__}")
        if next_level not in NEXT_LEVELS:
            raise ValueError(f"next_level must be one of {', '.join(NEXT_LEVELS)}, got {next_level!r}")
        self.next_level = next_level
        self.operator, self.y, self.clip = operator, y, bool(clip)
        self.sigma_y = check_sigma_y(sigma_y)
        self.noise = model_noise(self.sigma_y)
        self.gain = pinv_noise_gain(operator, y) if self.noise > 0 else 1.0
        self.s_top = operator.top_singular_value(y) if self.noise > 0 else 1.0
        self.name = f"projected+{getattr(self.inner, 'name', 'none')}"
        self.history: list[dict] = []
        self._ys: dict = {}

    def reset(self, sigmas: torch.Tensor | None = None, sampler: str | None = None):
        self.inner.reset(sigmas=sigmas, sampler=sampler)
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

    def lam(self, sigma_next: torch.Tensor) -> torch.Tensor:
        """DDNM+'s lambda on A's top singular value, per image: 1 without noise,
        min(1, sigma_next s_max / sigma_y_model) with (the largest per-component lambda)."""
        if self.noise == 0:
            return torch.ones_like(sigma_next, dtype=torch.float32)
        return (sigma_next.float() * self.s_top / self.noise).clamp(max=1.0)

    def predict(self, model, x, sigma, sigma_next, cond: Cond | None, step: int) -> Prediction:
        p = self.inner.predict(model, x, sigma, sigma_next, cond, step)
        if self.next_level == "scheduled":     # the correction's level serves this evaluation only
            p = replace(p, sigma_next=torch.broadcast_to(
                torch.as_tensor(sigma_next, dtype=p.sigma_next.dtype, device=p.sigma_next.device), p.sigma_next.shape))
        x0 = p.x0.clamp(-1, 1) if self.clip else p.x0
        y = self.measurement(x0)
        resid = self.operator.A(x0) - y
        lam = self.lam(p.sigma_next).to(x0.device)
        if self.noise == 0:
            x0p = x0 - self.operator.pinv(resid)
        else:   # DDNM+ per singular value: lambda(s) = min(1, sigma_next s / sigma_y)
            tau = p.sigma_next.float().to(x0.device) / self.noise
            x0p = x0 - self.operator.pinv_damped(resid, tau.expand(x0.shape[0]) if tau.dim() == 0 else tau)
        eps = (x - x0p) / bcast(p.sigma.clamp_min(1e-12), x)
        if not self.history or self.history[-1]["step"] != step:   # EDM calls twice per step: keep the first
            self.history.append({"step": step, "sigma_used": p.sigma.detach().cpu(), "lambda": lam.detach().cpu(),
                                 "consistency_before": resid.flatten(1).norm(dim=1).detach().cpu(),
                                 "consistency": self.operator.consistency(x0p, y).detach().cpu()})
        return Prediction(x, eps, p.sigma, p.sigma_next, p.eps_norm)


# ----------------------------------------------------------------------------------------------
# Schedules

def default_tail_steps(steps: int, fraction: float = TAIL_FRACTION) -> int:
    """The cyclic tail's share of the budget: none by default; ``OFFICIAL_TAIL_FRACTION`` gives the
    official 80 + 20 of 100. No tail below 5 steps."""
    return int(round(fraction * steps)) if steps >= 5 else 0


def cyclic_tail(length: int, sigma_min: float = TAIL_SIGMA[0], sigma_max: float = TAIL_SIGMA[1],
                cycle: int = TAIL_CYCLE, gamma: float = 1.0) -> torch.Tensor:
    """The official 'redesign_sigma' tail: ``length`` levels in saw-tooth cycles of ``cycle`` steps,
    ``log s_i = log s_min + (log s_max - log s_min) (1 - u) gamma^(c - 1)`` with c = 1 + i // cycle
    and u = (i mod cycle) / cycle: every cycle restarts at s_max and decays towards s_min."""
    if length <= 0:
        return torch.zeros(0, dtype=torch.float64)
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"the tail needs 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    if int(cycle) != cycle or cycle < 1:
        raise ValueError(f"the tail's cycle size must be a positive integer, got {cycle!r}")
    i = torch.arange(length, dtype=torch.float64)
    c = torch.floor(1 + i / cycle)
    u = (i / cycle - c + 1).abs()
    lo, hi = math.log(sigma_min), math.log(sigma_max)
    return torch.exp(lo + (hi - lo) * (1 - u).clamp_min(0) * gamma ** (c - 1))


def with_tail(main: torch.Tensor, tail_steps: int, tail_sigma: tuple[float, float] = TAIL_SIGMA,
              cycle: int | None = None, gamma: float = 1.0) -> torch.Tensor:
    """A main grid (descending levels, without the final 0) followed by ``cyclic_tail`` (cycles of
    ``cycle`` steps, default min(10, tail_steps)) and 0, whose step returns the x0 estimate. The
    array jumps *up* at every cycle restart: a sampler step from sigma to a larger sigma_next
    re-noises from the step's x0 (DDIM's ``x0 + sigma_next (...)`` is valid for any pair)."""
    cycle = cycle or max(1, min(TAIL_CYCLE, tail_steps))
    tail = cyclic_tail(tail_steps, tail_sigma[0], tail_sigma[1], cycle, gamma)
    return torch.cat([main.double(), tail, torch.zeros(1, dtype=torch.float64)]).float()


def iterproj_sigmas(main_steps: int, tail_steps: int, sigma_max: float, sigma_min: float,
                    tail_sigma: tuple[float, float] = TAIL_SIGMA, cycle: int | None = None,
                    gamma: float = 1.0) -> torch.Tensor:
    """The official IterProj sigma array (main_steps + tail_steps + 1 values, ending in 0): log-linear
    from sigma_max to sigma_min (the official 'Linear'), clamped below at the tail's minimum, then
    ``with_tail``. ``restore(grid="loglinear")`` uses it."""
    if main_steps < 1:
        raise ValueError("IterProj needs at least one main step")
    main = LogLinear(sigma_min, sigma_max).sigmas(main_steps)[:-1].double().clamp_min(tail_sigma[0])
    return with_tail(main, tail_steps, tail_sigma, cycle, gamma)


def model_grid(denoiser, steps: int) -> tuple[torch.Tensor, str]:
    """DDNM's grid, without the final 0: the model's own timesteps spaced 'leading' (t = 990, 980, ...,
    0 for 100 steps), or log-linear over the model's range when it has no discrete timesteps."""
    if hasattr(denoiser, "alphas_cumprod"):
        return ModelSpacing(denoiser.alphas_cumprod, "leading").sigmas(steps)[:-1], "model-leading"
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


class _Shaped:
    """A denoiser that does not state its sample shape, told it (from the measurement)."""

    def __init__(self, model, shape):
        self.model, self.sample_shape = model, tuple(shape)

    def __getattr__(self, name):
        return getattr(self.model, name)

    def eps(self, x, sigma, cond=None):
        return self.model.eps(x, sigma, cond)


def _check_int(name, value, lo, hi):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not lo <= value <= hi:
        raise ValueError(f"{name} must be a whole number from {lo} to {hi}, got {value!r}")
    return int(value)


def restore(model, operator: Operator, y: torch.Tensor, method: str = "iterproj", steps: int = DEFAULT_STEPS,
            seed: int = 0, sigma_y: float = 0.0, correction: Correction | None = None, eta: float = DEFAULT_ETA,
            tail_steps: int | None = None, labels=None, progress: Callable[[StepRecord], None] | None = None, *,
            n: int | None = None, sampler: str = "ddim", clip: bool = True, cycle_size: int | None = None,
            tail_sigma: tuple[float, float] = TAIL_SIGMA, sigma_max: float | None = None,
            grid: str = DEFAULT_GRID, next_level: str = DEFAULT_NEXT_LEVEL) -> RestoreResult:
    """Restore images from the measurement ``y`` (of ``operator``) with one of ``METHODS``.

    model: a denoiser (``eps(x, sigma, cond)``) or a callable eps(x, sigma).
    y: (B, ...) measurement as ``operator.A`` makes it (``degrade``), or one image without batch dim.
    steps: network-evaluation budget (ddnm: DDIM steps; iterproj: main + tail steps).
    seed: image i uses seed + i (start noise and fresh noise); n: number of restorations when y
    holds one measurement (default: y's batch). sigma_y: measurement noise std in [0, 1] pixel units.
    correction: the inner correction (required, a LevelCorrection, for iterproj-nlc; optional otherwise).
    eta: DDIM's eta (DDNM form). tail_steps: iterproj's tail length (default none), cycles
    of ``cycle_size`` (default min(10, tail_steps)) between ``tail_sigma`` = (0.003, 0.02).
    grid: iterproj's main grid, "model" (DDNM's, the default) or "loglinear" (the official one, from
    ``sigma_max``, default min(100, the model's sigma_max), to the model's sigma_min).
    next_level: with a level correction inside, re-noise to the "scheduled" sigma_next (default) or
    to the "corrected" sigma_next (1 + r) of the official code.
    sampler: "ddim" by definition of the methods; the others work too (eta is DDIM's only).
    progress(record): called after each step with the full record (its ``extras`` filled in).
    """
    t0 = time.perf_counter()
    if method not in METHODS:
        raise ValueError(f"unknown restoration method {method!r} (choose from {', '.join(METHODS)})")
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r} (choose from {', '.join(SAMPLERS)})")
    sigma_y = check_sigma_y(sigma_y)
    steps = _check_int("steps", steps, 1, MAX_STEPS)
    if isinstance(eta, bool) or not isinstance(eta, numbers.Real) or not 0 <= eta <= 1:
        raise ValueError(f"eta must be a number in [0, 1], got {eta!r}")
    if method == "iterproj-nlc":
        if correction is None:
            raise ValueError("method 'iterproj-nlc' needs the noise-level correction: pass correction= "
                             "(the NLC network or its lookup table, a LevelCorrection)")
        if not isinstance(correction, LevelCorrection):
            raise ValueError(f"method 'iterproj-nlc' needs a noise-level correction (LevelCorrection), got "
                             f"{type(correction).__name__}; use method='iterproj' with correction= "
                             f"for other corrections")
    if correction is not None and not isinstance(correction, Correction):
        raise ValueError(f"correction must be a Correction, got {type(correction).__name__}")

    base = as_denoiser(model)
    device = getattr(base, "device", torch.device("cpu"))
    y = torch.as_tensor(y).to(device=device, dtype=torch.float32)
    shape = getattr(base, "sample_shape", None)
    probe_shape = tuple(operator.pinv(y[:1]).shape[1:]) if y.dim() >= 2 else None
    if shape is None:
        if probe_shape is None:
            raise ValueError("cannot tell the image shape: give a model with sample_shape, or a batched y")
        shape = probe_shape
        base = _Shaped(base, shape)
    meas_shape = tuple(operator.A(torch.zeros(1, *shape, device=device)).shape[1:])
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

    if method == "ddnm":
        tail, grid = 0, "model"
        main, schedule = model_grid(base, steps)
        sigmas = with_tail(main, 0)
    else:
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
        schedule += "+cyclic-tail" if tail else ""

    proj = Projected(correction, operator, y, sigma_y=sigma_y, clip=clip, next_level=next_level)
    delta = model_noise(sigma_y) * math.sqrt(measurement_size(operator, y))
    tol = SELECT_TOL * math.sqrt(measurement_size(operator, y))
    keep_best = method != "ddnm"
    options = {"eta": float(eta), "eta_style": "ddnm"} if sampler == "ddim" else {}

    best = best_score = kept = None
    records, history = [], []
    for rec in sample_steps(base, sampler=sampler, steps=len(sigmas) - 1, n=n, seed=seed, labels=labels,
                            correction=proj, sigmas=sigmas, clip_x0=False, **options):
        out = rec.x0.clamp(-1, 1)
        c = operator.consistency(out, proj.measurement(out)).float()
        h = proj.history[-1] if proj.history and proj.history[-1]["step"] == rec.step else None
        before = h["consistency_before"] if h else torch.full_like(c.cpu(), float("nan"))
        lam = h["lambda"] if h else torch.full_like(c.cpu(), float("nan"))
        rec.extras.update(consistency=c.detach().cpu(), consistency_before=before, **{"lambda": lam})
        score = (c - delta).abs()
        if delta > 0:   # with noise, only x0s made below the noise crossover (lambda < 1) compete
            score = torch.where(lam.to(score.device) < 1, score, torch.full_like(score, math.inf))
        if best is None or not keep_best:
            best, best_score = out, score
            kept = torch.full((n,), rec.step, dtype=torch.long)
        else:
            take = (score <= best_score + tol)
            best = torch.where(take.view(-1, *[1] * (out.dim() - 1)), out, best)
            kept = torch.where(take.cpu(), torch.full_like(kept, rec.step), kept)
            best_score = torch.minimum(best_score, score)
        if progress:
            progress(rec)
        records.append(light(rec))
        history.append({"step": rec.step, "sigma": rec.sigma, "sigma_next": rec.sigma_next,
                        "sigma_used": float(rec.sigma_used.float().mean()), "consistency": float(c.mean()),
                        "consistency_before": float(before.float().mean()), "lambda": float(lam.float().mean()),
                        "nfe": rec.nfe})

    # Exact measurements: end on {A x = y} *and* in the pixel range (the clamp alone breaks A x = y).
    images = operator.project_box(best, proj.measurement(best)) if sigma_y == 0 and clip else best
    consistency = operator.consistency(images, proj.measurement(images)).float().cpu()
    settings = {"method": method, "sampler": sampler, "steps": steps, "main_steps": steps - tail, "tail_steps": tail,
                "eta": float(eta) if sampler == "ddim" else None, "seed": seed, "n": n, "sigma_y": sigma_y,
                "sigma_y_model": model_noise(sigma_y), "noise_gain": proj.gain, "clip": bool(clip),
                "schedule": schedule, "sigma_first": float(sigmas[0]), "operator": type(operator).__name__,
                "correction": getattr(proj.inner, "name", "none"),
                "output": "most consistent x0" if keep_best else "last x0"}
    if method != "ddnm":
        settings.update(grid=grid, next_level=next_level, cycle_size=cycle, tail_sigma=list(tail_sigma))
    return RestoreResult(images, records, history, consistency, sum(r.nfe for r in records),
                         time.perf_counter() - t0, settings, kept)
