"""The app's input components: Gradio's own, with every refusal a one-line message that names the
input (e.g. "Steps must be a number from 1 to 200, got 0") instead of Gradio's unnamed ones
("Value 0 is less than minimum value 1.") or a "Could not preprocess input component at index 1"
with a traceback in the server log.

They are Gradio *templates* (``is_template``): the browser draws them exactly as the base
component, only ``preprocess`` (the server's reading of an API value) differs:

- ``Slider`` / ``Number``: NaN, infinities, text and out-of-range values are refused by name
  (Gradio lets NaN through its bounds check, and a NaN seed crashes its rounding).
- ``Radio`` / ``Dropdown``: a value outside the choices is refused by name, listing the choices.
- ``ImageFile``: hands the handler the uploaded file's path untouched. Gradio would open the file
  itself first: a non-image or a decompression bomb then fails inside Gradio with an unreadable
  message, and it converts RGBA (alpha dropped, not flattened on white) and 16-bit images (clipped)
  its own way. ``images.prepare_image`` reads every mode, EXIF rotation and bad file with messages.
  Paths are still Gradio's: only files uploaded to its cache reach the handler.
- ``ImageEditor``: an unreadable or oversized layer is a message, not a traceback.
"""
from __future__ import annotations

import math
import re

import gradio as gr

from .common import MAX_TEXT, shown


def input_name(component) -> str:
    """A short name for messages: ``short_name`` if set, else the label up to ' (' or ': '."""
    name = getattr(component, "short_name", None)
    if name:
        return name
    return re.split(r" \(|: ", str(component.label or "value"))[0]


class InputError(gr.Error):
    """gr.Error that prints as its sentence (Gradio quotes an Error's text where it uses ``str()``)."""

    def __str__(self):
        return str(self.message)


def refuse(component, text: str) -> gr.Error:
    return InputError(f"{input_name(component)} {text}", print_exception=False)


def _number(component, payload):
    """A finite number within the component's bounds, or gr.Error naming the input."""
    lo, hi = component.minimum, component.maximum
    if lo is not None and hi is not None:
        span = f"a number from {lo:g} to {hi:g}"
    elif lo is not None:
        span = f"a number of at least {lo:g}"
    elif hi is not None:
        span = f"a number of at most {hi:g}"
    else:
        span = "a finite number"
    if payload is None or isinstance(payload, bool):
        raise refuse(component, f"must be {span}, got {shown(payload)}")
    try:
        f = float(payload)
    except (TypeError, ValueError, OverflowError):       # OverflowError: an integer like 10**400
        raise refuse(component, f"must be {span}, got {shown(payload)}") from None
    if not math.isfinite(f) or (lo is not None and f < lo) or (hi is not None and f > hi):
        raise refuse(component, f"must be {span}, got {shown(payload)}")
    return payload if isinstance(payload, (int, float)) else f


class Slider(gr.Slider):
    is_template = True

    def preprocess(self, payload):
        return super().preprocess(_number(self, payload))


class Number(gr.Number):
    is_template = True

    def preprocess(self, payload):
        return super().preprocess(_number(self, payload))


def _choice(component, preprocess, payload):
    values = ", ".join(str(v) for _, v in component.choices)
    if isinstance(payload, str) and len(payload) > MAX_TEXT:
        raise refuse(component, f"must be one of {values}, got {shown(payload)}")
    try:
        return preprocess(payload)
    except gr.Error:
        raise refuse(component, f"must be one of {values}, got {shown(payload)}") from None


class Radio(gr.Radio):
    is_template = True

    def preprocess(self, payload):
        return _choice(self, super().preprocess, payload)


class Dropdown(gr.Dropdown):
    is_template = True

    def preprocess(self, payload):
        return _choice(self, super().preprocess, payload)


class ImageFile(gr.Image):
    """``type="filepath"`` only: the uploaded file's path, unopened (see the module's note)."""
    is_template = True

    def preprocess(self, payload):
        if payload is None:
            return None
        if payload.path is not None and not (payload.url or "").startswith("data:"):
            return str(payload.path)
        try:                                # an inline data: URL, decoded to a file by Gradio
            return super().preprocess(payload)
        except gr.Error:
            raise
        except Exception:
            raise refuse(self, "could not be read: the upload is not an image Pillow can read") from None


MAX_LAYERS = 4                     # the app's editor sends one stroke layer
MAX_LAYER_PIXELS = 1024 * 1024     # its canvas is 256x256


class ImageEditor(gr.ImageEditor):
    """Layers are counted and their sizes read from the files' headers before any is decoded: a drawing of
    many huge, highly compressible layers would otherwise take gigabytes."""
    is_template = True

    def preprocess(self, payload):
        from PIL import Image

        if payload is not None:
            layers = list(payload.layers or [])
            if len(layers) > MAX_LAYERS:
                raise refuse(self, f"has {len(layers)} layers; at most {MAX_LAYERS}")
            for item in [payload.background, payload.composite, *layers]:
                path = getattr(item, "path", None)
                if path is None:
                    continue
                try:
                    with Image.open(path) as img:
                        size = img.size
                except Exception:
                    raise refuse(self, "has a layer that is not an image Pillow can read, or it is truncated") from None
                if size[0] * size[1] > MAX_LAYER_PIXELS:
                    raise refuse(self, f"has a layer of {size[0]}x{size[1]} pixels; at most {MAX_LAYER_PIXELS:,}")
        try:
            return super().preprocess(payload)
        except gr.Error:
            raise
        except Exception:
            raise refuse(self, "has a layer that is not an image Pillow can read, or it is truncated") from None
