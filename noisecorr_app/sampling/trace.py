"""Step records -> plain numbers: per-step tables for plots and ``sample --trace`` JSON."""
from __future__ import annotations

from .samplers import StepRecord


def step_summary(rec: StepRecord, per_image: bool = False) -> dict:
    d = {"step": rec.step, "sigma_scheduled": rec.sigma, "sigma_next_scheduled": rec.sigma_next,
         "sigma_used": float(rec.sigma_used.float().mean()), "eps_norm": float(rec.eps_norm.float().mean()),
         "nfe": rec.nfe}
    for k, v in rec.__dict__.get("extras", {}).items():
        d[k] = float(v.float().mean()) if hasattr(v, "float") else v
    if per_image:
        d["sigma_used_per_image"] = [round(float(v), 6) for v in rec.sigma_used]
        d["eps_norm_per_image"] = [round(float(v), 6) for v in rec.eps_norm]
    return d


def light(rec: StepRecord) -> StepRecord:
    """A copy of the record without its image tensors (for keeping a whole run's trace cheaply)."""
    return StepRecord(rec.step, rec.sigma, rec.sigma_next, rec.sigma_used.detach().cpu(),
                      rec.eps_norm.detach().cpu(), None, None, None, rec.nfe)
