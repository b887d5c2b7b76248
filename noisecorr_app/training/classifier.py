"""Train the CIFAR-10 classifier whose features define FID-C10 (``noisecorr_app.extras.classifier``).

Recipe (shared ``Trainer``): AdamW, lr 2e-3 with a linear warm-up and cosine decay to 0 at ``steps``,
decoupled weight decay 5e-2, label smoothing 0.1, batch 128, fp32 (channels_last on CPU), EMA with
decay 0.999. Augmentation: random 32x32 crop of the image zero-padded by 4 pixels, horizontal flip.

At every checkpoint the EMA weights are scored on the test split (10,000 images for CIFAR-10) and
exported to ``<out>/model.safetensors`` with the accuracy in ``<out>/config.json``; once ``steps`` are
done, the raw weights are scored too and the better of the two is exported (``"weights"`` says which). Resumes from ``<out>/training/`` like every train command.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..extras.classifier import WEIGHTS_FILE, CifarClassifier, classify, num_parameters, save_classifier
from .data import ImageSet, load_images
from .loop import Trainer, TrainConfig, infinite_batches, read_state

DEFAULT_WIDTHS = (32, 64, 128, 256)


def evaluate_accuracy(model: CifarClassifier, images_uint8, labels, batch_size: int = 500) -> float:
    """Top-1 accuracy in [0, 1] on uint8 (N, H, W, 3) images, in eval mode under no_grad, in batches."""
    labels = np.asarray(labels)
    if len(labels) == 0:
        raise ValueError("no images to evaluate")
    pred = classify(model, images_uint8, batch_size=batch_size)
    return float((pred == labels).mean())


def augment(images: torch.Tensor, g: torch.Generator, pad: int = 4) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [-1, 1]: random crop of the zero-padded image + h-flip."""
    x = images.permute(0, 3, 1, 2)
    b, _, h, w = x.shape
    x = F.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=g)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=g)
    rows = (oy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (ox[:, None] + torch.arange(w))[:, None, None, :]
    x = x[torch.arange(b)[:, None, None, None], torch.arange(3)[None, :, None, None], rows, cols]
    flip = (torch.rand(b, generator=g) < 0.5)[:, None, None, None]
    x = torch.where(flip, x.flip(-1), x)
    return x.float().div(127.5).sub(1.0).contiguous(memory_format=torch.channels_last)


def _test_set(data, split: str | None, image_size: int | None, class_names: list[str]) -> ImageSet | None:
    """The held-out split with labels mapped onto the training classes, or None when the data has none."""
    if not split:
        return None
    try:
        ts = load_images(data, split=split, size=image_size)
    except ValueError as e:
        if "no images found" not in str(e):
            raise
        print(f"note: {e}; test accuracy is not recorded and the EMA weights are exported")
        return None
    unknown = sorted(set(ts.class_names) - set(class_names))
    if unknown:
        raise ValueError(f"the '{split}' split has classes the training split lacks: {', '.join(unknown)}")
    remap = np.array([class_names.index(n) for n in ts.class_names], dtype=np.int64)
    return ImageSet(ts.images, remap[ts.labels], class_names)


def _check_resume(out: Path, widths: tuple[int, ...]):
    state = out / "training" / "state.json"
    if state.exists():
        old = read_state(state).get("config", {}).get("extra", {}).get("widths")
        if old is not None and tuple(old) != tuple(widths):
            raise ValueError(f"{out} holds a checkpoint of widths {','.join(map(str, old))}: pass "
                             f"--widths {','.join(map(str, old))} to resume it, or choose a new --out")


def train_classifier(data: str | Path, out: str | Path, steps: int, batch_size: int = 128, lr: float = 2e-3,
                     weight_decay: float = 5e-2, warmup: int = 300, label_smoothing: float = 0.1,
                     ema_decay: float = 0.999, widths: tuple[int, ...] = DEFAULT_WIDTHS, image_size: int | None = 32,
                     max_minutes: float | None = None, precision: str = "auto", checkpoint_minutes: float = 15.0,
                     split: str | None = "train", test_split: str | None = "test", threads: int | None = None,
                     eval_batch_size: int = 500, seed: int = 0) -> Trainer:
    """Train (or resume) the classifier in ``out``; returns the Trainer. See the module docstring."""
    if threads:
        torch.set_num_threads(threads)
    if steps < 1 or batch_size < 1:
        raise ValueError("steps and batch size must be at least 1")
    out = Path(out)
    widths = tuple(int(w) for w in widths)
    _check_resume(out, widths)
    ds = load_images(data, split=split, size=image_size)
    if len(ds) < batch_size:
        raise ValueError(f"{data} has {len(ds)} training images, fewer than one batch of {batch_size}")
    if min(ds.images.shape[1:3]) < 8:
        raise ValueError(f"images of {ds.images.shape[1]}x{ds.images.shape[2]} are too small: the classifier needs 8x8 or more")
    test = _test_set(data, test_split, image_size, ds.class_names)
    images, labels = torch.from_numpy(ds.images), torch.from_numpy(ds.labels)

    model = CifarClassifier(widths, len(ds.class_names), ds.class_names).to(memory_format=torch.channels_last)
    cfg = TrainConfig(steps=steps, lr=lr, weight_decay=weight_decay, warmup=warmup, schedule="cosine",
                      ema_decay=ema_decay, grad_clip=0.0, precision=precision, checkpoint_minutes=checkpoint_minutes,
                      seed=seed, extra=dict(data=str(data), batch_size=batch_size, widths=list(widths),
                                            label_smoothing=label_smoothing, image_size=image_size,
                                            augmentation="random crop (4 px zero padding) + horizontal flip"))

    def export(trainer: Trainer):
        candidates = {"ema": trainer.ema_state(torch.float32),
                      "raw": {k: v.detach().float() if v.is_floating_point() else v.detach()
                              for k, v in trainer.model.state_dict().items()}}
        scores = {}
        if test is not None:
            # While training, only the EMA is scored (one pass over the test split per checkpoint);
            # the finished model is scored both ways and the better one exported.
            names = ("ema", "raw") if trainer.step >= steps else ("ema",)
            for name in names:
                sd = candidates[name]
                net = CifarClassifier(widths, len(ds.class_names), ds.class_names)
                net.load_state_dict(sd)
                net = net.to(trainer.device, memory_format=torch.channels_last)
                scores[name] = evaluate_accuracy(net, test.images, test.labels, eval_batch_size)
        chosen = max(scores, key=lambda k: (scores[k], k == "ema")) if scores else "ema"
        info = {"weights": chosen, "test_accuracy": scores.get(chosen),
                "test_accuracy_ema": scores.get("ema"), "test_accuracy_raw": scores.get("raw"),
                "test_split": test_split if test is not None else None, "test_images": len(test) if test else 0,
                "trained_steps": trainer.step, "epochs": round(trainer.step * batch_size / len(ds), 2),
                "train_hours": round(trainer.seconds / 3600, 3), "train_images": len(ds), "data": str(data),
                "parameters": num_parameters(model),
                "recipe": {"optimizer": "AdamW", "lr": lr, "schedule": "warm-up + cosine", "warmup": warmup,
                           "weight_decay": weight_decay, "batch_size": batch_size, "steps": steps,
                           "label_smoothing": label_smoothing, "ema_decay": ema_decay,
                           "augmentation": cfg.extra["augmentation"]}}
        save_classifier(model, out, info, state_dict=candidates[chosen])
        if scores:
            scored = ", ".join(f"{k} {v:.4f}" for k, v in scores.items())
            print(f"\nstep {trainer.step}: test accuracy {scored} -> exported {chosen} to {out}")

    def exported_weights():   # a clone without ema.safetensors resumes its EMA from the exported weights
        from safetensors.torch import load_file

        path = out / WEIGHTS_FILE
        if not path.exists():
            raise FileNotFoundError(f"{out}/training has no ema.safetensors and {path} is missing")
        return load_file(path)

    trainer = Trainer(model, classifier_loss(label_smoothing), out, cfg, save_dtype=torch.float32,
                      on_checkpoint=export, ema_fallback=exported_weights)

    def make_batch(idx, g):
        return augment(images[idx], g), labels[idx]

    batches = infinite_batches(len(labels), batch_size, make_batch, seed=cfg.seed + trainer.step)
    for _ in trainer.run(batches, max_minutes=max_minutes):
        pass
    return trainer


def classifier_loss(label_smoothing: float = 0.1):
    def loss(model: CifarClassifier, batch):
        x, y = batch
        dev = next(model.parameters()).device
        return F.cross_entropy(model(x.to(dev)).float(), y.to(dev), label_smoothing=label_smoothing)
    return loss
