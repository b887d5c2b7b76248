"""Step records -> plain numbers: per-step tables for plots and ``sample --trace`` JSON."""
from __future__ import annotations

import math

from .samplers import StepRecord


def step_summary(rec: StepRecord, per_image: bool = False) -> dict:
    d = {"step": rec.step, "sigma_scheduled": rec.sigma, "sigma_next_scheduled": rec.sigma_next,
         "sigma_used": float(rec.sigma_used.float().mean()), "eps_norm": float(rec.eps_norm.float().mean()),
         "nfe": rec.nfe}
    for k, v in rec.extras.items():
        d[k] = float(v.float().median()) if hasattr(v, "float") else v
    if per_image:
        d["sigma_used_per_image"] = [round(float(v), 6) for v in rec.sigma_used]
        d["eps_norm_per_image"] = [round(float(v), 6) for v in rec.eps_norm]
        for k, v in rec.extras.items():
            if hasattr(v, "float"):
                d[f"{k}_per_image"] = [round(float(u), 6) for u in v]
    return d


def noise_shift(records: list[StepRecord]) -> float | None:
    """The run's noise-shift figure: mean over steps of |log(sigma_est / sigma_scheduled)|, where
    sigma_est is the batch median of the estimator's reading of the state entering the step (the
    median keeps the estimator's per-image scatter out of the figure). None without an estimator."""
    logs = [abs(math.log(float(r.extras["sigma_est"].float().median()) / r.sigma))
            for r in records if "sigma_est" in r.extras and r.sigma > 0]
    return sum(logs) / len(logs) if logs else None


def light(rec: StepRecord) -> StepRecord:
    """A copy of the record without its image tensors (for keeping a whole run's trace cheaply)."""
    return StepRecord(rec.step, rec.sigma, rec.sigma_next, rec.sigma_used.detach().cpu(),
                      rec.eps_norm.detach().cpu(), None, None, None, rec.nfe,
                      {k: v.detach().cpu() if hasattr(v, "detach") else v for k, v in rec.extras.items()})
