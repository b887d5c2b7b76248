"""User images in every mode and condition become model input or one clear message."""
import io

import numpy as np
import pytest
from PIL import Image

from noisecorr_app.images import prepare_image


def _png(img, tmp_path, name="in.png", **kw):
    p = tmp_path / name
    img.save(p, **kw)
    return p


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK", "I;16", "1"])
def test_every_mode_becomes_rgb(tmp_path, mode):
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    img = rgb.convert(mode) if mode != "I;16" else Image.fromarray((np.arange(1600).reshape(40, 40) * 40).astype(np.uint16))
    fmt = {"CMYK": "in.jpg"}.get(mode, "in.png")
    x, note = prepare_image(_png(img, tmp_path, fmt), 32)
    assert x.shape == (1, 3, 32, 32) and -1 <= x.min() and x.max() <= 1
    assert "resized to 32x32" in note


def test_transparent_pixels_are_flattened_on_white(tmp_path):
    img = Image.new("RGBA", (32, 32), (255, 0, 0, 0))
    x, note = prepare_image(_png(img, tmp_path), 32)
    assert np.allclose(x.numpy(), 1.0) and "transparency" in note


def test_exif_rotation_is_applied(tmp_path):
    img = Image.new("RGB", (64, 32), "black")
    img.paste(Image.new("RGB", (32, 32), "white"), (0, 0))     # white left half
    exif = Image.Exif()
    exif[0x0112] = 6                                            # "rotate 90 CW to display"
    p = tmp_path / "rot.jpg"
    img.save(p, exif=exif.tobytes())
    x, note = prepare_image(p, 32)
    assert "centre-cropped from 32x64" in note                  # stored 64x32, displayed 32x64
    assert x.shape == (1, 3, 32, 32)


def test_non_square_is_centre_cropped(tmp_path):
    img = Image.new("RGB", (60, 30), "red")
    x, note = prepare_image(_png(img, tmp_path), 30)
    assert "centre-cropped from 60x30 to 30x30" in note and x.shape[-1] == 30


@pytest.mark.parametrize("content,msg", [
    (b"this is not an image", "not an image"),
    (None, "truncated"),
])
def test_unreadable_files(tmp_path, content, msg):
    p = tmp_path / "bad.png"
    if content is None:
        buf = io.BytesIO()
        noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(noise).save(buf, format="PNG")
        content = buf.getvalue()[: len(buf.getvalue()) // 2]
    p.write_bytes(content)
    with pytest.raises(ValueError, match=msg):
        prepare_image(p, 32)


def test_tiny_and_huge_images(tmp_path):
    with pytest.raises(ValueError, match="too small"):
        prepare_image(_png(Image.new("RGB", (1, 1)), tmp_path), 32)
    # a decompression bomb: a 10000x10000 PNG compresses to a few kB
    p = _png(Image.new("L", (10000, 10000)), tmp_path, "bomb.png", optimize=True)
    assert p.stat().st_size < 200_000
    with pytest.raises(ValueError, match="too large"):
        prepare_image(p, 32)


def test_missing_file(tmp_path):
    with pytest.raises(ValueError, match="no image file"):
        prepare_image(tmp_path / "nope.png", 32)


def test_arrays_and_16bit_arrays():
    a = (np.random.default_rng(1).random((32, 32, 3)) * 65535).astype(np.uint16)
    x, _ = prepare_image(a, 32)
    assert x.shape == (1, 3, 32, 32) and x.max() <= 1
