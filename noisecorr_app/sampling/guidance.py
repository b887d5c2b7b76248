"""Guidance that mixes several network outputs, batched into one forward call.

``Guided`` wraps a denoiser and is itself a denoiser, so it composes with every correction and
sampler. With the class-conditional eps_c, the class-unconditional eps_u and the
noise-unconditional eps_n (docs/methods.md section 4):

    eps = eps_c + (w_cfg - 1) (eps_c - eps_u) + w_nag (eps_c - eps_n)

w_cfg = 1 and w_nag = 0 is the plain model and costs one evaluation.
"""
from __future__ import annotations

import torch

from ..models.denoiser import Cond, Wrapper
from ..settings import PARAMS


class Guided(Wrapper):
    def __init__(self, model, cfg_scale: float = 1.0, nag_scale: float = 0.0):
        super().__init__(model)
        self.cfg_scale, self.nag_scale = PARAMS["cfg_scale"].check(cfg_scale), PARAMS["nag_scale"].check(nag_scale)
        if self.nag_scale and not self.model.supports_null_noise:
            raise ValueError("classifier-free NAG needs a model trained with noise-condition dropout")
        if self.cfg_scale != 1 and not self.model.supports_null_label:
            raise ValueError("classifier-free guidance needs a class-conditional model with a null class")

    def _branches(self, cond: Cond | None, b: int) -> list[Cond]:
        cond = cond or Cond()
        branches = [cond]
        if self.cfg_scale != 1:
            branches.append(Cond(cond.labels, null_label=torch.ones(b, dtype=torch.bool), null_noise=cond.null_noise))
        if self.nag_scale:
            branches.append(Cond(cond.labels, null_label=cond.null_label, null_noise=torch.ones(b, dtype=torch.bool)))
        return branches

    def eps(self, x, sigma, cond: Cond | None = None):
        branches = self._branches(cond, x.shape[0])
        if len(branches) == 1:
            return self.model.eps(x, sigma, cond)
        k = len(branches)
        out = self.model.eps(x.repeat(k, 1, 1, 1), sigma.repeat(k), Cond.cat(branches, [x.shape[0]] * k))
        return self._combine(out.split(x.shape[0]))

    def eps_and_features(self, x, sigma, cond: Cond | None = None):
        """Guided eps and the bottleneck features of the conditional branch, from the same batched call."""
        branches = self._branches(cond, x.shape[0])
        k = len(branches)
        out, feats = self.model.eps_and_features(x.repeat(k, 1, 1, 1), sigma.repeat(k), Cond.cat(branches, [x.shape[0]] * k))
        return self._combine(out.split(x.shape[0])), feats[: x.shape[0]]

    def _combine(self, out):
        eps = out[0]
        i = 1
        if self.cfg_scale != 1:
            eps = eps + (self.cfg_scale - 1) * (out[0] - out[i])
            i += 1
        if self.nag_scale:
            eps = eps + self.nag_scale * (out[0] - out[i])
        return eps


class EstimatorGuided(Wrapper):
    """Classifier-based NAG: push the state towards where the scheduled level is the likely one.

    ``eps_guided = eps - w * sigma * grad_x log g_phi(sigma | x)`` (docs/methods.md section 4), with
    g_phi the noise-level estimator's Gaussian over log sigma: a trained one, or the wavelet reading's, for any
    model (``methods.level_reader_for``); the extra cost is one reading forward and backward per step.
    """

    def __init__(self, model, estimator: torch.nn.Module, weight: float = 1.0):
        super().__init__(model)
        self.estimator, self.weight = estimator, PARAMS["nag_est_scale"].check(weight)

    def _guidance(self, x, sigma):
        dev = next(iter(self.estimator.parameters()), x).device       # a reading with no weights: x's device
        with torch.enable_grad():
            xg = x.detach().float().to(dev).requires_grad_(True)
            logp = self.estimator.log_prob(xg, sigma.to(dev)).sum()
            grad, = torch.autograd.grad(logp, xg)
        return grad.to(x.device, x.dtype)

    def eps(self, x, sigma, cond: Cond | None = None):
        eps = self.model.eps(x, sigma, cond)
        if not self.weight:
            return eps
        return eps - self.weight * sigma.view(-1, 1, 1, 1) * self._guidance(x, sigma)

    def eps_and_features(self, x, sigma, cond: Cond | None = None):
        eps, feats = self.model.eps_and_features(x, sigma, cond)
        if self.weight:
            eps = eps - self.weight * sigma.view(-1, 1, 1, 1) * self._guidance(x, sigma)
        return eps, feats
