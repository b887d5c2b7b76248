"""Tensors <-> PIL images. Model space is [-1, 1]; files and the UI are 8-bit RGB."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] -> (B, H, W, C) uint8."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    arr = to_uint8(images)
    return [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in arr]


def grid(images: list[Image.Image], cols: int | None = None, scale: int = 1) -> Image.Image:
    """Tile images into one; ``scale`` upsizes with nearest neighbour so pixels stay honest."""
    n = len(images)
    cols = cols or min(n, 8)
    rows = (n + cols - 1) // cols
    w, h = images[0].size
    out = Image.new("RGB", (cols * w, rows * h), "white")
    for i, im in enumerate(images):
        out.paste(im.convert("RGB"), ((i % cols) * w, (i // cols) * h))
    return out.resize((out.width * scale, out.height * scale), Image.NEAREST) if scale > 1 else out
