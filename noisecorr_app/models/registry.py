"""The embedded default model and the Hub presets offered in the app."""
from __future__ import annotations

from pathlib import Path

WEIGHTS = Path(__file__).resolve().parents[2] / "weights"
DEFAULT_MODEL = WEIGHTS / "noisecorr-ddpm-cifar10"

# (label, source, note) for the app's model picker. Hub repos ship pickle weights, some also safetensors.
HUB_PRESETS = [
    ("google/ddpm-cifar10-32", "google/ddpm-cifar10-32", "35.7M params, unconditional CIFAR-10, 32x32"),
    ("google/ddpm-ema-celebahq-256", "google/ddpm-ema-celebahq-256", "114M params, faces, 256x256 (GPU advised)"),
    ("google/ddpm-ema-church-256", "google/ddpm-ema-church-256", "114M params, churches, 256x256 (GPU advised)"),
    ("google/ddpm-ema-bedroom-256", "google/ddpm-ema-bedroom-256", "114M params, bedrooms, 256x256 (GPU advised)"),
]


def default_model_path() -> Path:
    return DEFAULT_MODEL

CIFAR_ESTIMATOR = WEIGHTS / "cifar10-noise-estimator"


def extras_for(model) -> dict[str, Path]:
    """The trained extras a model has: its NLC network and lookup table (in its own folder) and a
    noise-level estimator (its own, else the CIFAR-10 one for 32x32 RGB models, whose data it
    matches). Training-free corrections need nothing and are always available."""
    from .denoiser import as_denoiser

    model = as_denoiser(model)
    folder = Path(model.info["folder"]) if model.info.get("folder") else None
    found = {}
    if folder and (folder / "nlc" / "model.safetensors").exists():
        found["nlc"] = folder / "nlc"
        if (folder / "nlc" / "lut" / "table.safetensors").exists():
            found["nlc-lut"] = folder / "nlc" / "lut"
    if folder and (folder / "estimator" / "model.safetensors").exists():
        found["estimator"] = folder / "estimator"
    elif tuple(model.sample_shape or ()) == (3, 32, 32) and (CIFAR_ESTIMATOR / "model.safetensors").exists():
        found["estimator"] = CIFAR_ESTIMATOR
    return found
