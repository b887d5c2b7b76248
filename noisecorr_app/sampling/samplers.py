"""Samplers in sigma space, one function each, all with the same signature and output.

    sampler(x, sigmas, predict, noise, **options) -> iterator of StepRecord

``sigmas`` is the schedule (noisiest first, ending in 0); ``predict(x, sigma, sigma_next, step)``
returns a ``Prediction`` (corrections.py) and is the only way a sampler touches the model, so a
correction never needs sampler-specific code. ``noise(x)`` draws fresh standard-normal noise
shaped like x (per-image seeded: see ``noise.py``). Each step yields a record with the state
before and after it, so callers can stream previews, plot the noise shift, or stop early.

The update formulas are docs/methods.md section 2, written with the prediction's (possibly corrected)
``sigma`` and ``sigma_next``, stepping from the prediction's state ``p.x`` (a correction may relabel
the state, as the time-shift sampler does): with the identity correction they are the textbook
samplers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from ..models.denoiser import bcast
from ..settings import PARAMS
from .corrections import Prediction


@dataclass
class StepRecord:
    step: int
    sigma: float               # scheduled level of this step
    sigma_next: float          # scheduled level after it
    sigma_used: torch.Tensor   # (B,) level the step used (differs from sigma under a correction)
    eps_norm: torch.Tensor     # (B,) ||eps|| / sqrt(n) of the network output
    x: torch.Tensor            # state entering the step
    x0: torch.Tensor           # the step's estimate of the clean image
    x_next: torch.Tensor       # state after the step
    nfe: float = 0.0           # network evaluations this step per image (filled in by the runner)
    extras: dict = field(default_factory=dict)   # per-image measurements added by callers (sigma_est, ...)


Predict = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], Prediction]
Noise = Callable[[torch.Tensor], torch.Tensor]


def _levels(sigmas: torch.Tensor, i: int, x: torch.Tensor):
    b = x.shape[0]
    return sigmas[i].to(x.device).expand(b), sigmas[i + 1].to(x.device).expand(b)


def _record(i, sigmas, p: Prediction, x_next) -> StepRecord:
    return StepRecord(i, float(sigmas[i]), float(sigmas[i + 1]), p.sigma, p.eps_norm, p.x, p.x0, x_next)


def ddim(x, sigmas, predict: Predict, noise: Noise, eta: float = 0.0, eta_style: str = "ddim") -> Iterator[StepRecord]:
    """DDIM. eta = 0 is the deterministic probability-flow step ``x0 + sigma_next * eps``.

    eta_style 'ddim' (Song et al.; diffusers): fresh noise of std ``eta * s``, with s the DDPM
    posterior std ``sigma_next sqrt(1 - sigma_next^2 / sigma^2)``; eta = 1 is DDPM and the noise
    vanishes as steps shrink. eta_style 'ddnm' (DDNM and the official NLC restoration code):
    ``x0 + sigma_next (sqrt(1 - eta^2) eps + eta xi)``, a fixed share of fresh noise at any step size,
    which under-disperses unconditional samples but suits projection-based restoration.
    """
    if eta_style not in ("ddim", "ddnm"):
        raise ValueError("eta_style must be 'ddim' or 'ddnm'")
    eta = PARAMS["eta"].check(eta)
    for i in range(len(sigmas) - 1):
        p = predict(x, *_levels(sigmas, i, x), i)
        s, sn = bcast(p.sigma, x), bcast(p.sigma_next, x)
        if eta and float(sigmas[i + 1]) > 0:
            if eta_style == "ddnm":
                x_next = p.x0 + sn * ((1 - eta ** 2) ** 0.5 * p.eps + eta * noise(x))
            else:
                std = eta * sn * (1 - sn ** 2 / s ** 2).clamp_min(0).sqrt()
                x_next = p.x0 + (sn ** 2 - std ** 2).clamp_min(0).sqrt() * p.eps + std * noise(x)
        else:
            x_next = p.x0 + sn * p.eps
        yield _record(i, sigmas, p, x_next)
        x = x_next


def ddpm(x, sigmas, predict: Predict, noise: Noise) -> Iterator[StepRecord]:
    """Ancestral DDPM with the posterior ('fixed small') variance, in sigma form:
    ``x0 + (sigma_next^2 / sigma^2)(x - x0) + sigma_next sqrt(1 - sigma_next^2 / sigma^2) xi``
    (``x - x0 = sigma eps`` unless x0 was clamped: then it is diffusers' posterior mean)."""
    for i in range(len(sigmas) - 1):
        p = predict(x, *_levels(sigmas, i, x), i)
        s, sn = bcast(p.sigma, x), bcast(p.sigma_next, x)
        x_next = p.x0 + sn ** 2 / s ** 2 * (p.x - p.x0)
        if float(sigmas[i + 1]) > 0:
            x_next = x_next + sn * (1 - sn ** 2 / s ** 2).clamp_min(0).sqrt() * noise(x)
        yield _record(i, sigmas, p, x_next)
        x = x_next


def _slope(p) -> torch.Tensor:
    """dx/dsigma of the probability-flow ODE, ``(x - x0) / sigma`` (= eps unless x0 was clamped)."""
    return p.eps if p.clamped_x0 is None else (p.x - p.x0) / bcast(p.sigma, p.x)


def edm(x, sigmas, predict: Predict, noise: Noise) -> Iterator[StepRecord]:
    """EDM's Heun sampler (Karras et al. 2022, deterministic): an Euler step in sigma, then the
    trapezoid correction with eps at the new point; the last step (to sigma 0) is Euler only."""
    for i in range(len(sigmas) - 1):
        s_i, sn_i = _levels(sigmas, i, x)
        p = predict(x, s_i, sn_i, i)
        step = bcast(p.sigma_next - p.sigma, x)
        x_next = p.x + step * _slope(p)
        if float(sigmas[i + 1]) > 0:
            snn = sigmas[i + 2] if i + 2 < len(sigmas) else sigmas[i + 1] * 0
            p2 = predict(x_next, sn_i, snn.to(x.device).expand(x.shape[0]), i)
            x_next = p.x + step * 0.5 * (_slope(p) + _slope(p2))
        yield _record(i, sigmas, p, x_next)
        x = x_next


def dpmpp_2m(x, sigmas, predict: Predict, noise: Noise) -> Iterator[StepRecord]:
    """DPM-Solver++(2M) (Lu et al. 2022): second-order multistep in lambda = -log sigma on the
    data prediction x0; the first step and the step to sigma 0 are first order (= DDIM)."""
    x0_prev, h_prev = None, None
    for i in range(len(sigmas) - 1):
        p = predict(x, *_levels(sigmas, i, x), i)
        x0 = p.x0
        if float(sigmas[i + 1]) == 0:
            x_next = x0
        else:
            h = torch.log(p.sigma) - torch.log(p.sigma_next)            # lambda_next - lambda
            d = x0
            if x0_prev is not None:
                r = bcast(h_prev / h, x)
                d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
            x_next = bcast(p.sigma_next / p.sigma, x) * p.x - bcast(torch.expm1(-h), x) * d
            x0_prev, h_prev = x0, h
        yield _record(i, sigmas, p, x_next)
        x = x_next


SAMPLERS = {"ddim": ddim, "ddpm": ddpm, "edm": edm, "dpmpp": dpmpp_2m}
NFE_PER_STEP = {"edm": 2.0}      # network evaluations per step where it is not 1 (Heun's second one)
