"""Corrections: the one place where a sampler asks "which sigma, which eps?".

Every sampler calls ``correction.predict(model, x, sigma, sigma_next, cond, step)`` and steps with
the returned ``Prediction``: the eps direction, the level ``sigma`` it belongs to, and the level
``sigma_next`` to step to (both per image). A sampler never asks which correction it has, so a
correction written here works in DDIM, DDPM, EDM-Heun and DPM-Solver++ alike.

Guidance that combines several network outputs (CFG, NAG) is a different kind of plug-in: it wraps
the model itself (``guidance.py``), so it composes with any correction here.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..models.denoiser import Cond, bcast
from ..settings import PARAMS


def rms(t: torch.Tensor) -> torch.Tensor:
    """||t|| / sqrt(n) per image: 1 for a standard-normal eps."""
    return t.flatten(1).float().pow(2).mean(1).sqrt()


@dataclass
class Prediction:
    x: torch.Tensor           # the state the prediction was made at
    eps: torch.Tensor         # direction used for the step
    sigma: torch.Tensor       # (B,) level used at this step (the scheduled one unless corrected)
    sigma_next: torch.Tensor  # (B,) level to step to
    eps_norm: torch.Tensor    # (B,) ||eps|| / sqrt(n) of the raw network output (1 when on schedule)
    clamped_x0: torch.Tensor | None = None   # set by clip_x0: the x0 estimate clamped to the data range

    @property
    def x0(self) -> torch.Tensor:
        if self.clamped_x0 is not None:
            return self.clamped_x0
        return self.x - bcast(self.sigma, self.x) * self.eps


def clip_x0(p: Prediction, lo: float = -1.0, hi: float = 1.0) -> Prediction:
    """The prediction with its x0 estimate clamped to the data range; eps stays the network's.

    This is diffusers' ``clip_sample`` (on in the scheduler configs of pixel-space DDPM models, ours
    included; the official NLC code clamps too on CIFAR-10). Keeping the network's eps rather than
    re-deriving it from the clamped x0 is diffusers' DDIM default: the part of x0 outside [-1, 1] is
    dropped at once instead of being carried on as noise, which on our CIFAR-10 model gave natural
    colours where the re-derived eps left saturated ones (20 DDIM steps, same seeds). DDPM steps
    with x0 and x (diffusers' posterior mean); EDM-Heun and DPM-Solver++ with x0 and x too.
    """
    return replace(p, clamped_x0=p.x0.clamp(lo, hi))


class Correction:
    """The identity: the network's eps at the scheduled level. Subclasses override ``predict``."""
    name = "none"

    def reset(self, sigmas: torch.Tensor | None = None):
        """Called before each sampling run with its schedule."""

    def predict(self, model, x, sigma, sigma_next, cond: Cond | None, step: int) -> Prediction:
        eps = model.eps(x, sigma, cond)
        return Prediction(x, eps, sigma, sigma_next, rms(eps))


class EpsScaling(Correction):
    """Epsilon scaling (Ning et al., ICLR 2024): divide the predicted eps by ``lam`` (~1.001-1.02).

    Sampled states carry more noise than scheduled, so the network's eps is too large on
    average; shrinking it is a training-free counter to the exposure bias.
    """
    name = "es"

    def __init__(self, lam: float = 1.005):
        self.lam = PARAMS["es_lambda"].check(lam)

    def predict(self, model, x, sigma, sigma_next, cond, step):
        eps = model.eps(x, sigma, cond)
        return Prediction(x, eps / self.lam, sigma, sigma_next, rms(eps))


class TimeShift(Correction):
    """The time-shift sampler (Li et al., ICLR 2024): relabel the state's timestep.

    In VP coordinates the state z = x / sqrt(1 + sigma^2) is kept and its label t is replaced by the
    tau in a window around t whose noise variance 1 - abar_tau best matches the per-image variance
    of z (the paper's variance rule, which ignores the signal's own variance), above a cutoff
    timestep only. In sigma space the same state at level sigma_tau is x * sqrt((1 + sigma_tau^2) /
    (1 + sigma^2)); the step then goes from there to the scheduled sigma_next.
    """
    name = "ts"

    def __init__(self, window: int = 20, cutoff: int = 300):
        self.window, self.cutoff = PARAMS["ts_window"].check(window), PARAMS["ts_cutoff"].check(cutoff)

    def predict(self, model, x, sigma, sigma_next, cond, step):
        schedule = model.schedule
        if schedule is None:
            raise ValueError("the time-shift sampler needs a model with a discrete training schedule")
        t = schedule.timestep(sigma).round().long().cpu()
        if int(t.max()) > self.cutoff and self.window:
            abar = schedule.alphas_cumprod.float()
            offsets = torch.arange(-(self.window // 2), self.window // 2 + 1)
            cand = (t.view(-1, 1) + offsets.view(1, -1)).clamp(0, len(abar) - 1)          # (B, W)
            var_z = (x.flatten(1).float().var(1).cpu() / (1 + sigma.float().cpu() ** 2)).view(-1, 1)
            best = cand.gather(1, ((var_z - (1 - abar[cand])) ** 2).argmin(1, keepdim=True)).view(-1)
            best = torch.where(t > self.cutoff, best, t)
            sigma_ts = schedule.sigma_of_timestep(best).to(x.device)
            x = x * bcast(((1 + sigma_ts ** 2) / (1 + sigma ** 2)).sqrt(), x)
            sigma = sigma_ts
        eps = model.eps(x, sigma, cond)
        return Prediction(x, eps, sigma, sigma_next, rms(eps))


class LevelCorrection(Correction):
    """NLC-style: estimate the actual level of x as ``sigma * (1 + r)`` and sample from there.

    ``sigma_hat = sigma (1 + r)`` and ``sigma_hat_next = sigma_next (1 + r)`` (the official 'pred'
    style, which keeps the step's ratio sigma_next/sigma), the denoiser is re-evaluated at
    sigma_hat, and its direction is normalised to norm sqrt(n) (docs/methods.md section 3).
    Subclasses give ``ratio``: a network (NLC), a table (NLC-LUT), the eps norm (self-estimate),
    or an oracle in tests. Above ``max_sigma`` (t > 960 for the official code) it is switched off;
    with ``final_only`` it acts on the last step only, the one that makes the image (into sigma 0).
    """
    name = "level"

    def __init__(self, normalize: bool = True, max_sigma: float | None = 107.0, r_clip: float = 0.5,
                 reevaluate: bool = True, final_only: bool = False):
        self.normalize, self.max_sigma, self.r_clip, self.reevaluate = normalize, max_sigma, r_clip, reevaluate
        self.final_only = final_only

    def ratio(self, model, x, sigma, cond, step) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """r per image, or (r, eps at the scheduled level) when computing r gave that eps for free."""
        raise NotImplementedError

    def predict(self, model, x, sigma, sigma_next, cond, step):
        if (self.max_sigma is not None and float(sigma.max()) > self.max_sigma) or \
                (self.final_only and float(sigma_next.max()) > 0):
            return super().predict(model, x, sigma, sigma_next, cond, step)
        out = self.ratio(model, x, sigma, cond, step)
        r, eps_nominal = out if isinstance(out, tuple) else (out, None)
        r = r.clamp(-self.r_clip, self.r_clip)
        sigma_hat, sigma_next_hat = sigma * (1 + r), sigma_next * (1 + r)
        # Re-evaluating at sigma_hat is the official recipe (one more network call); without it the
        # direction from the scheduled level is reused, and the normalisation fixes its length.
        eps = model.eps(x, sigma_hat, cond) if self.reevaluate or eps_nominal is None else eps_nominal
        norm = rms(eps)
        if self.normalize:
            eps = eps / bcast(norm.clamp_min(1e-8), eps)
        return Prediction(x, eps, sigma_hat, sigma_next_hat, rms(eps_nominal) if eps_nominal is not None else norm)


class OracleLevel(LevelCorrection):
    """A level correction told the true noise level of each image (tests, and the ideal in plots)."""
    name = "oracle"

    def __init__(self, true_sigma_fn, **kw):
        super().__init__(**kw)
        self.true_sigma_fn = true_sigma_fn

    def ratio(self, model, x, sigma, cond, step):
        return self.true_sigma_fn(x, sigma, step) / sigma - 1


class FixedLevel(LevelCorrection):
    """A level correction with a fixed reading: every state at or below ``max_sigma`` is taken to sit at
    ``sigma (1 + r)``. Restoration uses it (IterProj-NLC): after each projection the state carries the
    projected estimate's error on top of the scheduled noise, more the closer the end, and a reading that
    does not depend on the model works for any model (docs/restoration.md has the measurements)."""
    name = "fixed-level"

    def __init__(self, r: float, max_sigma: float | None, **kw):
        super().__init__(max_sigma=max_sigma, normalize=False, **kw)
        self.r = float(r)

    def ratio(self, model, x, sigma, cond, step):
        return torch.full_like(sigma, self.r)


class SelfEstimate(LevelCorrection):
    """Training-free: the network's own ``||eps|| / sqrt(n)`` as the level ratio 1 + r.

    On schedule the predicted eps has unit RMS; a state carrying extra noise makes it larger
    (at high sigma, ``||eps(x, s)||/sqrt(n) ~ sigma_actual / s``). It needs no extra weights, so it
    works for any model. Two modes:

    - ``reevaluate=True`` (2 NFE per step): measure r at the scheduled level, call the network
      again at ``sigma (1 + r)`` (the official NLC recipe with r from the eps norm).
    - default, lagged (1 NFE per step): step k samples at the level measured at step k-1, and the
      call it makes measures the level for step k+1: ``1 + r_k = (sigma_hat_k / sigma_k) ||eps_k||/sqrt(n)``.
      Why not reuse the eps just computed: normalising it and scaling sigma by the same factor
      cancels exactly in DDIM (``x0 = x - sigma_hat eps/|eps|`` = ``x - sigma eps``), a no-op.
    """
    name = "self"

    def __init__(self, reevaluate: bool = False, **kw):
        super().__init__(reevaluate=reevaluate, **kw)
        self._level = None        # (1 + r) per image, measured by the previous call

    def reset(self, sigmas=None):
        self._level = None

    def ratio(self, model, x, sigma, cond, step):
        if self.reevaluate:
            eps = model.eps(x, sigma, cond)
            return rms(eps) - 1, eps
        if self._level is None or self._level.shape != sigma.shape:
            return torch.zeros_like(sigma)
        return self._level.to(sigma) - 1

    def predict(self, model, x, sigma, sigma_next, cond, step):
        p = super().predict(model, x, sigma, sigma_next, cond, step)
        if not self.reevaluate:
            self._level = (p.sigma / sigma.clamp_min(1e-12)) * p.eps_norm
        return p


class EstimatedLevel(LevelCorrection):
    """NLC with the noise-level estimator as the level reader: ``1 + r = g_phi(x) / sigma`` per image.

    The estimator reads the state alone, before the denoiser is called, so the one network call of
    the step is made at the corrected level (1 NFE). r_theta reads the denoiser's features at the
    scheduled level and errs by 10-15% (mean |log|) below sigma 1, where the shift that leaves noise
    in the final images lives; the calibrated estimator is within ~4% there. The direction is not
    normalised: at the corrected level the network's eps already has the right size.

    final_only (default): correct the last step only, the one that produces the image. Its x0 is
    what the user sees, so reading each image's level there removes its leftover noise; correcting
    earlier steps too removed no more of it and cost detail (docs/noise-shift.md).
    """
    name = "nlc-est"

    def __init__(self, estimator, final_only: bool = True, normalize: bool = False, **kw):
        super().__init__(reevaluate=True, normalize=normalize, final_only=final_only, **kw)
        self.estimator = estimator

    def ratio(self, model, x, sigma, cond, step):
        return self.estimator.estimate(x).to(sigma) / sigma - 1


class NLCTable(LevelCorrection):
    """NLC without a network at sampling time: the mean r NLC applied on its own runs, looked up.

    ``table`` (extras/nlc_table.py) holds, per sampler, the mean r over a log-sigma grid for a few
    step counts; a run reads the row of its ``sampler``, interpolating between step counts in log
    steps, then in log sigma. The denoiser is evaluated once, at the corrected level, so a step
    costs what a plain step does.

    The direction is not normalised (unlike NLC's): the network's eps has RMS below 1 in the last
    steps, so scaling it up to 1 removes more noise than there is at every step, and a table, blind
    to the state, cannot see the deficit and undo it as NLC's r does (measured: docs/noise-shift.md).
    """
    name = "nlc-lut"

    def __init__(self, table, sampler: str = "ddim", normalize: bool = False, **kw):
        super().__init__(reevaluate=True, normalize=normalize, **kw)
        self.table, self.sampler, self._row = table, sampler, None

    def reset(self, sigmas=None):
        self._row = self.table.row(self.sampler, max(1, len(sigmas) - 1) if sigmas is not None else 20)

    def ratio(self, model, x, sigma, cond, step):
        if self._row is None:
            self.reset()
        return self.table.lookup(self._row, sigma).to(x.device)


class NLC(LevelCorrection):
    """Noise Level Correction with a trained r_theta on the denoiser's bottleneck features.

    mode 'reuse' (ours, default): one full pass at the scheduled level gives both eps and the
    features; r_theta corrects the level and the normalised direction is reused: ~1.0 network
    calls per step. mode 'official': an encoder-only pass gives the features, then the full network
    runs at the corrected level: ~1.25-1.45 calls' worth of time per step (counted as 1.5 NFE).
    """
    name = "nlc"

    def __init__(self, net, mode: str = "reuse", **kw):
        if mode not in ("reuse", "official"):
            raise ValueError("NLC mode must be 'reuse' or 'official'")
        super().__init__(reevaluate=(mode == "official"), **kw)
        self.net, self.mode = net, mode

    def ratio(self, model, x, sigma, cond, step):
        device = next(self.net.parameters()).device
        if self.mode == "reuse":
            eps, feats = model.eps_and_features(x, sigma, cond)
            return self.net(feats.to(device), sigma.to(device)).to(x.device), eps
        feats = model.features(x, sigma, cond)
        return self.net(feats.to(device), sigma.to(device)).to(x.device)


