"""Step records -> plain numbers: the noise figures of a run, per-step tables for plots and
``sample --trace`` JSON.

Noise shift shows per image: in a batch most samples can sit on schedule while a few end covered in
leftover noise, and a batch median hides exactly those. So every figure here is computed per image
first: the estimator's reading of each state against the scheduled level, and of each final image
("leftover noise") against what the same estimator reads on real photos (its reference level).
"""
from __future__ import annotations

import math
from dataclasses import replace

import torch

from .samplers import StepRecord

QUANTILES = (0.1, 0.5, 0.9)     # the band (10-90%) and the median drawn per step


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


def _readings(records: list[StepRecord]) -> list[StepRecord]:
    return [r for r in records if "sigma_est" in r.extras and r.sigma > 0]


def noise_shift(records: list[StepRecord]) -> float | None:
    """The systematic shift: mean over steps of |log(sigma_est / sigma_scheduled)| with sigma_est the
    batch median of the estimator's reading of the state entering the step. It shows a shift common
    to the batch and misses the few images that go wrong. None without an estimator."""
    logs = [abs(math.log(float(r.extras["sigma_est"].float().median()) / r.sigma)) for r in _readings(records)]
    return sum(logs) / len(logs) if logs else None


def outside_band(leftover: torch.Tensor, reference: dict) -> torch.Tensor:
    """Per image, |log| distance of the leftover noise from the real images' 10-90% band (0 inside it):
    a final image reading like a real photo has no shift left."""
    lo, hi = math.log(reference["p10"]), math.log(reference["p90"])
    v = leftover.double().clamp_min(1e-8).log()
    return (v - hi).clamp_min(0) + (lo - v).clamp_min(0)


def shift_per_image(records: list[StepRecord], leftover: torch.Tensor | None = None,
                    reference: dict | None = None) -> torch.Tensor | None:
    """(B,) each image's mean over steps of |log(sigma_est / sigma_k)|, its final image counted as one
    more step against the reference band (``outside_band``). None without an estimator."""
    per_step = [(r.extras["sigma_est"].double() / r.sigma).log().abs() for r in _readings(records)]
    if leftover is not None and reference is not None:
        per_step.append(outside_band(leftover, reference))
    return torch.stack(per_step).mean(0) if per_step else None


def per_image_shift(records: list[StepRecord], leftover: torch.Tensor | None = None,
                    reference: dict | None = None) -> float | None:
    """The per-image noise shift: ``shift_per_image`` averaged over images."""
    v = shift_per_image(records, leftover, reference)
    return None if v is None else float(v.mean())


def noise_figures(records: list[StepRecord], leftover: torch.Tensor | None, reference: dict | None) -> dict:
    """The run's summary: leftover noise of the final images (median, p90, worst, share noisier than
    the real images' p90), the per-image noise shift and the systematic (batch-median) shift."""
    out = {"systematic_shift": noise_shift(records), "per_image_shift": per_image_shift(records, leftover, reference)}
    if leftover is not None and len(leftover):
        q = torch.quantile(leftover.double(), torch.tensor([0.5, 0.9], dtype=torch.double))
        out.update(leftover_median=float(q[0]), leftover_p90=float(q[1]), leftover_max=float(leftover.max()))
        if reference is not None:
            out.update(share_above_real_p90=float((leftover > reference["p90"]).double().mean()),
                       real_median=reference["median"], real_p90=reference["p90"])
    return out


def level_bands(records: list[StepRecord]) -> dict:
    """Per step: the scheduled sigma and the 10%, 50% and 90% points over images of the estimated level
    divided by it (1 = on schedule). A ratio rather than sigma itself: the schedule spans four decades,
    and on a sigma axis the last steps, where the shift lives, are squeezed into a corner."""
    recs = _readings(records)
    bands = {"step": [r.step for r in recs], "sigma_scheduled": [r.sigma for r in recs]}
    if recs:
        ratios = torch.stack([r.extras["sigma_est"].double() / r.sigma for r in recs])      # (steps, images)
        q = torch.quantile(ratios, torch.tensor(QUANTILES, dtype=torch.double), dim=1)
        for name, row in zip(("ratio_p10", "ratio_median", "ratio_p90"), q):
            bands[name] = [round(float(v), 5) for v in row]
    return bands


def merge_records(batches: list[list[StepRecord]]) -> list[StepRecord]:
    """Per-step records of several batches -> one record per step with per-image tensors concatenated."""
    merged = []
    for recs in zip(*batches):
        extras = {k: torch.cat([r.extras[k] for r in recs]) for k, v in recs[0].extras.items() if torch.is_tensor(v)}
        merged.append(replace(recs[0], sigma_used=torch.cat([r.sigma_used for r in recs]),
                              eps_norm=torch.cat([r.eps_norm for r in recs]), extras=extras))
    return merged


def light(rec: StepRecord) -> StepRecord:
    """A copy of the record without its image tensors (for keeping a whole run's trace cheaply)."""
    return StepRecord(rec.step, rec.sigma, rec.sigma_next, rec.sigma_used.detach().cpu(),
                      rec.eps_norm.detach().cpu(), None, None, None, rec.nfe,
                      {k: v.detach().cpu() if hasattr(v, "detach") else v for k, v in rec.extras.items()})
