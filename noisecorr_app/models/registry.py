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
