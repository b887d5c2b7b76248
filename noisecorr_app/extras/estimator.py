"""g_phi: the noise level of an image, from the image alone.

Trained on forward-noised real images ``x = x0 + sigma * eps`` (log sigma uniform over the model
range), it predicts a Gaussian over log sigma: a mean and a spread. The mean is the "actual" noise
level in the per-step noise-shift plots; the density gives estimator-based NAG its gradient.

Input: the image divided by its RMS, plus log RMS as a scalar. At high noise the RMS alone says
the level (||x||^2/n ~ var(x0) + sigma^2); at low noise the network has to read the texture, and
dividing out the scale lets it see texture the same way at every level.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from ..sampling.corrections import rms
from .storage import load_net, save_net


def _block(cin, cout, stride):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.GroupNorm(8, cout), nn.SiLU(),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU())


class NoiseLevelEstimator(nn.Module):
    def __init__(self, channels: int = 3, width: int = 32, sigma_min: float = 0.005, sigma_max: float = 200.0):
        super().__init__()
        self.config = dict(channels=channels, width=width, sigma_min=sigma_min, sigma_max=sigma_max)
        w = width
        self.body = nn.Sequential(_block(channels, w, 1), _block(w, 2 * w, 2), _block(2 * w, 4 * w, 2),
                                  _block(4 * w, 4 * w, 2))
        self.head = nn.Sequential(nn.Linear(4 * w + 1, 128), nn.SiLU(), nn.Linear(128, 2))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean of log sigma, log of its standard deviation), each (B,)."""
        scale = rms(x).clamp_min(1e-6)
        h = self.body(x / scale.view(-1, 1, 1, 1)).mean((2, 3))
        out = self.head(torch.cat([h, scale.log().view(-1, 1)], 1))
        return out[:, 0], out[:, 1].clamp(-7, 3)

    def estimate(self, x: torch.Tensor) -> torch.Tensor:
        """The estimated sigma of each image, (B,)."""
        with torch.no_grad():
            return self(x.float())[0].exp()

    def log_prob(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """log g_phi(sigma | x) as a Gaussian over log sigma (differentiable in x)."""
        mu, log_s = self(x)
        z = (sigma.float().log() - mu) / log_s.exp()
        return -0.5 * z ** 2 - log_s - 0.5 * math.log(2 * math.pi)


def estimator_loss(x0, labels, estimator: NoiseLevelEstimator):
    lo, hi = math.log(estimator.config["sigma_min"]), math.log(estimator.config["sigma_max"])
    log_sigma = torch.empty(x0.shape[0], device=x0.device).uniform_(lo, hi)
    x = x0 + log_sigma.exp().view(-1, 1, 1, 1) * torch.randn_like(x0)
    return -estimator.log_prob(x, log_sigma.exp()).mean()


def save_estimator(net: NoiseLevelEstimator, folder: Path, info: dict):
    save_net(net, folder, "noise-level-estimator", info)


def load_estimator(folder: Path, device="cpu") -> NoiseLevelEstimator:
    build = lambda c: NoiseLevelEstimator(c["channels"], c["width"], c["sigma_min"], c["sigma_max"])
    return load_net(folder, build, "noise-level estimator", "train estimator", device)
