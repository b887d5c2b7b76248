"""Per-step records of the runs -> long-format DataFrames (step, value, series) for gr.LinePlot.

Noise levels are plotted as log10(sigma): the schedule spans four decades, and a noise shift is a
vertical offset between the scheduled and the estimated curve. Per-image values are reduced with
the median over the batch (the estimator scatters per image; the median keeps that out).
"""
from __future__ import annotations

import math

import pandas as pd

SIGMA_Y = "log10_sigma"
EPS_Y = "eps_rms"
CONSISTENCY_Y = "log10_consistency"


def _median(v) -> float:
    return float(v.float().median()) if hasattr(v, "float") else float(v)


def _log10(v: float, floor: float = 1e-8) -> float:
    return math.log10(max(v, floor))


def sigma_frame(runs: dict) -> pd.DataFrame:
    """runs: label -> list of StepRecord. Series: the scheduled sigma (one curve when all runs share
    the schedule), each run's estimated sigma (extras['sigma_est']) and, where a correction moved
    it, the sigma the run actually used."""
    rows = []
    schedules = {label: [r.sigma for r in recs] for label, recs in runs.items()}
    shared = len({tuple(s) for s in schedules.values()}) == 1
    for i, (label, recs) in enumerate(runs.items()):
        if not shared or i == 0:
            name = "scheduled" if shared else f"{label}: scheduled"
            rows += [(r.step, _log10(r.sigma), name) for r in recs if r.sigma > 0]
        if any("sigma_est" in r.extras for r in recs):
            rows += [(r.step, _log10(_median(r.extras["sigma_est"])), f"{label}: estimated")
                     for r in recs if "sigma_est" in r.extras]
        used = [(r.step, _median(r.sigma_used), r.sigma) for r in recs if r.sigma > 0]
        if any(abs(u / s - 1) > 1e-4 for _, u, s in used):
            rows += [(step, _log10(u), f"{label}: used") for step, u, _ in used]
    return pd.DataFrame(rows, columns=["step", SIGMA_Y, "series"])


def eps_frame(runs: dict) -> pd.DataFrame:
    """||eps|| / sqrt(n) per step (1 = the network sees the noise level it was told)."""
    rows = [(r.step, _median(r.eps_norm), label) for label, recs in runs.items() for r in recs]
    return pd.DataFrame(rows, columns=["step", EPS_Y, "series"])


def consistency_frame(runs: dict) -> pd.DataFrame:
    """log10 ||A x0 - y|| per step (the step's clamped x0 estimate) for restoration runs."""
    rows = [(r.step, _log10(_median(r.extras["consistency"])), label)
            for label, recs in runs.items() for r in recs if "consistency" in r.extras]
    return pd.DataFrame(rows, columns=["step", CONSISTENCY_Y, "series"])

