"""Quality metrics: FID-C10 and KID-C10 for samples, PSNR and SSIM for restoration.

**FID-C10 / KID-C10.** No Inception weights can be downloaded here, so the Fréchet and kernel
distances are computed in the penultimate feature space (256-d) of our own CIFAR-10 classifier
(``noisecorr_app.extras.classifier``). The numbers are NOT comparable with Inception FID/KID or with
published results; compare them only with each other, at the same number of samples and with the same
classifier weights. The reference is the CIFAR-10 train split; its features are cached (``.npz`` in
the data cache, keyed by the classifier's weights hash and the data file), so only the first
evaluation pays for them. Generated images are quantised to 8 bits before feature extraction, as the
reference images are.

- ``fid``: ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2)``, in float64 with symmetric
  eigen-decompositions (no scipy); negative eigenvalues from round-off are clipped to 0.
- ``kid``: unbiased MMD^2 with the cubic polynomial kernel ``k(x, y) = (x.y / d + 1)^3``, mean and std
  over random subsets (as in Binkowski et al. 2018 and torch-fidelity).

**PSNR / SSIM** take image tensors (B, C, H, W) or (C, H, W) and a ``value_range`` (default (-1, 1),
the model space; pass (0, 1) for images in [0, 1]). Both are computed on the [0, 1] range, per image,
and returned as a float64 tensor of shape (B,) (a 0-d tensor for one image); average them yourself.
- PSNR = ``10 log10(1 / MSE)`` over all channels and pixels; identical images give ``PSNR_MAX_DB``
  (100 dB: MSE is floored at 1e-10) rather than inf, so means and JSON stay finite. No clamping.
- SSIM (Wang et al. 2004): 11x11 Gaussian window with sigma 1.5, ``C1 = (0.01)^2``, ``C2 = (0.03)^2``,
  computed per channel over the 'valid' window positions (no padding, as the reference MATLAB code),
  averaged over positions and then channels. Images must be at least 11x11.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

METRIC_NOTE = "FID-C10/KID-C10 use our CIFAR-10 classifier's features: not comparable with Inception FID/KID"
PSNR_MAX_DB = 100.0


# -- features --------------------------------------------------------------------------------------------
@dataclass
class FeatureStats:
    mu: np.ndarray      # (D,) float64
    sigma: np.ndarray   # (D, D) float64
    n: int


@torch.no_grad()
def extract_features(classifier, images, batch_size: int = 250, progress: bool = True,
                     desc: str = "features") -> np.ndarray:
    """Penultimate classifier features (N, D) float32 for uint8 (N, H, W, 3) images or float (N, 3, H, W)
    tensors in [-1, 1] (see ``extras.classifier.as_input``). Runs in eval mode, in batches, with tqdm."""
    from tqdm import tqdm

    from ..extras.classifier import as_input

    was_training = classifier.training
    classifier.eval()
    device = next(classifier.parameters()).device
    out = []
    try:
        for i in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch", disable=not progress):
            out.append(classifier.features(as_input(images[i:i + batch_size], device)).float().cpu())
    finally:
        classifier.train(was_training)
    if not out:
        raise ValueError("no images to extract features from")
    return torch.cat(out).numpy()


@torch.no_grad()
def predict_from_features(classifier, feats: np.ndarray) -> np.ndarray:
    """Class predictions from already extracted features (the classifier's last layer only)."""
    head = classifier.head
    w = next(head.parameters())
    return head(torch.from_numpy(np.asarray(feats)).to(w.device, w.dtype)).argmax(1).cpu().numpy()


def feature_stats(feats) -> FeatureStats:
    """Mean and (unbiased) covariance of features (N, D), in float64."""
    f = np.asarray(feats, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"need at least 2 feature vectors of shape (N, D), got {f.shape}")
    return FeatureStats(f.mean(0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1]), len(f))


def _as_stats(x) -> FeatureStats:
    return x if isinstance(x, FeatureStats) else feature_stats(x)


def _sqrt_psd(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), float64, eigen-decomposition based."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise ValueError(f"feature dimensions differ: {mu1.shape} vs {mu2.shape}")
    r1 = _sqrt_psd(s1)
    m = r1 @ s2 @ r1
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    d = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)
    return max(d, 0.0)


def fid(feats_a, feats_b) -> float:
    """Fréchet distance between two feature sets, each an (N, D) array or a ``FeatureStats``."""
    a, b = _as_stats(feats_a), _as_stats(feats_b)
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)


