"""Train the small networks that live beside a denoiser: NLC's r_theta and the noise-level estimator."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from ..extras.estimator import NoiseLevelEstimator, estimator_loss, save_estimator
from ..extras.nlc import LevelNet, save_level_net
from ..models.denoiser import Cond
from ..sampling.corrections import rms
from .data import load_images, to_tensor
from .loop import Trainer, TrainConfig, infinite_batches


def _batches(data, split, image_size, batch_size, seed):
    ds = load_images(data, split=split, size=image_size)
    images, labels = torch.from_numpy(ds.images), torch.from_numpy(ds.labels)

    def make_batch(idx, g):
        x = to_tensor(images[idx].numpy())
        flip = torch.rand(len(idx), generator=g) < 0.5
        x[flip] = x[flip].flip(-1)
        return x, labels[idx]

    return ds, lambda start: infinite_batches(len(labels), batch_size, make_batch, seed=seed + start)


def nlc_loss(denoiser, eta_range: float = 0.5, max_t: int = 990, p_null_class: float = 0.1):
    """Official recipe: x_t = x0 + sigma_t (1 + eta) eps with the network told sigma_t;
    target ||(1 + eta) eps|| / sqrt(n) - 1 (docs/methods.md section 3)."""
    def loss(net, batch):
        x0, labels = (t.to(denoiser.device) for t in batch)
        b = x0.shape[0]
        t = torch.randint(0, max_t, (b,))
        sigma = denoiser.sigma_of_timestep(t).to(x0.device)
        eta = (torch.rand(b, device=x0.device) * 2 - 1) * eta_range
        eps = torch.randn_like(x0) * (1 + eta).view(-1, 1, 1, 1)
        cond = None
        if denoiser.num_classes:
            drop = torch.rand(b) < p_null_class
            cond = Cond(labels=labels.cpu(), null_label=drop if denoiser.supports_null_label else None)
        with torch.no_grad():      # the denoiser is frozen: no graph through it
            feats = denoiser.features(x0 + sigma.view(-1, 1, 1, 1) * eps, sigma, cond)
        return torch.nn.functional.mse_loss(net(feats, sigma), rms(eps) - 1)
    return loss


def train_nlc(model_source, data, out=None, steps=20_000, batch_size=64, lr=3e-4, max_minutes=None,
              split="train", threads=None, blocks=2):
    from ..models.loading import load_model

    if threads:
        torch.set_num_threads(threads)
    denoiser = load_model(model_source)
    out = Path(out or Path(denoiser.info["folder"]) / "nlc")
    size = denoiser.sample_shape[-1]
    with torch.no_grad():
        f = denoiser.features(torch.zeros(1, *denoiser.sample_shape, device=denoiser.device), torch.tensor([1.0]))
    net = LevelNet(f.shape[1], f.shape[-1], blocks=blocks)
    ds, batches = _batches(data, split, size, batch_size, seed=1)
    cfg = TrainConfig(steps=steps, lr=lr, ema_decay=0.9995, precision="fp32",
                      extra=dict(model=str(model_source), data=str(data), batch_size=batch_size))
    info = {"denoiser": denoiser.name, "data": str(data)}
    trainer = Trainer(net, nlc_loss(denoiser), out, cfg, device=denoiser.device, save_dtype=torch.float32,
                      on_checkpoint=lambda tr: save_level_net(_ema_copy(tr, net), out, {**info, "steps": tr.step}),
                      ema_fallback=lambda: load_file(out / "model.safetensors"))
    for _ in trainer.run(batches(trainer.step), max_minutes=max_minutes):
        pass
    return trainer


def train_estimator(data, out, steps=20_000, batch_size=128, lr=1e-3, max_minutes=None, split="train",
                    threads=None, image_size=32):
    if threads:
        torch.set_num_threads(threads)
    net = NoiseLevelEstimator()
    ds, batches = _batches(data, split, image_size, batch_size, seed=2)
    cfg = TrainConfig(steps=steps, lr=lr, ema_decay=0.999, precision="fp32",
                      extra=dict(data=str(data), batch_size=batch_size, image_size=image_size))
    out = Path(out)
    trainer = Trainer(net, lambda m, batch: estimator_loss(batch[0].to(trainer.device), batch[1], m), out, cfg,
                      save_dtype=torch.float32,
                      on_checkpoint=lambda tr: save_estimator(_ema_copy(tr, net), out,
                                                              {"data": str(data), "steps": tr.step}),
                      ema_fallback=lambda: load_file(out / "model.safetensors"))
    for _ in trainer.run(batches(trainer.step), max_minutes=max_minutes):
        pass
    return trainer


def _ema_copy(trainer: Trainer, net: torch.nn.Module) -> torch.nn.Module:
    """A copy of the network holding the EMA weights (what gets shipped)."""
    import copy

    ema = copy.deepcopy(net).cpu()
    ema.load_state_dict({k: v.cpu() for k, v in trainer.ema_state(torch.float32).items()})
    return ema
