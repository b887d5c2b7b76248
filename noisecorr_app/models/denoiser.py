"""Denoisers in sigma space: ``x = x0 + sigma * eps``, and a model answers ``eps(x, sigma)``.

A DDPM/VP network sees ``z = x / sqrt(1 + sigma^2)`` at a timestep t(sigma), interpolated on its own
``alphas_cumprod`` (docs/methods.md section 1). Everything downstream (samplers, corrections, restoration)
only ever calls ``denoiser.eps(x, sigma, cond)`` with ``sigma`` a per-image tensor of shape (B,).
"""
from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable

import torch


@dataclass(frozen=True)
class Cond:
    """What a network is conditioned on, per image. ``None`` fields mean "not given".

    labels: class indices (B,), or None for an unconditional call.
    null_label / null_noise: boolean masks (B,) that replace the class or the noise level by the
    model's null condition (classifier-free guidance and classifier-free NAG).
    """
    labels: torch.Tensor | None = None
    null_label: torch.Tensor | None = None
    null_noise: torch.Tensor | None = None

    @staticmethod
    def cat(conds: list["Cond"], sizes: list[int]) -> "Cond":
        """Concatenate per-image conditions for one batched network call."""
        def merge(name, fill):
            parts = [getattr(c, name) for c in conds]
            if all(p is None for p in parts):
                return None
            return torch.cat([p if p is not None else fill(n) for p, n in zip(parts, sizes)])
        zeros = lambda n: torch.zeros(n, dtype=torch.bool)
        return Cond(labels=merge("labels", lambda n: torch.zeros(n, dtype=torch.long)),
                    null_label=merge("null_label", zeros), null_noise=merge("null_noise", zeros))


@dataclass
class DiscreteSchedule:
    """A model's discrete training schedule (k-diffusion's ``DiscreteSchedule``): the levels sigma_t of
    t = 0..T-1 and the map between a sigma and a continuous timestep, linear in log sigma."""
    alphas_cumprod: torch.Tensor

    def __post_init__(self):
        self.alphas_cumprod = self.alphas_cumprod.double().cpu()
        # log sigma on the training grid, increasing in t: the table t(sigma) interpolates on
        self.log_sigmas = sigmas_from_alphas_cumprod(self.alphas_cumprod).log().float()

    @property
    def sigma_min(self) -> float:
        return float(self.log_sigmas[0].exp())

    @property
    def sigma_max(self) -> float:
        return float(self.log_sigmas[-1].exp())

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """Continuous timestep for each sigma: linear interpolation in log sigma, clamped to [0, T-1]."""
        ls = sigma.float().clamp_min(1e-12).log().cpu()
        grid = self.log_sigmas
        idx = torch.searchsorted(grid, ls).clamp(1, len(grid) - 1)
        lo, hi = grid[idx - 1], grid[idx]
        t = (idx - 1).float() + ((ls - lo) / (hi - lo)).clamp(0, 1)
        t = torch.where(ls <= grid[0], torch.zeros_like(t), t)
        # a sigma on the training grid maps to its exact integer timestep (float round-off aside)
        t = torch.where((t - t.round()).abs() < 1e-3, t.round(), t)
        return t.to(sigma.device)

    def sigma_of_timestep(self, t) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.long)
        return sigmas_from_alphas_cumprod(self.alphas_cumprod[t]).float()


class Denoiser:
    """The model contract: all that samplers, corrections and restoration ask of a model.

    ``eps(x, sigma, cond)`` with ``sigma`` of shape (B,), and these fields (class defaults: a plain,
    unconditional function on the CPU with no training schedule). NLC also calls
    ``eps_and_features`` / ``features``; only models with a trained r_theta are asked.
    """
    sample_shape: tuple[int, ...] | None = None
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    schedule: DiscreteSchedule | None = None    # the discrete training schedule, when there is one
    num_classes: int | None = None
    supports_null_label: bool = False           # a "no class" input (classifier-free guidance)
    supports_null_noise: bool = False           # a "no noise level" input (classifier-free NAG)
    clip_sample: bool = False                   # samplers clamp x0 to [-1, 1] by default
    device = torch.device("cpu")
    name = "model"
    info: Mapping = MappingProxyType({})        # what its folder says (noisecorr.json, "folder"); read-only here

    def eps(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond | None = None) -> torch.Tensor:
        raise NotImplementedError