def kid(feats_a, feats_b, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Kernel inception distance in our feature space: (mean, std) of the unbiased MMD^2 with kernel
    ``(x.y / d + 1)^3`` over ``subsets`` random subsets of ``min(subset_size, N_a, N_b)`` from each set."""
    a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets must be (N, D) with the same D, got {a.shape} and {b.shape}")
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ValueError("KID needs at least 2 feature vectors in each set")
    d = a.shape[1]
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        mmd = ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (m * (m - 1)) - 2 * kxy.mean()
        vals.append(mmd)
    vals = np.array(vals)
    return float(vals.mean()), float(vals.std())


# -- reference features (cached) ---------------------------------------------------------------------------
def classifier_fingerprint(classifier) -> str:
    """The sha1 of the weights file it was loaded from, else of its current weights."""
    fp = getattr(classifier, "fingerprint", None)
    if fp:
        return fp
    h = hashlib.sha1()
    for k, v in classifier.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().float().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


@dataclass
class ReferenceFeatures:
    features: np.ndarray      # (N, D) float32
    labels: np.ndarray        # (N,) int64
    class_names: list[str]
    source: str

    def stats(self, label: int | None = None) -> FeatureStats:
        return feature_stats(self.features if label is None else self.features[self.labels == label])


def reference_features(classifier, data: str | Path | None = None, split: str | None = "train",
                       image_size: int | None = 32, batch_size: int = 500, progress: bool = True) -> ReferenceFeatures:
    """Classifier features of a whole data split (default: the CIFAR-10 train split), cached on disk
    keyed by the classifier's weights hash and the data's fingerprint."""
    from ..training.data import cache_dir, data_fingerprint, default_cifar10, load_images

    path = Path(data) if data is not None else default_cifar10()
    if not path.exists():
        raise FileNotFoundError(f"no data at {path}")
    key = hashlib.sha1(f"{classifier_fingerprint(classifier)}|{data_fingerprint(path)}|"
                       f"{split}|{image_size}".encode()).hexdigest()[:16]
    cached = cache_dir() / f"fidc10-features-{key}.npz"
    source = f"{path.name}:{split or 'all'}"
    if cached.exists():
        z = np.load(cached, allow_pickle=False)
        return ReferenceFeatures(z["features"], z["labels"], [str(c) for c in z["class_names"]], source)
    ds = load_images(path, split=split, size=image_size)
    feats = extract_features(classifier, ds.images, batch_size, progress, desc=f"reference features ({source})")
    from ..extras.storage import atomic_write

    atomic_write(cached, lambda tmp: np.savez(tmp, features=feats.astype(np.float32), labels=ds.labels,
                                              class_names=np.array(ds.class_names)), suffix=".npz")
    return ReferenceFeatures(feats.astype(np.float32), ds.labels, list(ds.class_names), source)


# -- restoration metrics -----------------------------------------------------------------------------------
def _to_unit(x, value_range) -> torch.Tensor:
    x = torch.as_tensor(x).double()
    lo, hi = value_range
    if hi <= lo:
        raise ValueError(f"value_range must be (low, high) with low < high, got {value_range}")
    return (x - lo) / (hi - lo)


def _pair(a, b, value_range):
    a, b = _to_unit(a, value_range), _to_unit(b, value_range)
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    single = a.ndim == 3
    if single:
        a, b = a[None], b[None]
    if a.ndim != 4:
        raise ValueError(f"expected images (B, C, H, W) or (C, H, W), got shape {tuple(a.shape)}")
    return a, b, single


def psnr(a, b, value_range: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    """Per-image PSNR in dB on the [0, 1] range (see the module docstring); capped at PSNR_MAX_DB."""
    a, b, single = _pair(a, b, value_range)
    mse = ((a - b) ** 2).flatten(1).mean(1).clamp_min(10 ** (-PSNR_MAX_DB / 10))
    out = 10 * torch.log10(1.0 / mse)
    return out[0] if single else out


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    g = torch.exp(-((torch.arange(size, dtype=torch.float64) - (size - 1) / 2) ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(a, b, value_range: tuple[float, float] = (-1.0, 1.0), window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM on the [0, 1] range (see the module docstring), averaged over channels."""
    a, b, single = _pair(a, b, value_range)
    c, h, w = a.shape[1:]
    if h < window or w < window:
        raise ValueError(f"SSIM needs images of at least {window}x{window}, got {h}x{w}")
    k = gaussian_window(window, sigma).to(a.device).expand(c, 1, window, window)
    blur = lambda x: F.conv2d(x, k, groups=c)
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    out = s.mean(dim=(2, 3)).mean(1)
    return out[0] if single else out
