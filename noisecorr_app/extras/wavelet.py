"""A noise-level reading for any image domain and size, with nothing trained (Donoho's wavelet estimate):
sigma = median |finest diagonal Haar coefficient| / 0.6745, all channels of an image pooled.

Gaussian noise of level sigma gives those coefficients a standard deviation of sigma (the orthonormal Haar
transform keeps it), while smooth image content gives them almost nothing; the median ignores the few large
ones at edges. It reads forward-noised photos within a few percent from sigma 0.1 to 100 at 32-256 pixels
(docs/noise-shift.md); below ~0.05 it reads the image's own fine detail, so a final image is judged against
real photos' readings at the same size (``reference``), as the trained estimator's readings are.

It serves the per-step level plots and the leftover-noise figures of models with no trained estimator. It
does not guide (the median's gradient reaches one coefficient): estimator NAG still needs a trained one.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..models.registry import WEIGHTS

REFERENCE_FILE = WEIGHTS / "wavelet-level" / "reference.json"
MAD_TO_SIGMA = 0.6745          # the median of |N(0, 1)|


def read_level(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) in model units -> (B,) the noise level each image carries. H and W even."""
    hh = (x[..., 0::2, 0::2] - x[..., 0::2, 1::2] - x[..., 1::2, 0::2] + x[..., 1::2, 1::2]) / 2
    return hh.abs().flatten(1).float().median(dim=1).values / MAD_TO_SIGMA


class WaveletLevel:
    """The reading with the estimator's interface (``estimate``, ``reference``) for one image size."""

    name = "wavelet"

    def __init__(self, size: int, references: dict | None = None):
        self.size = size
        self.reference = nearest_reference(references if references is not None else load_references(), size)

    def estimate(self, x: torch.Tensor) -> torch.Tensor:
        return read_level(x)

    def log_prob(self, x, sigma):
        raise ValueError("the wavelet noise reading cannot guide sampling: estimator NAG needs a trained estimator")

    def parameters(self):
        return iter(())


def usable(sample_shape) -> bool:
    """Images the reading can read: even sides of at least 8 pixels."""
    return sample_shape is not None and len(sample_shape) == 3 and all(s >= 8 and s % 2 == 0 for s in sample_shape[1:])


def load_references(path: Path = REFERENCE_FILE) -> dict:
    """Real photos' readings per image size (``python -m noisecorr_app reference-level --wavelet``)."""
    try:
        return json.loads(Path(path).read_text()).get("sizes", {})
    except (OSError, ValueError, AttributeError):
        return {}


def nearest_reference(references: dict, size: int) -> dict | None:
    """The readings of real photos at the stored size nearest ``size`` (log scale), or None."""
    import math

    sizes = [int(s) for s in references if str(s).isdigit()]
    if not sizes:
        return None
    best = min(sizes, key=lambda s: abs(math.log(s / size)))
    return references[str(best)]
