"""Sigma grids, noisiest first, always ending in 0 (the last step returns the x0 estimate).

Each schedule is a tiny class with ``sigmas(steps) -> tensor of steps + 1 values``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..models.denoiser import sigmas_from_alphas_cumprod


def _with_zero(s: torch.Tensor) -> torch.Tensor:
    return torch.cat([s.float(), s.new_zeros(1).float()])


@dataclass
class ModelSpacing:
    """The model's own discrete timesteps, spaced as diffusers does: 'trailing' (generation) or 'leading'
    (DDNM's restoration grid)."""
    alphas_cumprod: torch.Tensor
    spacing: str = "trailing"

    def timesteps(self, steps: int) -> torch.Tensor:
        T = len(self.alphas_cumprod)
        if self.spacing == "trailing":
            t = torch.round(torch.arange(T, 0, -T / steps)).long() - 1
        elif self.spacing == "leading":
            t = torch.arange(0, steps).mul(T // steps).flip(0)
        else:
            raise ValueError(f"unknown spacing '{self.spacing}' (trailing, leading)")
        return t.clamp(0, T - 1)

    def sigmas(self, steps: int) -> torch.Tensor:
        return _with_zero(sigmas_from_alphas_cumprod(self.alphas_cumprod.double())[self.timesteps(steps)])


@dataclass
class LogLinear:
    """Evenly spaced in log sigma."""
    sigma_min: float
    sigma_max: float

    def sigmas(self, steps: int) -> torch.Tensor:
        return _with_zero(torch.linspace(math.log(self.sigma_max), math.log(self.sigma_min), steps).exp())


@dataclass
class Karras:
    """EDM's schedule (Karras et al. 2022): evenly spaced in sigma^(1/rho)."""
    sigma_min: float
    sigma_max: float
    rho: float = 7.0

    def sigmas(self, steps: int) -> torch.Tensor:
        ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
        lo, hi = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
        return _with_zero((hi + ramp * (lo - hi)) ** self.rho)


SCHEDULES = ("model", "loglinear", "karras")


def make_schedule(name: str, denoiser, sigma_max: float | None = None, sigma_min: float | None = None):
    """A schedule for a denoiser; sigma_max/min default to the model's range (Karras: capped at 80)."""
    lo = sigma_min or denoiser.sigma_min
    if name == "model":
        if denoiser.schedule is None:
            raise ValueError("the 'model' schedule needs a model with a training schedule (alphas_cumprod)")
        return ModelSpacing(denoiser.schedule.alphas_cumprod)
    if name == "loglinear":
        return LogLinear(lo, sigma_max or denoiser.sigma_max)
    if name == "karras":
        return Karras(lo, sigma_max or min(80.0, denoiser.sigma_max))
    raise ValueError(f"unknown schedule '{name}' (choose from {', '.join(SCHEDULES)})")
