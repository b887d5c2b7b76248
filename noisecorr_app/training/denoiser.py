"""Train a diffusers UNet2DModel denoiser (epsilon prediction, linear betas 1e-4..0.02, T=1000).

Two dropouts make one network serve three guidance modes:
- class dropout: the label is replaced by the null class ``num_classes`` (classifier-free guidance);
- noise-condition dropout: the timestep is replaced by ``NULL_TIMESTEP`` (classifier-free NAG).
Both nulls are plain inputs of a plain ``UNet2DModel``: the null class is one more row of its class
embedding table, and the null timestep is a sentinel far outside [0, T) whose sinusoidal embedding
no real timestep shares. ``noisecorr.json`` beside the weights records both, so the folder loads
with ``UNet2DModel.from_pretrained`` and needs no custom code.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DModel
from safetensors.torch import load_file, save_file

from .data import load_images, to_tensor
from .loop import Trainer, TrainConfig, infinite_batches, read_state

NULL_TIMESTEP = 10_000   # the "no noise level given" condition used by classifier-free NAG
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                        prediction_type="epsilon", clip_sample=True, variance_type="fixed_small")


def small_unet_config(image_size: int = 32, num_classes: int | None = 10) -> dict:
    """6.3M parameters at 32x32: ~90 ms per call at batch 4 on 2 CPU cores (measured, fp32)."""
    return dict(sample_size=image_size, in_channels=3, out_channels=3, layers_per_block=2,
                block_out_channels=(32, 64, 128, 128), norm_num_groups=16, attention_head_dim=32,
                down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
                num_class_embeds=(num_classes + 1) if num_classes else None)


def denoiser_loss(alphas_cumprod: torch.Tensor, num_classes: int | None, p_class_drop: float, p_noise_drop: float):
    def loss(model: UNet2DModel, batch):
        x0, labels = batch
        x0, labels = x0.to(model.device), labels.to(model.device)
        b = x0.shape[0]
        t = torch.randint(0, len(alphas_cumprod), (b,), device=x0.device)
        abar = alphas_cumprod.to(x0.device)[t].view(b, 1, 1, 1)
        eps = torch.randn_like(x0)
        z = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
        t_in = torch.where(torch.rand(b, device=x0.device) < p_noise_drop, torch.full_like(t, NULL_TIMESTEP), t)
        y = None
        if num_classes:
            y = torch.where(torch.rand(b, device=x0.device) < p_class_drop, torch.full_like(labels, num_classes), labels)
        pred = model(z, t_in, class_labels=y).sample
        return torch.nn.functional.mse_loss(pred.float(), eps)
    return loss


def write_model_folder(out: Path, unet_config: dict, weights: dict[str, torch.Tensor], info: dict):
    """A diffusers DDPM pipeline folder (model_index.json, unet/, scheduler/) plus noisecorr.json."""
    out.mkdir(parents=True, exist_ok=True)
    UNet2DModel(**unet_config).save_config(out / "unet")
    # fp16 halves the shipped size; the loader upcasts to the dtype it is asked for. Written under a
    # temporary name and renamed into place: a server or CLI loading the model while this runs reads
    # the old file or the new one, never half of one.
    target = out / "unet" / "diffusion_pytorch_model.safetensors"
    staging = target.with_name(target.name + ".tmp")
    save_file({k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in weights.items()},
              staging, metadata={"format": "pt"})
    os.replace(staging, target)
    DDPMScheduler(**SCHEDULER_CONFIG).save_pretrained(out / "scheduler")
    (out / "model_index.json").write_text(json.dumps(
        {"_class_name": "DDPMPipeline", "_diffusers_version": "0.42.1",
         "scheduler": ["diffusers", "DDPMScheduler"], "unet": ["diffusers", "UNet2DModel"]}, indent=2))
    # The method weights measured on this model and written in by hand (methods.defaults_for) stay
    # across checkpoints; the card says which weights they were measured on.
    previous = out / "noisecorr.json"
    if "method_defaults" not in info and previous.exists():
        kept = json.loads(previous.read_text()).get("method_defaults")
        info = {**info, **({"method_defaults": kept} if kept else {})}
    (out / "noisecorr.json").write_text(json.dumps(info, indent=2))


def train_denoiser(data: str, out: str, steps: int, batch_size: int = 64, lr: float = 2e-4,
                   image_size: int = 32, p_class_drop: float = 0.1, p_noise_drop: float = 0.1,
                   unconditional: bool = False, max_minutes: float | None = None, precision: str = "auto",
                   checkpoint_minutes: float = 10.0, split: str | None = "train", threads: int | None = None):
    if threads:
        torch.set_num_threads(threads)
    ds = load_images(data, split=split, size=image_size)
    num_classes = None if unconditional else len(ds.class_names)
    images = torch.from_numpy(ds.images)            # uint8 N x H x W x 3, converted per batch
    labels = torch.from_numpy(ds.labels)
    unet_config = small_unet_config(image_size, num_classes)
    model = UNet2DModel(**unet_config)
    sched = DDPMScheduler(**SCHEDULER_CONFIG)
    cfg = TrainConfig(steps=steps, lr=lr, precision=precision, checkpoint_minutes=checkpoint_minutes,
                      extra=dict(data=str(data), batch_size=batch_size, image_size=image_size,
                                 p_class_drop=p_class_drop, p_noise_drop=p_noise_drop))
    info = {"num_classes": num_classes, "class_names": ds.class_names if num_classes else None,
            "null_class": num_classes, "null_timestep": NULL_TIMESTEP,
            "p_class_drop": p_class_drop, "p_noise_drop": p_noise_drop}
    out_dir = Path(out)

    def export(trainer: Trainer):
        write_model_folder(out_dir, unet_config, trainer.ema_state(torch.float32),
                           {**info, "trained_steps": trainer.step, "train_hours": round(trainer.seconds / 3600, 3)})

    def exported_ema():
        # A clone has no ema.safetensors (not committed): the exported unet/ is the EMA, provided
        # it was exported at the checkpoint's step. The shipped unet/ can lag the training state
        # (it is kept matched to its NLC weights); then the EMA restarts from the raw weights.
        exported = json.loads((out_dir / "noisecorr.json").read_text()).get("trained_steps") \
            if (out_dir / "noisecorr.json").exists() else None
        state = read_state(out_dir / "training" / "state.json")
        if exported != state.get("step"):
            return None
        return load_file(out_dir / "unet" / "diffusion_pytorch_model.safetensors")

    trainer = Trainer(model, denoiser_loss(sched.alphas_cumprod, num_classes, p_class_drop, p_noise_drop),
                      out_dir, cfg, on_checkpoint=export, ema_fallback=exported_ema)
    if trainer.device.type == "cpu":
        model.to(memory_format=torch.channels_last)

    def make_batch(idx, g):
        x = to_tensor(images[idx].numpy())
        flip = torch.rand(len(idx), generator=g) < 0.5
        x[flip] = x[flip].flip(-1)
        return x, labels[idx]

    batches = infinite_batches(len(labels), batch_size, make_batch, seed=cfg.seed + trainer.step)
    for _ in trainer.run(batches, max_minutes=max_minutes):
        pass
    return trainer