CONTRACT = ("sample_shape", "sigma_min", "sigma_max", "schedule", "num_classes", "supports_null_label",
            "supports_null_noise", "clip_sample", "device", "name", "info")


class Wrapper(Denoiser):
    """A denoiser around another (counting, guidance): the contract's fields are the inner one's, and
    every call passes through unless a subclass changes it."""

    def __init__(self, model):
        self.model = as_denoiser(model)

    def eps(self, x, sigma, cond=None):
        return self.model.eps(x, sigma, cond)

    def eps_and_features(self, x, sigma, cond=None):
        return self.model.eps_and_features(x, sigma, cond)

    def features(self, x, sigma, cond=None):
        return self.model.features(x, sigma, cond)


for _name in CONTRACT:     # read-through properties, named one by one by the contract
    setattr(Wrapper, _name, property(lambda self, n=_name: getattr(self.model, n)))


class _Described(Denoiser):
    """Any object with ``eps`` (an analytic model in a test, a researcher's own class), read against
    the contract once: the fields it has, the defaults for the others; ``alphas_cumprod`` makes its
    training schedule."""

    def __init__(self, model):
        self.model = model
        for name in CONTRACT:
            setattr(self, name, getattr(model, name, getattr(Denoiser, name)))
        if self.schedule is None and getattr(model, "alphas_cumprod", None) is not None:
            self.schedule = DiscreteSchedule(torch.as_tensor(model.alphas_cumprod))

    def eps(self, x, sigma, cond=None):
        return self.model.eps(x, sigma, cond)


def as_denoiser(model) -> Denoiser:
    """A Denoiser stays as it is; an object with ``eps`` is read against the contract; a callable
    eps(x, sigma) is wrapped."""
    if isinstance(model, Denoiser):
        return model
    if hasattr(model, "eps"):
        return _Described(model)
    if callable(model):
        return CallableDenoiser(model)
    raise TypeError(f"expected a denoiser or a callable eps(x, sigma), got {type(model).__name__}")


def as_sigma(sigma, x: torch.Tensor) -> torch.Tensor:
    """A scalar or (B,) sigma as a float tensor of shape (B,) on x's device."""
    s = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
    return s.expand(x.shape[0]).contiguous() if s.ndim == 0 else s


