"""``sample()``: model + sampler + schedule + correction + guidance -> images and a per-step trace."""
from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable, Iterator

import torch

from ..models.denoiser import Cond, Wrapper, as_denoiser
from .corrections import Correction, clip_x0 as clipped
from .guidance import EstimatorGuided, Guided
from .noise import SeededNoise
from .samplers import SAMPLERS, StepRecord
from .schedules import make_schedule
from ..settings import STEPS
from .trace import level_bands, light, merge_records, noise_figures, noise_shift, step_summary

MAX_STEPS = STEPS.hi


class CountingDenoiser(Wrapper):
    """Counts the images that pass through the network: NFE per image = count / batch size.
    An encoder-only pass (bottleneck features for NLC) counts as half an evaluation."""

    ENCODER_ONLY = 0.5

    def __init__(self, model):
        super().__init__(model)
        self.count = 0.0

    def eps(self, x, sigma, cond=None):
        self.count += x.shape[0]
        return self.model.eps(x, sigma, cond)

    def eps_and_features(self, x, sigma, cond=None):
        self.count += x.shape[0]
        return self.model.eps_and_features(x, sigma, cond)

    def features(self, x, sigma, cond=None):
        self.count += self.ENCODER_ONLY * x.shape[0]
        return self.model.features(x, sigma, cond)


@dataclass
class SampleResult:
    images: torch.Tensor                 # (B, C, H, W) in [-1, 1]
    records: list[StepRecord]            # per step, without image tensors
    nfe_per_image: float
    seconds: float
    settings: dict = field(default_factory=dict)
    leftover: torch.Tensor | None = None  # (B,) the estimator's reading of each final image (leftover noise)
    reference: dict | None = None         # the same estimator's reading of real images (p10, median, p90)

    @property
    def noise_shift(self) -> float | None:
        """The systematic (batch-median) shift; ``figures`` has the per-image ones."""
        return noise_shift(self.records)

    @cached_property
    def figures(self) -> dict:
        """The run's noise figures (``trace.noise_figures``); a result is not changed once made."""
        return noise_figures(self.records, self.leftover, self.reference)

    @cached_property
    def level_bands(self) -> dict:
        return level_bands(self.records)

    def trace(self, per_image: bool = False) -> dict:
        out = {"settings": self.settings, "nfe_per_image": self.nfe_per_image, "seconds": round(self.seconds, 4),
               "noise_shift": self.noise_shift, **self.figures, "reference": self.reference,
               "level_bands": self.level_bands, "steps": [step_summary(r, per_image) for r in self.records]}
        if self.leftover is not None:
            out["leftover_per_image"] = [round(float(v), 6) for v in self.leftover]
        return out


def merge_results(results: list[SampleResult]) -> SampleResult:
    """Batches of one run (same settings, consecutive seeds) -> one result over all their images."""
    first = results[0]
    leftovers = [r.leftover for r in results]
    return SampleResult(torch.cat([r.images for r in results]), merge_records([r.records for r in results]),
                        first.nfe_per_image, sum(r.seconds for r in results), first.settings,
                        None if any(v is None for v in leftovers) else torch.cat(leftovers), first.reference)


def check_settings(sampler: str, steps: int, n: int):
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler '{sampler}' (choose from {', '.join(SAMPLERS)})")
    STEPS.check(steps)
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"the number of images must be at least 1, got {n}")


def check_sampler_options(sampler: str, options: dict):
    """A sampler-specific option given to another sampler (eta to DPM-Solver++, say) is a clear
    error rather than a TypeError from deep inside the loop."""
    accepted = list(inspect.signature(SAMPLERS[sampler]).parameters)[4:]   # after x, sigmas, predict, noise
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        takes = f"it takes {', '.join(accepted)}" if accepted else "it takes no options"
        raise ValueError(f"the {sampler} sampler has no option {', '.join(unknown)} ({takes})")


def guided(net, cfg_scale: float = 1.0, nag_scale: float = 0.0, guide=None, nag_est_scale: float = 0.0):
    """The network with its guidance: CFG and classifier-free NAG batched (``Guided``), estimator NAG
    on top (``EstimatorGuided``); the network itself when there is none."""
    if cfg_scale != 1 or nag_scale:
        net = Guided(net, cfg_scale, nag_scale)
    if nag_est_scale:
        if guide is None:
            raise ValueError("estimator-based NAG needs a noise-level reading to follow (guide)")
        net = EstimatorGuided(net, guide, nag_est_scale)
    return net


