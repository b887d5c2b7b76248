"""The registry of restoration tasks and methods: each declared once, with its settings (``Param``),
so the app's tabs, the ``restore`` command and the restoration benchmark are made from the same
declarations. A task builds its operator (``operators.make_operator``); a method names the sampling
correction it runs inside its projection loop, if any.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..settings import Choice, Param

SIGMA_Y = Param("sigma_y", "Measurement noise sigma_y", 0, 0.2, 0.0, "noise std added to the measurement, in "
                "[0, 1] pixel units", step=0.01, tunable=False, hint="[0, 1] pixel units")
RESTORE_ETA = Param("eta", "DDIM's eta", 0, 1, 0.85, "fresh noise per step of every method (0.85: DDNM's and "
                    "the official IterProj's)", tunable=False)


@dataclass(frozen=True)
class TaskSpec:
    name: str                        # the library's and CLI's code (an ``operators.TASKS`` key)
    title: str
    description: str                 # one line for the user
    params: tuple = ()               # its own settings (Param / Choice)
    operator_keys: tuple = ()        # make_operator's keyword for each param
    tab: str | None = None           # the app's tab and API name, if it has one
    benchmark: str = "default"       # in ``evaluate restoration``: "default", "optional" or "no"

    def operator_settings(self, values: dict) -> dict:
        """make_operator keywords from the task's settings (declared defaults for those not given)."""
        return {op_key: values.get(p.key, p.default) for p, op_key in zip(self.params, self.operator_keys)}


SR_FACTOR = Param("factor", "Factor", 2, 8, 4, "block-average factor", step=1, integer=True, tunable=False,
                  hint="block average", options=(2, 4, 8))
TASKS: dict[str, TaskSpec] = {t.name: t for t in (
    TaskSpec("sr", "Super-resolution", "Recover the image from its block averages.", (SR_FACTOR,), ("factor",),
             tab="super_resolution", benchmark="no"),
    TaskSpec("sr2", "Super-resolution x2", "Recover the image from its 2x2 block averages.", benchmark="optional"),
    TaskSpec("sr4", "Super-resolution x4", "Recover the image from its 4x4 block averages."),
    TaskSpec("inpaint", "Inpainting", "Fill in the hidden pixels: draw them with the brush or pick a preset mask.",
             (Choice("mask", "Mask", ("box", "random", "half", "drawn"), "box",
                     "a preset, or 'drawn' (paint on the image)"),), ("mask",), tab="inpainting"),
    TaskSpec("deblur", "Deblur", "Undo a Gaussian blur.",
             (Param("blur_sigma", "Blur sigma", 0.5, 5, 3.0, "Gaussian blur width in pixels", step=0.1,
                    tunable=False, hint="pixels"),), ("sigma",), tab="deblur"),
    TaskSpec("colorize", "Colorize", "Recover the colours from the grey image.", tab="colorize"),
    TaskSpec("cs", "Compressive sensing", "Recover the image from a random subset of its Walsh-Hadamard coefficients.",
             (Param("cs_ratio", "Measured fraction of coefficients", 0.05, 1, 0.25, "share of the Walsh-Hadamard "
                    "coefficients measured", step=0.05, tunable=False),), ("ratio",), tab="compressive_sensing"),
)}
TABS = {t.tab: t for t in TASKS.values() if t.tab}


@dataclass(frozen=True)
class RestorationMethod:
    name: str
    title: str
    inner: str | None = None         # the generation method run inside the loop (methods.METHODS)


RESTORATION_METHODS: dict[str, RestorationMethod] = {m.name: m for m in (
    RestorationMethod("ddnm", "DDNM"),
    RestorationMethod("iterproj", "IterProj"),
    RestorationMethod("iterproj-nlc", "IterProj-NLC", inner="nlc"),
)}
