"""A small CIFAR-10 classifier whose penultimate features define the offline metric FID-C10.

No Inception weights can be downloaded here, so sample quality is measured in the feature space of
this network instead. FID-C10 is *not* comparable with Inception FID (different network, different
feature space, different scale): compare FID-C10 numbers only with each other, computed with the same
classifier weights (the reference statistics are keyed by the weights file's hash).

The network is a ResNet-9 in the style of Page's DAWNBench model at half width (32-64-128-256,
1.6M parameters): conv-BN-ReLU blocks, three 2x max-pools, two residual blocks, global max pooling
to a 256-d feature vector, one linear layer to the logits. Inputs are images in [-1, 1],
shape (B, 3, H, W); any H, W divisible by 8 works (CIFAR-10 is 32x32).

Weights are stored as ``model.safetensors`` + ``config.json`` in a folder; nothing is ever unpickled.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..models.cache import file_sha1

DEFAULT_CLASSIFIER = Path(__file__).resolve().parents[2] / "weights" / "cifar10-classifier"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
ARCHITECTURE = "resnet9"


def conv_bn(c_in: int, c_out: int, pool: bool = False) -> nn.Sequential:
    """3x3 conv (no bias) [-> 2x max-pool] -> BatchNorm -> ReLU (pooling before BN is 4x cheaper)."""
    layers = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    layers += [nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class Residual(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn(c, c), conv_bn(c, c))

    def forward(self, x):
        return x + self.body(x)


class CifarClassifier(nn.Module):
    """ResNet-9 style classifier. ``forward(x) -> logits``, ``features(x) -> (B, widths[-1])``."""

    def __init__(self, widths: tuple[int, ...] | list[int] = (32, 64, 128, 256), num_classes: int = 10,
                 class_names: list[str] | None = None):
        super().__init__()
        if len(widths) != 4:
            raise ValueError(f"widths needs 4 channel counts, got {list(widths)}")
        w1, w2, w3, w4 = (int(w) for w in widths)
        self.widths, self.num_classes = (w1, w2, w3, w4), int(num_classes)
        self.class_names = list(class_names) if class_names else None
        self.body = nn.Sequential(
            conv_bn(3, w1),
            conv_bn(w1, w2, pool=True), Residual(w2),
            conv_bn(w2, w3, pool=True),
            conv_bn(w3, w4, pool=True), Residual(w4),
            nn.AdaptiveMaxPool2d(1), nn.Flatten())
        self.head = nn.Linear(w4, self.num_classes)
        self.fingerprint: str | None = None   # sha1 of the weights file it was loaded from (see load_classifier)

    @property
    def feature_dim(self) -> int:
        return self.widths[-1]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (globally max-pooled, after ReLU), shape (B, feature_dim)."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def config(self) -> dict:
        return {"architecture": ARCHITECTURE, "widths": list(self.widths), "num_classes": self.num_classes,
                "class_names": self.class_names, "input_range": [-1, 1], "feature_dim": self.feature_dim}


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_classifier(model: CifarClassifier, folder: str | Path, info: dict | None = None,
                    state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``model.safetensors`` (fp32) and ``config.json`` (architecture + class names + ``info``).

    ``state_dict`` overrides the model's own weights (e.g. the trainer's EMA). Files are written to a
    temporary name first and then renamed, so a crash never leaves a half-written folder behind.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sd = state_dict if state_dict is not None else model.state_dict()
    sd = {k: (v.detach().float() if v.is_floating_point() else v.detach()).contiguous().cpu() for k, v in sd.items()}
    tmp = folder / (WEIGHTS_FILE + ".tmp")
    save_file(sd, tmp, metadata={"format": "pt"})
    tmp.replace(folder / WEIGHTS_FILE)
    cfg = {**model.config(), "metric": "FID-C10 (not comparable with Inception FID)", **(info or {})}
    tmp = folder / (CONFIG_FILE + ".tmp")
    tmp.write_text(json.dumps(cfg, indent=2))
    tmp.replace(folder / CONFIG_FILE)
    return folder


def read_config(folder: str | Path) -> dict:
    folder = Path(folder)
    path = folder / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"no {CONFIG_FILE} in classifier folder {folder}")
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"classifier config {path} is not valid JSON ({e}); re-export or retrain it") from None
    if not isinstance(cfg, dict) or cfg.get("architecture") != ARCHITECTURE:
        raise ValueError(f"{path} does not describe a '{ARCHITECTURE}' classifier")
    return cfg


def load_classifier(folder: str | Path = DEFAULT_CLASSIFIER, device: str | torch.device = "cpu") -> CifarClassifier:
    """The classifier saved in ``folder``, in eval mode on ``device``.

    Raises FileNotFoundError (folder or file missing, with the command that makes it) or ValueError
    (corrupt or mismatched files). Only safetensors are read.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    hint = ("train it with: python -m noisecorr_app train classifier --out "
            f"{folder}" if folder != DEFAULT_CLASSIFIER else
            "train it with: python -m noisecorr_app train classifier --out weights/cifar10-classifier")
    if not folder.is_dir():
        raise FileNotFoundError(f"no classifier folder at {folder}; {hint}")
    weights = folder / WEIGHTS_FILE
    if not weights.exists():
        raise FileNotFoundError(f"no {WEIGHTS_FILE} in classifier folder {folder}; {hint}")
    cfg = read_config(folder)
    try:
        model = CifarClassifier(cfg["widths"], cfg["num_classes"], cfg.get("class_names"))
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"classifier config {folder / CONFIG_FILE} is incomplete or invalid ({e})") from None
    try:
        sd = load_file(weights)
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"classifier weights {weights} are corrupt ({e}); re-export or retrain them") from None
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()})
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise ValueError(f"classifier weights {weights} do not match its config.json ({first})") from None
    model.fingerprint = file_sha1(weights)
    model.info = cfg
    return model.to(device).eval()


def as_input(images, device: str | torch.device = "cpu") -> torch.Tensor:
    """Images -> float (B, 3, H, W) in [-1, 1], channels_last, on ``device``.

    uint8 arrays/tensors are taken as (B, H, W, 3) when the last axis has 3 channels, else (B, 3, H, W);
    float tensors/arrays are taken as (B, 3, H, W) already in [-1, 1].
    """
    import numpy as np

    x = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else torch.as_tensor(images)
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.dtype == torch.uint8:
        if x.shape[-1] == 3 and x.shape[1] != 3:
            x = x.permute(0, 3, 1, 2)
        x = x.float().div(127.5).sub(1.0)
    else:
        x = x.float()
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected RGB images (B, 3, H, W) or uint8 (B, H, W, 3), got shape {tuple(x.shape)}")
    return x.to(device).contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def classify(model: CifarClassifier, images, batch_size: int = 500, progress: bool = False):
    """Predicted class index per image (numpy int64), in eval mode and batches; restores the model's mode."""
    import numpy as np
    from tqdm import tqdm

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    try:
        for i in tqdm(range(0, len(images), batch_size), desc="classify", unit="batch", disable=not progress):
            out.append(model(as_input(images[i:i + batch_size], device)).argmax(1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out).numpy().astype(np.int64) if out else np.zeros(0, dtype=np.int64)
