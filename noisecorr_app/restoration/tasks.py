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
# The app starts its comparisons with noise: real measurements carry some, and it is where the methods
# differ (without it, at their validated fresh noise, DDNM, DDRM and DiffPIR take the same steps;
# docs/restoration.md). The CLI restores what it is given (sigma_y 0 unless told).
SIGMA_Y_SHOWN = 0.05
RESTORE_STEPS = 20       # network evaluations per restoration, the app's and `restore`'s start (the benchmarks: their own)
RESTORE_ETA = Param("eta", "Fresh noise eta", 0, 1, 0.85, "the method's fresh-noise share per step: DDIM's eta in "
                    "DDNM's form (DDNM, IterProj), DDRM's eta, DiffPIR's zeta", tunable=False)
PROX_WEIGHT = Param("prox_weight", "DiffPIR lambda", 0.01, 1000, 7.0, "DiffPIR's data-term weight (rho = lambda "
                    "sigma_y^2 / sigma^2)", tunable=False)
LEVEL_RATIO = Param("level_ratio", "IterProj-NLC level r", 0, 1, 0.3, "IterProj-NLC: in the last steps (sigma "
                    "below level_below) the network is told the level sigma (1 + r), the noise the projected estimate "
                    "leaves on top of the schedule's", step=0.05, tunable=False)
LEVEL_BELOW = Param("level_below", "IterProj-NLC reading below sigma", 0.05, 100, 2.0, "IterProj-NLC: the level "
                    "reading acts on the steps at or below this noise level (the model's [-1, 1] units); a long run "
                    "has more steps there, each feeding the reading's caution forward", tunable=False)
DAMPED_FROM = 1.0   # the damping acts on the components whose noise crossover sigma_y / s lies above this level:
                    # damped from early in the run, they would feed the same measurement noise back at many steps;
                    # later ones are weighed as DDNM+ does (measured: docs/restoration.md)
DAMPING = Param("damping", "IterProj-NLC damping p", 1, 3, 1.0, "IterProj-NLC with a noisy measurement: the "
                "weight on the measurement along singular value s is min(1, sigma_next s / sigma_y)^p where sigma_y / s "
                f"is above sigma {DAMPED_FROM:g} (damped from early on); above 1 it trusts the measurement less where it "
                "knows less than the current level (1: DDNM+'s own)", step=0.25, tunable=False)
# a method's free settings, chosen per model
METHOD_KNOBS = (RESTORE_ETA, PROX_WEIGHT, LEVEL_RATIO, LEVEL_BELOW, DAMPING)


@dataclass(frozen=True)
class TaskSpec:
    name: str                        # the library's and CLI's code (an ``operators.TASKS`` key)
    title: str
    description: str                 # one line for the user
    params: tuple = ()               # its own settings (Param / Choice)
    operator_keys: tuple = ()        # make_operator's keyword for each param
    tab: str | None = None           # the app's tab and API name, if it has one
    benchmark: str = "default"       # in ``evaluate restoration``: "default", "optional" or "no"
    shown_as: str = "the measurement mapped back to an image"   # what the "degraded input" picture is

    def operator_settings(self, values: dict) -> dict:
        """make_operator keywords from the task's settings (declared defaults for those not given)."""
        return {op_key: values.get(p.key, p.default) for p, op_key in zip(self.params, self.operator_keys)}


SR_FACTOR = Param("factor", "Factor", 2, 8, 4, "block-average factor", step=1, integer=True, tunable=False,
                  hint="block average", options=(2, 4, 8))
TASKS: dict[str, TaskSpec] = {t.name: t for t in (
    TaskSpec("sr", "Super-resolution", "Recover the image from its block averages.", (SR_FACTOR,), ("factor",),
             tab="super_resolution", benchmark="no",
             shown_as="the measurement: each block's average, repeated over its pixels"),
    TaskSpec("sr2", "Super-resolution x2", "Recover the image from its 2x2 block averages.", benchmark="optional"),
    TaskSpec("sr4", "Super-resolution x4", "Recover the image from its 4x4 block averages."),
    TaskSpec("inpaint", "Inpainting", "Fill in the hidden pixels: draw them with the brush or pick a preset mask.",
             (Choice("mask", "Mask", ("box", "random", "half", "drawn"), "box",
                     "which pixels are hidden: a preset, or 'drawn' (paint on the image below)"),), ("mask",), tab="inpainting",
             shown_as="the kept pixels, the hidden ones grey"),
    TaskSpec("deblur", "Deblur", "Undo a Gaussian blur.",
             (Param("blur_sigma", "Blur sigma", 0.5, 5, 3.0, "Gaussian blur width in pixels", step=0.1,
                    tunable=False, hint="pixels"),), ("sigma",), tab="deblur", shown_as="the blurred image"),
    TaskSpec("colorize", "Colorize", "Recover the colours from the grey image.", tab="colorize",
             shown_as="the grey image (the mean of the three colours)"),
    TaskSpec("cs", "Compressive sensing", "Recover the image from a random subset of its Walsh-Hadamard coefficients.",
             (Param("cs_ratio", "Measured fraction of coefficients", 0.05, 1, 0.25, "share of the Walsh-Hadamard "
                    "coefficients measured", step=0.05, tunable=False),), ("ratio",), tab="compressive_sensing",
             shown_as="the image rebuilt from the measured coefficients alone (the others set to zero)"),
)}
TABS = {t.tab: t for t in TASKS.values() if t.tab}


@dataclass(frozen=True)
class RestorationMethod:
    name: str
    title: str
    rule: str = "ddnm"               # the data step (``restoration.methods.Projected``)
    iterproj: bool = False           # IterProj's loop: its grids and tail, and the most consistent x0 kept
    inner: str | None = None         # the generation method run inside the loop (methods.METHODS)
    eta: float = 0.85                # the method's fresh-noise knob (DiffPIR: zeta), its paper's value
    prox_weight: float | None = None  # DiffPIR's lambda
    level_ratio: float | None = None  # a level correction reading sigma (1 + r) in the last steps (``FixedLevel``)
    level_below: float | None = None  # ... at sigma <= level_below
    damping: float | None = None      # the exponent p of DDNM+'s damping (``Projected``)

    def knobs(self) -> dict:
        """The method's free settings (METHOD_KNOBS it declares) at their declared values."""
        return {p.key: getattr(self, p.key) for p in METHOD_KNOBS if getattr(self, p.key) is not None}


RESTORATION_METHODS: dict[str, RestorationMethod] = {m.name: m for m in (
    RestorationMethod("ddnm", "DDNM"),
    RestorationMethod("iterproj", "IterProj", iterproj=True),
    RestorationMethod("iterproj-nlc", "IterProj-NLC", iterproj=True, level_ratio=LEVEL_RATIO.default,
                      level_below=LEVEL_BELOW.default, damping=DAMPING.default),
    RestorationMethod("ddrm", "DDRM", rule="ddrm"),
    RestorationMethod("diffpir", "DiffPIR", rule="diffpir", eta=0.3, prox_weight=7.0),
)}