def bcast(s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1, 1) for arithmetic with images."""
    return s.view(-1, *([1] * (x.ndim - 1))).to(x.dtype)


def sigmas_from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    return ((1 - alphas_cumprod) / alphas_cumprod).sqrt()


@dataclass
class CallableDenoiser(Denoiser):
    """Wrap a plain function ``f(x, sigma) -> eps`` (an analytic model, a researcher's own net)."""
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    num_classes: int | None = None
    supports_null_noise: bool = False
    supports_null_label: bool = False
    sample_shape: tuple[int, ...] | None = None

    def eps(self, x, sigma, cond=None):
        return self.fn(x, as_sigma(sigma, x))


@dataclass
class UNetDenoiser(Denoiser):
    """A diffusers ``UNet2DModel`` (DDPM type) as a sigma-space denoiser.

    prediction_type: 'epsilon', 'v_prediction' or 'sample', from the scheduler config.
    null_label / null_timestep: the inputs that stand for "no class" / "no noise level", when the
    model was trained with those dropouts (noisecorr.json); None when it was not.
    clip_sample: the scheduler config's ``clip_sample``: samplers clamp x0 to [-1, 1] by default.
    """
    unet: torch.nn.Module
    alphas_cumprod: torch.Tensor
    prediction_type: str = "epsilon"
    num_classes: int | None = None
    null_label: int | None = None
    null_timestep: float | None = None
    class_names: list[str] | None = None
    clip_sample: bool = False
    name: str = "model"
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        self.schedule = DiscreteSchedule(self.alphas_cumprod)
        self.alphas_cumprod = self.schedule.alphas_cumprod

    # -- properties the rest of the code asks for -------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def sigma_min(self) -> float:
        return self.schedule.sigma_min

    @property
    def sigma_max(self) -> float:
        return self.schedule.sigma_max

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        c = self.unet.config
        size = c.sample_size if isinstance(c.sample_size, int) else c.sample_size[0]
        return (c.in_channels, size, size)

    @property
    def supports_null_noise(self) -> bool:
        return self.null_timestep is not None

    @property
    def supports_null_label(self) -> bool:
        return self.null_label is not None

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return self.schedule.timestep(sigma)

    def sigma_of_timestep(self, t) -> torch.Tensor:
        return self.schedule.sigma_of_timestep(t)

    # -- the network call ------------------------------------------------------------------------------
    def _inputs(self, x, sigma, cond: Cond | None):
        t = self.timestep(sigma)
        if cond is not None and cond.null_noise is not None:
            if self.null_timestep is None:
                raise ValueError(f"{self.name} was not trained with noise-condition dropout: no null noise level")
            t = torch.where(cond.null_noise.to(t.device), torch.full_like(t, float(self.null_timestep)), t)
        labels = None
        if self.num_classes:
            b = x.shape[0]
            if cond is None or cond.labels is None:
                if self.null_label is None:
                    raise ValueError(f"{self.name} is class-conditional without a null class: give a class label")
                labels = torch.full((b,), self.null_label, dtype=torch.long)
            else:
                labels = cond.labels.long().clone()
            if cond is not None and cond.null_label is not None:
                if self.null_label is None:
                    raise ValueError(f"{self.name} has no null class: classifier-free guidance is unavailable")
                labels[cond.null_label.cpu()] = self.null_label
            labels = labels.to(x.device)
        z = x / bcast(torch.sqrt(1 + sigma.double() ** 2).float(), x)
        return z, t, labels

    def _to_eps(self, out, z, sigma):
        # learned-variance models: keep the mean channels; standard layout (a CPU UNet is channels_last)
        out = out[:, : z.shape[1]].float().contiguous()
        if self.prediction_type == "epsilon":
            return out
        abar = bcast((1 / (1 + sigma.double() ** 2)).float(), z)
        if self.prediction_type == "v_prediction":
            return (1 - abar).sqrt() * z + abar.sqrt() * out
        if self.prediction_type == "sample":
            return (z - abar.sqrt() * out) / (1 - abar).sqrt().clamp_min(1e-8)
        raise ValueError(f"unknown prediction type {self.prediction_type}")

    @torch.no_grad()
    def eps(self, x: torch.Tensor, sigma, cond: Cond | None = None) -> torch.Tensor:
        sigma = as_sigma(sigma, x)
        z, t, labels = self._inputs(x, sigma, cond)
        out = self.unet(z.to(self.dtype), t.to(self.device), class_labels=labels).sample
        return self._to_eps(out, z, sigma)

    # -- bottleneck features (what NLC's r_theta reads) --------------------------------------------
    @property
    def feature_channels(self) -> int:
        return self.unet.config.block_out_channels[-1]

    @torch.no_grad()
    def eps_and_features(self, x: torch.Tensor, sigma, cond: Cond | None = None):
        """One full pass: eps and the mid-block output (B, C, h, w), in float32."""
        sigma = as_sigma(sigma, x)
        z, t, labels = self._inputs(x, sigma, cond)
        store = {}
        handle = self.unet.mid_block.register_forward_hook(_this_thread(lambda m, i, o: store.update(f=o)))
        try:
            out = self.unet(z.to(self.dtype), t.to(self.device), class_labels=labels).sample
        finally:
            handle.remove()
        return self._to_eps(out, z, sigma), store["f"].float().contiguous()

    @torch.no_grad()
    def features(self, x: torch.Tensor, sigma, cond: Cond | None = None) -> torch.Tensor:
        """The encoder and middle block only (the decoder is skipped: about half a network call)."""
        sigma = as_sigma(sigma, x)
        z, t, labels = self._inputs(x, sigma, cond)
        store = {}

        def stop(module, inputs, output):
            store["f"] = output
            raise _FeaturesReady

        handle = self.unet.mid_block.register_forward_hook(_this_thread(stop))
        try:
            self.unet(z.to(self.dtype), t.to(self.device), class_labels=labels)
        except _FeaturesReady:
            pass
        finally:
            handle.remove()
        # Standard layout: a channels_last UNet hands out channels_last features, and training a
        # small conv net on those segfaults in the CPU backward (torch 2.13).
        return store["f"].float().contiguous()


def _this_thread(hook):
    """A forward hook that acts only on passes made by the thread that registered it: hooks belong
    to the shared module, and another run sampling at the same time (the app runs baseline and
    corrected side by side) must neither feed its features in nor be cut short."""
    owner = threading.get_ident()
    return lambda module, inputs, output: hook(module, inputs, output) if threading.get_ident() == owner else None


class _FeaturesReady(Exception):
    """Raised by a hook to end a forward pass once the bottleneck features exist."""
