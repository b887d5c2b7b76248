"""A noise-level reading for any image domain and size, with nothing trained (Donoho's wavelet estimate):
sigma = median |finest diagonal Haar coefficient| / 0.6745, all channels of an image pooled.

Gaussian noise of level sigma gives those coefficients a standard deviation of sigma (the orthonormal Haar
transform keeps it), while smooth image content gives them almost nothing; the median ignores the few large
ones at edges. It reads forward-noised photos within a few percent from sigma 0.1 to 100 at 32-256 pixels
(docs/noise-shift.md); below ~0.05 it reads the image's own fine detail, so a final image is judged against
real photos' readings at the same size (``reference``), as the trained estimator's readings are.

It serves the per-step level plots and the leftover-noise figures of models with no trained estimator, and
the corrections that read or follow the level (nlc-est, nag-est). The median's gradient reaches a single
coefficient, so guidance follows a smooth twin of it (``guide_level``): the root mean square of the smallest
90% of the coefficients, which for Gaussian noise is a fixed fraction of sigma and moves with every one of them.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from statistics import NormalDist

import torch

from ..models.registry import WEIGHTS

REFERENCE_FILE = WEIGHTS / "wavelet-level" / "reference.json"
MAD_TO_SIGMA = 0.6745          # the median of |N(0, 1)|
KEPT = 0.9                     # the guide's share of coefficients: the largest tenth is edges and texture
_C = NormalDist().inv_cdf(0.5 + KEPT / 2)
KEPT_MEAN_SQUARE = 1 - 2 * _C * math.exp(-_C * _C / 2) / math.sqrt(2 * math.pi) / KEPT   # E[z^2 | |z| < c]
# The guide's log-density is tempered so that nag-est's one default weight (10, the trained estimator's) is its best
# too: untempered, 0.3 was best on validation seeds and 1 diverged (docs/noise-shift.md).
TEMPER = 0.03


def diagonal_details(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C*H*W/4): the finest diagonal Haar coefficients of each image (orthonormal)."""
    hh = (x[..., 0::2, 0::2] - x[..., 0::2, 1::2] - x[..., 1::2, 0::2] + x[..., 1::2, 1::2]) / 2
    return hh.flatten(1).float()


def read_level(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) in model units -> (B,) the noise level each image carries. H and W even."""
    return diagonal_details(x).abs().median(dim=1).values / MAD_TO_SIGMA


def guide_level(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(the reading's smooth twin per image, differentiable in x; how many coefficients it rests on)."""
    hh = diagonal_details(x)
    keep = (hh.abs() <= hh.detach().abs().quantile(KEPT, dim=1, keepdim=True)).float()
    return ((hh ** 2 * keep).sum(1) / keep.sum(1) / KEPT_MEAN_SQUARE).sqrt(), int(keep.sum(1).min())


class WaveletLevel:
    """The reading with the estimator's interface (``estimate``, ``reference``) for one image size."""

    name = "wavelet"

    def __init__(self, size: int, references: dict | None = None):
        self.size = size
        self.reference = nearest_reference(references if references is not None else load_references(), size)

    def estimate(self, x: torch.Tensor) -> torch.Tensor:
        return read_level(x)

    def log_prob(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """log g(sigma | x) as a Gaussian over log sigma, as the trained estimator gives it: centred on the guide
        reading less the clean images' own share (``reference``: real photos' median reading, in quadrature),
        as wide as the reading's sampling error, which grows where that share is most of what is read. The
        sampling error shrinks as 1/sqrt(count) and the gradient of each coefficient as 1/count, so a weight means
        the same at every image size (untempered, about 0.3 removes a state's excess over sigma in the finest band
        in one step)."""
        level, count = guide_level(x)
        content = (self.reference or {}).get("median", 0.0)
        noise = (level ** 2 - content ** 2).clamp_min((0.1 * level) ** 2)
        spread = math.sqrt(0.5 / count) * level ** 2 / noise
        z = (sigma.float().log() - 0.5 * noise.log()) / spread
        return TEMPER * (-0.5 * z ** 2 - spread.log() - 0.5 * math.log(2 * math.pi))

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
