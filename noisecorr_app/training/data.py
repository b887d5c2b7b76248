"""Image folders or tarballs -> cached uint8 arrays with integer class labels.

Class labels come from the name of each image's parent folder, sorted alphabetically.
Decoding the 60,000 CIFAR-10 JPEGs takes minutes, so the decoded arrays are cached as
``.npz`` keyed by the source's ``data_fingerprint``.
"""
from __future__ import annotations

import hashlib
import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..extras.storage import atomic_write
from ..models.cache import file_sha1

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
DEFAULT_CIFAR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "cifar10" / "CIFAR-10-images-jpeg.tar.gz"


@dataclass
class ImageSet:
    images: np.ndarray  # N x H x W x 3, uint8
    labels: np.ndarray  # N, int64
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.labels)


def cache_dir() -> Path:
    d = Path(os.environ.get("NOISECORR_CACHE", Path.home() / ".cache" / "noisecorr"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def default_photos() -> Path:
    """The photos in ../shared/data (Kodak24 and scikit-image's), for sizes other than CIFAR-10's."""
    return Path(os.environ.get("NOISECORR_PHOTOS", DEFAULT_CIFAR.parents[1] / "photos"))


def photo_crops(folder: str | Path, size: int, n: int, seed: int = 0):
    """``n`` random square crops of the photos under ``folder`` (side from ``size`` to the photo's shorter
    one), each resized to ``size`` pixels: (n, 3, size, size) in [-1, 1]. ValueError if there are none."""
    from PIL import Image

    paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not paths:
        raise ValueError(f"no photos (PNG or JPEG) under {folder}")
    photos = [Image.open(p).convert("RGB") for p in paths]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        im = photos[i % len(photos)]
        side = int(rng.integers(min(size, min(im.size)), min(im.size) + 1))
        x, y = int(rng.integers(0, im.width - side + 1)), int(rng.integers(0, im.height - side + 1))
        out.append(np.asarray(im.crop((x, y, x + side, y + side)).resize((size, size), Image.BICUBIC)))
    return to_tensor(np.stack(out))


def default_cifar10() -> Path:
    """The CIFAR-10 tarball in ../shared/data beside the checkout (None-safe: check .exists())."""
    return Path(os.environ.get("NOISECORR_CIFAR10", DEFAULT_CIFAR))


def _split_of(parts: tuple[str, ...], split: str | None) -> bool:
    return split is None or split in parts[:-2]


def _decode(data: bytes, size: int | None) -> np.ndarray:
    img = Image.open(io.BytesIO(data)).convert("RGB")
    if size is not None and img.size != (size, size):
        img = img.resize((size, size), Image.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


def _iter_files(path: Path, split: str | None):
    """Yield (relative parts, bytes) for every image under a folder or inside a tarball."""
    if path.is_dir():
        for f in sorted(path.rglob("*")):
            if f.suffix.lower() in IMAGE_SUFFIXES and _split_of(f.relative_to(path).parts, split):
                yield f.relative_to(path).parts, f.read_bytes()
    elif tarfile.is_tarfile(path):
        with tarfile.open(path) as tar:
            members = sorted((m for m in tar.getmembers() if m.isfile()), key=lambda m: m.name)
            for m in members:
                parts = tuple(Path(m.name).parts)
                if Path(m.name).suffix.lower() in IMAGE_SUFFIXES and _split_of(parts, split):
                    yield parts, tar.extractfile(m).read()
    else:
        raise FileNotFoundError(f"{path} is neither an image folder nor a tarball")


_hashed: dict = {}


def data_fingerprint(path: str | Path) -> str:
    """What names a data set in cache keys. A file (a tarball) by its content: a fresh copy of the same
    file (../shared is laid out anew for each session, with new times) still finds its cache; hashing
    the 170 MB CIFAR-10 tarball takes about a second, once per process. A folder by its path and time."""
    path = Path(path).resolve()
    st = path.stat()
    if path.is_file():
        seen = (str(path), st.st_size, st.st_mtime_ns)
        if seen not in _hashed:
            _hashed[seen] = f"sha1:{file_sha1(path)}"
        return _hashed[seen]
    return f"{path}|{st.st_mtime_ns}"


def load_images(path: str | Path, split: str | None = None, size: int | None = None,
                use_cache: bool = True) -> ImageSet:
    """Load every image under ``path`` (folder or tarball), optionally only one split.

    ``split`` keeps files that have a folder of that name above their class folder
    (e.g. ``train`` for ``CIFAR-10-images/train/cat/0001.jpg``).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no data at {path}")
    key = hashlib.sha1(f"{data_fingerprint(path)}|{split}|{size}".encode()).hexdigest()[:16]
    cached = cache_dir() / f"images-{key}.npz"
    if use_cache and cached.exists():
        z = np.load(cached, allow_pickle=False)
        return ImageSet(z["images"], z["labels"], [str(c) for c in z["class_names"]])

    from tqdm import tqdm

    arrays, names = [], []
    for parts, data in tqdm(_iter_files(path, split), desc=f"decoding {path.name}", unit="img"):
        arrays.append(_decode(data, size))
        names.append(parts[-2] if len(parts) >= 2 else "")
    if not arrays:
        raise ValueError(f"no images found in {path}" + (f" for split '{split}'" if split else ""))
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ValueError(f"images in {path} have different sizes {sorted(shapes)[:3]}; pass size=")
    class_names = sorted(set(names))
    labels = np.array([class_names.index(n) for n in names], dtype=np.int64)
    out = ImageSet(np.stack(arrays), labels, class_names)
    if use_cache:
        atomic_write(cached, lambda tmp: np.savez(tmp, images=out.images, labels=out.labels,
                                                  class_names=np.array(class_names)), suffix=".npz")
    return out


def to_tensor(images: np.ndarray):
    """uint8 N x H x W x 3 -> float tensor N x 3 x H x W in [-1, 1]."""
    import torch

    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
