"""How well a level reader reads sigma off forward-noised held-out images, per decade of sigma.

Two readers: the noise-level estimator g_phi (sees the image alone) and NLC's r_theta (told the
scheduled sigma, it reads ``sigma (1 + r)``). Their per-image error, set beside the noise shift a
sampler actually accumulates, says whether a correction can help at all: a reader whose error is
larger than the shift adds noise to the level rather than removing it.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

Reader = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]     # (x, sigma told) -> sigma read


def estimator_reader(estimator) -> Reader:
    """g_phi reads the level from the image alone; the sigma it could be told is ignored."""
    return lambda x, sigma: estimator.estimate(x)


def nlc_reader(model, net) -> Reader:
    """r_theta on the denoiser's bottleneck features at the told sigma: ``sigma (1 + r)``."""
    device = next(net.parameters()).device

    def read(x, sigma):
        feats = model.features(x.to(model.device), sigma.to(model.device))
        return sigma * (1 + net(feats.to(device), sigma.to(device)).cpu())
    return read


@torch.no_grad()
def error_per_decade(reader: Reader, images: torch.Tensor, sigma_min: float = 0.01, sigma_max: float = 157.4,
                     per_decade: int = 512, seed: int = 0, batch_size: int = 256) -> list[dict]:
    """For each decade of sigma: bias and mean |log(sigma_read / sigma)| on x0 + sigma * eps, with
    log sigma uniform in the decade and x0 drawn from ``images`` (B, C, H, W in [-1, 1]). The reader
    is told the true sigma (an on-schedule state): what it reads beyond that is its error."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    lo = math.floor(math.log10(sigma_min))
    while 10 ** lo < sigma_max:
        a, b = max(10 ** lo, sigma_min), min(10 ** (lo + 1), sigma_max)
        idx = torch.randint(0, len(images), (per_decade,), generator=g)
        log_s = torch.empty(per_decade).uniform_(math.log(a), math.log(b), generator=g)
        errs = []
        for i in range(0, per_decade, batch_size):
            x0 = images[idx[i:i + batch_size]].float()
            s = log_s[i:i + batch_size].exp()
            x = x0 + s.view(-1, 1, 1, 1) * torch.randn(x0.shape, generator=g)
            errs.append(reader(x, s).float().log().cpu() - log_s[i:i + batch_size])
        e = torch.cat(errs)
        rows.append({"decade": f"{a:g}-{b:g}", "bias_log": round(e.mean().item(), 4),
                     "mean_abs_log_error": round(e.abs().mean().item(), 4),
                     "median_abs_log_error": round(e.abs().median().item(), 4),
                     "within_10pct": round((e.abs() < math.log(1.1)).float().mean().item(), 3)})
        lo += 1
    return rows
