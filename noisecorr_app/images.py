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


CAPTION_HEIGHT = 18


def grid(images: list[Image.Image], cols: int | None = None, scale: int = 1,
         captions: list[tuple[str, str]] | None = None) -> Image.Image:
    """Tile images into one; ``scale`` upsizes with nearest neighbour so pixels stay honest.
    ``captions``: one (text, colour) per image, written in a strip under its tile (the image's own
    pixels are never drawn on)."""
    from PIL import ImageDraw, ImageFont

    n = len(images)
    cols = cols or min(n, 8)
    rows = (n + cols - 1) // cols
    w, h = images[0].size[0] * scale, images[0].size[1] * scale
    strip = CAPTION_HEIGHT if captions else 0
    out = Image.new("RGB", (cols * w, rows * (h + strip)), "white")
    font = ImageFont.load_default(size=12) if captions else None
    draw = ImageDraw.Draw(out)
    for i, im in enumerate(images):
        x, y = (i % cols) * w, (i // cols) * (h + strip)
        out.paste(im.convert("RGB").resize((w, h), Image.NEAREST) if scale > 1 else im.convert("RGB"), (x, y))
        if captions:
            text, colour = captions[i]
            draw.text((x + 3, y + h + 2), text, fill=colour, font=font)
    return out


MAX_PIXELS = 40_000_000       # refuse decompression bombs before decoding (a 10000x10000 image is 100M)
# Pillow itself then refuses anything over 2 * MAX_PIXELS at open, wherever in this process a file is
# opened (Gradio's own readers included): a small PNG can claim a size that would not fit in memory.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


def open_image(source, what: str = "image", side: int | None = None) -> Image.Image:
    """Open and decode an image file, or ValueError with a message for the user: a missing file,
    not an image, truncated, or over ``MAX_PIXELS`` (checked on the header, before decoding).
    ``what`` names the file in the messages ("image", "mask"). ``side``: the picture is only needed
    about this large: a JPEG is decoded at a reduced scale, and any image is shrunk by an integer
    factor as soon as it is decoded, before a mode conversion multiplies its memory."""
    from PIL import UnidentifiedImageError

    unreadable = f"the {'' if what == 'image' else what + ' '}file is not an image Pillow can read, or it is truncated"
    too_large = f"the {what} is too large (over {MAX_PIXELS:,} pixels)"
    try:
        img = Image.open(source)
    except FileNotFoundError:
        raise ValueError(f"no {what} file at {source}") from None
    except Image.DecompressionBombError:
        raise ValueError(too_large) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise ValueError(unreadable) from None
    if img.width * img.height > MAX_PIXELS:
        raise ValueError(f"the {what} is too large ({img.width}x{img.height}; at most {MAX_PIXELS:,} pixels)")
    original = img.size
    try:
        if side is not None and img.format == "JPEG":
            img.draft(img.mode, (4 * side, 4 * side))
        img.load()
        factor = min(img.size) // (4 * side) if side is not None else 1
        if factor >= 2:
            exif = img.getexif()
            img = _shrink(img, factor)
            img.info["exif"], img.info["original_size"] = exif.tobytes(), original
    except Image.DecompressionBombError:
        raise ValueError(too_large) from None
    except (OSError, SyntaxError, ValueError):
        raise ValueError(unreadable) from None
    img.info.setdefault("original_size", original)
    return img


def _shrink(img: Image.Image, factor: int) -> Image.Image:
    """``factor`` times smaller by block averaging, in a mode Pillow can average: transparency
    premultiplied (hidden colours must not bleed in), palettes expanded, 16-bit as 32-bit integers."""
    if img.mode in ("1", "P", "PA"):
        img = img.convert("RGBA" if img.mode == "PA" or "transparency" in img.info else "L" if img.mode == "1" else "RGB")
    if img.mode.startswith("I;16"):
        img = img.convert("I")
    if img.mode == "RGBA":
        return img.convert("RGBa").reduce(factor).convert("RGBA")
    return img.reduce(factor)


def prepare_image(source, size: int) -> tuple[torch.Tensor, str | None]:
    """A user's image (path, PIL image or array) -> (1, 3, size, size) in [-1, 1], plus a note saying
    what was done to it (None if nothing). EXIF rotation is applied, any mode (grayscale, palette,
    RGBA on white, 16-bit) becomes RGB, and a non-square image is centre-cropped before resizing."""
    from PIL import ImageOps

    if isinstance(source, np.ndarray):
        arr = source
        if arr.dtype != np.uint8:
            hi = 65535.0 if arr.max() > 255 else (1.0 if arr.max() <= 1.0 else 255.0)
            arr = (np.clip(arr / hi, 0, 1) * 255).round().astype(np.uint8)
        img = Image.fromarray(arr)
    elif isinstance(source, Image.Image):
        img = source
    else:
        img = open_image(source, side=size)
    original = img.info.get("original_size", img.size)
    if img.width * img.height > MAX_PIXELS:
        raise ValueError(f"the image is too large ({img.width}x{img.height}; at most {MAX_PIXELS:,} pixels)")
    if img.width < 2 or img.height < 2:
        raise ValueError(f"the image is too small ({img.width}x{img.height})")
    notes = []
    ratio = original[0] / img.width            # the picture may have been shrunk while it was decoded
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray((np.clip(arr / max(arr.max(), 1), 0, 1) * 255).astype(np.uint8))
        notes.append("16-bit image scaled to 8 bits")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
        notes.append("transparency flattened on white")
    img = img.convert("RGB")
    w, h = img.size
    if w != h:
        s = min(w, h)
        img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
        ow, oh, os_ = (round(v * ratio) for v in (w, h, s))
        notes.append(f"centre-cropped from {ow}x{oh} to {os_}x{os_}")
    if img.size != (size, size):
        img = img.resize((size, size), Image.BICUBIC if img.width < size else Image.LANCZOS)
        notes.append(f"resized to {size}x{size}, the model's resolution")
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div(127.5).sub(1)
    return x.unsqueeze(0), ("; ".join(notes) if notes else None)
