"""Numeric settings declared once (``Param``): name, plain-language label, range, default, help.

The CLI's flags, the app's sliders and every check of a value are made from these declarations, so
a value is refused with the same sentence wherever it comes from ("NAG weight must be a number from
0 to 20, got nan").
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, replace


def check_number(value, name: str, lo: float, hi: float, integer: bool = False):
    """``value`` as a finite number in [lo, hi] (a whole one if ``integer``), or ValueError naming it."""
    kind = "a whole number" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be {kind} from {lo:g} to {hi:g}, got {value!r}")
    if not math.isfinite(value) or not lo <= value <= hi or (integer and value != int(value)):
        raise ValueError(f"{name} must be {kind} from {lo:g} to {hi:g}, got {value!r}")
    return int(value) if integer else float(value)


@dataclass(frozen=True)
class Param:
    key: str                     # keyword in the library, JSON and noisecorr.json (``nag_scale``)
    label: str                   # plain words: the app's control, the CLI's help, every message
    lo: float
    hi: float
    default: float
    help: str = ""
    step: float = 0.1            # the app's slider step
    integer: bool = False
    control: str | None = None   # the app's control that edits it (methods may share one); None: CLI only
    tunable: bool = True         # a model may recommend its own value (noisecorr.json ``method_defaults``)
    hint: str = ""               # shown after the label on the app's control
    options: tuple = ()          # the app shows a choice of these values instead of a slider

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")

    def check(self, value):
        return check_number(value, self.label, self.lo, self.hi, self.integer)

    def parse(self, value):
        """A value as a form or an API sends it (a number or its text), checked; None: the default."""
        if value is None:
            return self.default
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{self.label} must be a number, got {value!r}") from None
        return self.check(number)

    def narrowed(self, hi: float) -> "Param":
        """The same setting with a lower ceiling (the public app bounds the cost of a request)."""
        return replace(self, hi=min(self.hi, hi))


@dataclass(frozen=True)
class Choice:
    """A setting with named options (the CLI's ``choices``)."""
    key: str
    label: str
    options: tuple[str, ...]
    default: str
    help: str = ""
    control = None
    tunable = False

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")

    def check(self, value):
        if value not in self.options:
            raise ValueError(f"{self.label} must be one of {', '.join(self.options)}, got {value!r}")
        return value

    def parse(self, value):
        return self.default if value is None else self.check(value)


STEPS = Param("steps", "Steps", 1, 1000, 20, "sampling steps", step=1, integer=True, tunable=False)

PARAMS: dict[str, Param | Choice] = {p.key: p for p in (
    Param("nag_scale", "Noise Awareness Guidance weight", 0, 20, 3.0, "how hard each step is pushed towards images whose noise matches "
          "what the model expects at that step (0 = off)", control="nag_weight"),
    Param("nag_est_scale", "Estimator guidance weight", 0, 20, 10.0, "weight of Noise Awareness Guidance driven by the "
          "noise-level estimator", control="nag_weight"),
    Param("cfg_scale", "Class guidance scale", 1, 10, 1.0, "classifier-free guidance (CFG) towards the chosen "
          "class: higher makes the class clearer and the images less varied (1 = off)",
          control="cfg_scale", hint="CFG; 1 = off; needs a class"),
    Param("es_lambda", "Epsilon-scaling factor", 0.98, 1.02, 1.005, "epsilon scaling divides the noise the "
          "network predicts by this factor (1 = off)", step=0.001, control="es_lambda", hint="lambda"),
    Param("ts_window", "Time-shift window", 0, 200, 20, "timesteps searched around the scheduled one", step=1,
          integer=True, tunable=False),
    Param("ts_cutoff", "Time-shift cutoff", 0, 999, 300, "no time shift at or below this timestep", step=1,
          integer=True, tunable=False),
    Param("eta", "DDIM's eta", 0, 1, 0.0, "DDIM's fresh noise per step (0 = deterministic)", tunable=False),
    Choice("nlc_mode", "NLC mode", ("reuse", "official"), "reuse", "reuse: 1 network call per step; official: "
           "re-evaluate the network at the corrected level"),
    Choice("level_reader", "noise-level reading", ("auto", "wavelet"), "auto", "what reads the noise level for the "
           "estimator's corrections: auto = the model's trained estimator where it has one, else the wavelet "
           "reading (nothing trained, any model); wavelet = the wavelet reading"),
)}


def check_values(values: dict) -> dict:
    """Each known setting checked against its declaration (None = not given, skipped); unknown keys pass."""
    return {k: (PARAMS[k].check(v) if k in PARAMS and v is not None else v) for k, v in values.items()}