def class_condition(model, labels, b: int) -> Cond | None:
    """Class labels (one for all, or one per image) checked against the model's classes."""
    if labels is None:
        return None
    lab = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    lab = lab.expand(b).clone() if lab.numel() == 1 else lab
    if model.num_classes is None:
        raise ValueError("this model is unconditional: it takes no class label")
    if lab.min() < 0 or lab.max() >= model.num_classes:
        raise ValueError(f"class labels must lie in 0..{model.num_classes - 1}")
    return Cond(labels=lab)


def sample_steps(model, *, sampler: str = "ddim", steps: int = 20, n: int = 1, seed: int = 0,
                 seeds: list[int] | None = None, labels=None, correction: Correction | None = None,
                 cfg_scale: float = 1.0, nag_scale: float = 0.0, schedule: str = "model",
                 sigmas: torch.Tensor | None = None, x: torch.Tensor | None = None,
                 estimator=None, guide=None, nag_est_scale: float = 0.0, clip_x0: bool | None = None,
                 **sampler_options) -> Iterator[StepRecord]:
    """Yield one StepRecord per step (with image tensors); the last record's ``x_next`` is the sample.

    seeds: one per image (default seed, seed+1, ...); labels: class per image (int or list) or None.
    Each record's ``nfe`` is the network evaluations per image that step spent.
    estimator: a noise-level estimator; each record then carries ``extras['sigma_est']``, its reading
    of the state entering the step (a measurement). guide, nag_est_scale: estimator-based NAG following the
    gradient of ``guide`` (a reading with ``log_prob``) with that weight.
    clip_x0: clamp every step's x0 estimate to [-1, 1] (``corrections.clip_x0``), for the baseline and any
    correction alike; None follows the model's scheduler config (``clip_sample``; off for a plain
    function). Restoration passes False: it clamps before its projection, never after.
    """
    check_settings(sampler, steps, n)
    check_sampler_options(sampler, sampler_options)
    base = as_denoiser(model)
    counted = CountingDenoiser(base)
    net = guided(counted, cfg_scale, nag_scale, guide, nag_est_scale)
    correction = correction or Correction()
    if sigmas is None:
        sigmas = make_schedule(schedule, base).sigmas(steps)
    correction.reset(sigmas)
    noise = SeededNoise(list(seeds) if seeds is not None else [seed + i for i in range(n)])
    if x is None:
        if base.sample_shape is None:
            raise ValueError("this model does not say its sample shape: pass the starting x")
        x = float(sigmas[0]) * noise(torch.empty(len(noise.seeds), *base.sample_shape, device=base.device))
    cond = class_condition(base, labels, x.shape[0])
    clip = bool(base.clip_sample) if clip_x0 is None else bool(clip_x0)

    def predict(x_, s, sn, i):
        p = correction.predict(net, x_, s, sn, cond, i)
        return clipped(p) if clip else p

    b = x.shape[0]
    seen = 0
    for rec in SAMPLERS[sampler](x, sigmas, predict, noise, **sampler_options):
        rec.nfe, seen = (counted.count - seen) / b, counted.count
        if estimator is not None:
            rec.extras["sigma_est"] = estimator.estimate(rec.x)
        yield rec


def sample(model, *, progress: Callable[[StepRecord], None] | None = None, **kw) -> SampleResult:
    """Run a whole sampling loop; ``progress(record)`` is called after each step."""
    t0 = time.perf_counter()
    records, last = [], None
    for rec in sample_steps(model, **kw):
        if progress:
            progress(rec)
        records.append(light(rec))
        last = rec
    settings = {k: v for k, v in kw.items() if isinstance(v, (int, float, str, list, type(None))) and k != "x"}
    corr = kw.get("correction")
    settings["correction"] = corr.name if corr else "none"
    if kw.get("clip_x0") is None:
        settings["clip_x0"] = bool(as_denoiser(model).clip_sample)
    images = last.x_next.clamp(-1, 1)
    seconds = time.perf_counter() - t0           # reading the final images is a measurement: not timed
    estimator = kw.get("estimator")
    leftover = None if estimator is None else estimator.estimate(images).detach().cpu()
    return SampleResult(images, records, sum(r.nfe for r in records), seconds, settings, leftover,
                        None if estimator is None else estimator.reference)
