"""g_phi: the noise level of an image, from the image alone.

Trained on forward-noised real images ``x = x0 + sigma * eps`` (log sigma uniform over the model
range), it predicts a Gaussian over log sigma: a mean and a spread. The mean is the "actual" noise
level in the per-step noise-shift plots; the density gives estimator-based NAG its gradient.

Input: the image divided by its RMS, plus log RMS as a scalar. At high noise the RMS alone says
the level (||x||^2/n ~ var(x0) + sigma^2); at low noise the network has to read the texture, and
dividing out the scale lets it see texture the same way at every level.

Calibration: a regression net keeps small systematic errors (the shipped one read on-schedule states
1-2% off between sigma 10 and 157, as much as the noise shift it is there to show). ``calibrate``
measures the median reading of forward-noised held-in images on a grid of sigma and stores the
monotone map from reading to truth in the net's buffers (so it travels in model.safetensors); every
reading, and the density NAG differentiates, goes through it.

Reference level: even a clean photo reads above zero (texture, JPEG and 8-bit noise). What a generated
image's reading means is its place among real images' readings, so ``reference_level`` reads held-out
real images once and the quantiles are stored with the estimator (``config.json``, info.reference).
"""
from __future__ import annotations

import json
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
    reference: dict | None = None      # real images' readings (``reference_level``), set on loading

    def __init__(self, channels: int = 3, width: int = 32, sigma_min: float = 0.005, sigma_max: float = 200.0,
                 calibration_knots: int = 0):
        super().__init__()
        self.config = dict(channels=channels, width=width, sigma_min=sigma_min, sigma_max=sigma_max,
                           calibration_knots=calibration_knots)
        if calibration_knots:    # the calibration map, log sigma read -> log sigma true (none: no buffers,
            self.register_buffer("cal_read", torch.zeros(calibration_knots))      # as older files have)
            self.register_buffer("cal_true", torch.zeros(calibration_knots))
        w = width
        self.body = nn.Sequential(_block(channels, w, 1), _block(w, 2 * w, 2), _block(2 * w, 4 * w, 2),
                                  _block(4 * w, 4 * w, 2))
        self.head = nn.Sequential(nn.Linear(4 * w + 1, 128), nn.SiLU(), nn.Linear(128, 2))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean of log sigma, log of its standard deviation), each (B,)."""
        scale = rms(x).clamp_min(1e-6)
        h = self.body(x / scale.view(-1, 1, 1, 1)).mean((2, 3))
        out = self.head(torch.cat([h, scale.log().view(-1, 1)], 1))
        return self.calibrated(out[:, 0]), out[:, 1].clamp(-7, 3)

    def calibrated(self, mu: torch.Tensor) -> torch.Tensor:
        """Piecewise-linear through the calibration knots (differentiable); beyond the ends, shifted by
        the end knot's offset."""
        if self.config["calibration_knots"] < 2:
            return mu
        xs, ys = self.cal_read, self.cal_true
        i = torch.searchsorted(xs, mu.detach().contiguous()).clamp(1, len(xs) - 1)
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        inside = y0 + (mu - x0) * (y1 - y0) / (x1 - x0)
        return torch.where(mu < xs[0], mu + ys[0] - xs[0], torch.where(mu > xs[-1], mu + ys[-1] - xs[-1], inside))

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


@torch.no_grad()
def calibrate(estimator: NoiseLevelEstimator, images: torch.Tensor, sigma_min: float = 0.01, sigma_max: float = 160.0,
              knots: int = 49, seed: int = 0, batch_size: int = 500, progress=None) -> NoiseLevelEstimator:
    """A copy of ``estimator`` whose median reading of ``x0 + sigma eps`` (x0 from ``images``, B,C,H,W in
    [-1, 1]; every image at every knot, with its own noise) is sigma at ``knots`` log-spaced levels.
    The readings are made monotone (a later knot never reads below an earlier one) so the map inverts."""
    cfg = {**estimator.config, "calibration_knots": knots}
    raw = NoiseLevelEstimator(**{**cfg, "calibration_knots": 0}).to(images.device)
    raw.load_state_dict({k: v for k, v in estimator.state_dict().items() if not k.startswith("cal_")})
    raw.eval()
    g = torch.Generator().manual_seed(seed)
    log_true = torch.linspace(math.log(sigma_min), math.log(sigma_max), knots)
    read = []
    for log_s in log_true.tolist():
        mus = []
        for i in range(0, len(images), batch_size):
            x0 = images[i:i + batch_size].float()
            mus.append(raw(x0 + math.exp(log_s) * torch.randn(x0.shape, generator=g).to(x0.device))[0].cpu())
        read.append(torch.cat(mus).median())
        if progress:
            progress(1)
    read = torch.cummax(torch.stack(read), 0).values + torch.arange(knots) * 1e-6    # strictly increasing
    out = NoiseLevelEstimator(**cfg)
    out.load_state_dict({**raw.state_dict(), "cal_read": read, "cal_true": log_true})
    return out.to(images.device).eval()


REFERENCE_QUANTILES = {"p10": 0.1, "median": 0.5, "p90": 0.9}


@torch.no_grad()
def reference_level(estimator: NoiseLevelEstimator, images: torch.Tensor, batch_size: int = 500) -> dict:
    """The estimator's reading of real, clean images (B, C, H, W in [-1, 1]): their 10th, 50th and
    90th percentile. A generated image reading above the p90 carries more noise than 9 real images
    in 10."""
    reads = torch.cat([estimator.estimate(images[i:i + batch_size]).cpu() for i in range(0, len(images), batch_size)])
    q = torch.quantile(reads.double(), torch.tensor(list(REFERENCE_QUANTILES.values()), dtype=torch.double))
    return {**{k: round(float(v), 6) for k, v in zip(REFERENCE_QUANTILES, q)}, "images": len(images)}


def save_estimator(net: NoiseLevelEstimator, folder: Path, info: dict):
    save_net(net, folder, "noise-level-estimator", info)


def load_estimator(folder: Path, device="cpu") -> NoiseLevelEstimator:
    build = lambda c: NoiseLevelEstimator(c["channels"], c["width"], c["sigma_min"], c["sigma_max"],
                                          c.get("calibration_knots", 0))
    net = load_net(folder, build, "noise-level estimator", "train estimator", device)
    ref = json.loads((Path(folder) / "config.json").read_text()).get("info", {}).get("reference")
    net.reference = ref if isinstance(ref, dict) and all(k in ref for k in REFERENCE_QUANTILES) else None
    return net
