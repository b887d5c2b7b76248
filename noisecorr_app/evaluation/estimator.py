"""How well the noise-level estimator reads sigma off forward-noised held-out images."""
from __future__ import annotations

import math

import torch


@torch.no_grad()
def error_per_decade(estimator, images: torch.Tensor, sigma_min: float = 0.01, sigma_max: float = 157.4,
                     per_decade: int = 512, seed: int = 0, batch_size: int = 256) -> list[dict]:
    """For each decade of sigma: bias and mean |log(sigma_est / sigma)| on x0 + sigma * eps, with
    log sigma uniform in the decade and x0 drawn from ``images`` (B, C, H, W in [-1, 1])."""
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
            errs.append(estimator.estimate(x).log().cpu() - log_s[i:i + batch_size])
        e = torch.cat(errs)
        rows.append({"decade": f"{a:g}-{b:g}", "bias_log": round(e.mean().item(), 4),
                     "mean_abs_log_error": round(e.abs().mean().item(), 4),
                     "within_10pct": round((e.abs() < math.log(1.1)).float().mean().item(), 3)})
        lo += 1
    return rows
