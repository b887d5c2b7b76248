"""The registry of generation methods: each one declared once (``MethodSpec``), with what a model
needs for it, the settings it reads (``settings.PARAMS``) and how it is built. The CLI's ``--method``
and flags, the app's correction list and controls, and the benchmark's method list all come from
``METHODS``; adding a correction is one ``register(MethodSpec(...))`` next to its core code.

A model may recommend its own settings (noisecorr.json ``method_defaults``, numbers or objects keyed
by step count) and its own starting run (``recommended``: method and steps).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

from .models.denoiser import as_denoiser
from .models.registry import extras_for, nlc_for
from .settings import PARAMS, check_values
from .sampling.corrections import NLC, Correction, EpsScaling, EstimatedLevel, NLCTable, SelfEstimate, TimeShift


@dataclass
class MethodSetup:
    correction: Correction
    options: dict = field(default_factory=dict)     # extra keyword arguments for sample() (guidance)


@dataclass(frozen=True)
class Need:
    """Something a model must have for a method: a test and, when it fails, the reason in plain words."""
    has: Callable[[object], bool]
    missing: str | Callable[[object], str]        # the reason, or a function of the model giving it


NEEDS = {
    "nlc": Need(lambda m: "nlc" in extras_for(m),
                lambda m: nlc_for(m)[1] or "no trained NLC weights for this model yet (`train nlc` makes them)"),
    "nlc-lut": Need(lambda m: "nlc-lut" in extras_for(m), "no NLC lookup table for this model yet"),
    "estimator": Need(lambda m: "estimator" in extras_for(m) or _wavelet_reads(m),
                      "no noise-level reading for this model (the wavelet reading needs even image sides of 8 pixels "
                      "or more)"),
    "null-noise": Need(lambda m: bool(m.supports_null_noise), "the model was not trained with noise-condition dropout"),
    "schedule": Need(lambda m: m.schedule is not None, "needs the model's discrete training schedule"),
}


@dataclass
class Run:
    """What a method is built for: the model, the run's steps and sampler, and its settings resolved."""
    model: object
    steps: int | None
    sampler: str
    values: dict

    def extra(self, kind: str, loader):
        return cached_extra(kind, extras_for(self.model)[kind], self.model, loader)

    def estimator(self):
        """The noise-level reading the setting ``level_reader`` names (the model's by default)."""
        if self.values.get("level_reader") != "wavelet":
            return level_reader_for(self.model)
        if not _wavelet_reads(self.model):
            raise ValueError("the wavelet reading needs even image sides of 8 pixels or more")
        return _wavelet_reader(self.model)


@dataclass(frozen=True)
class MethodSpec:
    name: str                                  # the short code (CLI, API, JSON)
    title: str                                 # what it is, in plain words
    build: Callable[[Run], MethodSetup]
    params: tuple[str, ...] = ()               # settings it reads (keys of settings.PARAMS)
    needs: tuple[str, ...] = ()                # keys of NEEDS
    exclusive: bool = False                    # reads the shared network's features through a hook
    in_restoration: bool = False               # can sit inside a restoration's projection loop
    nfe: float = 1.0                           # network evaluations per image and step (guidance batches 2)

    def available(self, model) -> bool:
        return all(NEEDS[n].has(model) for n in self.needs)

    def why_unavailable(self, model) -> str | None:
        missing = [NEEDS[n].missing(model) if callable(NEEDS[n].missing) else NEEDS[n].missing
                   for n in self.needs if not NEEDS[n].has(model)]
        return "; ".join(missing) or None


METHODS: dict[str, MethodSpec] = {}      # in the order the app prefers when a model recommends none


def register(spec: MethodSpec) -> MethodSpec:
    unknown = [p for p in spec.params if p not in PARAMS] + [n for n in spec.needs if n not in NEEDS]
    if unknown:
        raise ValueError(f"method {spec.name!r} names undeclared settings or needs: {', '.join(unknown)}")
    METHODS[spec.name] = spec
    return spec


def _nlc(run):
    from .extras.nlc import load_level_net

    net = run.extra("nlc", load_level_net)
    return MethodSetup(NLC(net, mode=run.values["nlc_mode"], normalize=run.values.get("nlc_normalize", False)))


def _nlc_lut(run):
    from .extras.nlc_table import NLCLookupTable

    return MethodSetup(NLCTable(run.extra("nlc-lut", lambda p, device: NLCLookupTable.load(p)), sampler=run.sampler))


def _nag(run):
    return {"nag_scale": run.values["nag_scale"]}


for _spec in (
    MethodSpec("none", "baseline sampler", lambda run: MethodSetup(Correction()), in_restoration=True),
    MethodSpec("nag+nlc-est", "Noise Awareness Guidance, then the last step at each image's own noise level",
               lambda run: MethodSetup(EstimatedLevel(run.estimator()), _nag(run)), ("nag_scale", "level_reader"),
               ("estimator", "null-noise"), nfe=2.0),
    MethodSpec("nag", "Noise Awareness Guidance, classifier-free (model trained with noise-condition dropout)",
               lambda run: MethodSetup(Correction(), _nag(run)), ("nag_scale",), ("null-noise",), nfe=2.0),
    MethodSpec("nlc", "Noise Level Correction (trained r_theta)", _nlc, ("nlc_mode",), ("nlc",), exclusive=True,
               in_restoration=True),
    MethodSpec("nlc-est", "the last step at each image's own noise level, read off the image",
               lambda run: MethodSetup(EstimatedLevel(run.estimator())), ("level_reader",), ("estimator",)),
    MethodSpec("nag-est", "guidance towards the scheduled noise level, read off the image",
               lambda run: MethodSetup(Correction(), {"guide": run.estimator(),
                                                      "nag_est_scale": run.values["nag_est_scale"]}),
               ("nag_est_scale", "level_reader"), ("estimator",)),
    MethodSpec("es", "epsilon scaling (training-free)", lambda run: MethodSetup(EpsScaling(run.values["es_lambda"])),
               ("es_lambda",), in_restoration=True),
    MethodSpec("self", "self-estimated level ||eps||/sqrt(n) (training-free)", lambda run: MethodSetup(SelfEstimate()),
               in_restoration=True),
    MethodSpec("ts", "time-shift sampler (training-free)",
               lambda run: MethodSetup(TimeShift(run.values["ts_window"], run.values["ts_cutoff"])),
               ("ts_window", "ts_cutoff"), ("schedule",), in_restoration=True),
    MethodSpec("nlc-lut", "NLC lookup table (no network at sampling time)", _nlc_lut, (), ("nlc-lut",)),
):
    register(_spec)


def spec(method: str) -> MethodSpec:
    if method not in METHODS:
        raise ValueError(f"unknown method '{method}' (choose from {', '.join(METHODS)})")
    return METHODS[method]


def method_params() -> list[str]:
    """The settings the registered methods read, in declaration order, and the CFG scale (any run's)."""
    used = {k for s in METHODS.values() for k in s.params} | {"cfg_scale"}
    return [k for k in PARAMS if k in used]


def available(model) -> dict[str, bool]:
    return {name: s.available(model) for name, s in METHODS.items()}


# -- a model's own recommendations ------------------------------------------------------------------
REFERENCE_STEPS = 20      # whose recommendation applies when a run's steps are unknown
FALLBACK_STEPS = 20       # the step count of a model that recommends none
DEFAULTS = {k: p.default for k, p in PARAMS.items()}   # the built-in settings' (a registered one: declared())


def declared() -> dict:
    """Every declared setting's default, including any registered since import."""
    return {k: p.default for k, p in PARAMS.items()}

# What restoration asks of setup(): NLC with its direction normalised to sqrt(n), as the paper does. In
# generation the network's own eps measured better on our model, in restoration the normalised one
# (docs/noise-shift.md).
RESTORATION_PARAMS = {"nlc_normalize": True}


def for_steps(value, steps: int | None):
    """A recommendation is a number, or an object keyed by step count (``{"10": 1.5, "20": 0.5}``) when the
    best weight depends on the steps: the entry nearest ``steps`` on a log scale (ties: the larger count),
    and for ``steps`` None the one nearest REFERENCE_STEPS."""
    if not isinstance(value, dict):
        return value
    target = math.log(steps if steps else REFERENCE_STEPS)
    return min(value.items(), key=lambda kv: (abs(math.log(int(kv[0])) - target), -int(kv[0])))[1]


def check_step_keyed(value, param) -> None:
    """Raise ValueError unless ``value`` is a valid recommendation for ``param``: a number in its range, or
    an object keyed by step counts (``for_steps``) whose values all are."""
    table = value if isinstance(value, dict) else {str(REFERENCE_STEPS): value}
    if not table or not all(str(k).isdigit() and int(k) >= 1 for k in table):
        raise ValueError(f"{param.label} must be a number or an object keyed by step counts "
                         f"(e.g. {{\"10\": 1.5, \"20\": 0.5}}), got {value!r}")
    for v in table.values():
        param.check(v)


def _model_file(model, key: str):
    model = as_denoiser(model)
    info = model.info
    where = f"{model.name}: noisecorr.json"        # the name a user gave, never a server's cache path
    value = info.get(key) or {}
    if not isinstance(value, dict):
        raise ValueError(f"{key} in {where} must be an object")
    return value, where


def recommendations(model) -> dict:
    """DEFAULTS with the model's own recommendations (``method_defaults`` in its noisecorr.json) on top,
    as written there: numbers, or step-keyed objects (``for_steps``). A recommendation outside the
    settings' ranges is an error naming the file, not a silent fallback."""
    own, where = _model_file(model, "method_defaults")
    own = {k: v for k, v in own.items() if k in PARAMS and PARAMS[k].tunable}
    for key, value in own.items():
        try:
            check_step_keyed(value, PARAMS[key])
        except ValueError as e:
            raise ValueError(f"{where}, method_defaults: {key}: {e}") from None
    return {**declared(), **own}


def defaults_for(model, steps: int | None = None) -> dict:
    """The settings for a run of ``steps`` steps on ``model``: its recommendations, resolved."""
    return {k: for_steps(v, steps) for k, v in recommendations(model).items()}


def recommended_values(model, key: str) -> set:
    """Every value the model recommends for ``key`` (any step count), and the declared default: the app
    moves a slider that still shows one of these when the steps change, and leaves a user's own alone."""
    own = recommendations(model)[key]
    return {float(v) for v in (own.values() if isinstance(own, dict) else [own])} | {float(PARAMS[key].default)}


def recommended_run(model) -> tuple[str | None, int]:
    """(correction, steps) the app and the CLI start at: the model's measured choice (noisecorr.json
    ``recommended``: {"method", "steps"}), where its benchmark shows the correction winning. A model
    without one: no correction preferred (the caller's order applies) and FALLBACK_STEPS."""
    rec, where = _model_file(model, "recommended")
    method, steps = rec.get("method"), rec.get("steps", FALLBACK_STEPS)
    if method is not None and method not in METHODS:
        raise ValueError(f"recommended.method in {where} must be one of {', '.join(METHODS)}, got {method!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 1000:
        raise ValueError(f"recommended.steps in {where} must be a whole number from 1 to 1000, got {steps!r}")
    if method is not None and not METHODS[method].available(model):
        method = None
    return method, steps


# -- trained extras, loaded once per model ----------------------------------------------------------
MAX_CACHED_EXTRAS = 8     # a server offering Hub models must not keep every one it ever loaded
_extras: OrderedDict = OrderedDict()


def cached_extra(kind: str, path, model, loader):
    """``loader(path, device)`` once per (kind, folder, device); the least recently used beyond
    MAX_CACHED_EXTRAS are dropped."""
    key = (kind, str(path), str(model.device))
    if key in _extras:
        _extras.move_to_end(key)
    else:
        _extras[key] = loader(path, device=model.device)
        while len(_extras) > MAX_CACHED_EXTRAS:
            _extras.popitem(last=False)
    return _extras[key]


def level_reader_for(model):
    """What reads the noise level of a model's states for the per-step plots and leftover-noise figures: its
    trained noise-level estimator, else the wavelet reading (``extras/wavelet.py``: any image domain and size,
    nothing trained), else None. The corrections that read or follow the level (nlc-est, nag-est) use it too."""
    found = load_estimator_for(model)
    if found is None and _wavelet_reads(model):
        found = _wavelet_reader(model)
    return found


def _wavelet_reads(model) -> bool:
    from .extras.wavelet import usable

    return usable(as_denoiser(model).sample_shape)


def _wavelet_reader(model):
    from .extras.wavelet import WaveletLevel

    return WaveletLevel(as_denoiser(model).sample_shape[-1])


def load_estimator_for(model):
    from .extras.estimator import load_estimator

    path = extras_for(model).get("estimator")
    return None if path is None else cached_extra("estimator", path, model, load_estimator)


def setup(method: str, model, steps: int | None = None, sampler: str = "ddim", **params) -> MethodSetup:
    """The correction and sample() options for ``method`` on ``model`` for a run of ``steps`` steps with
    ``sampler`` (the steps pick the model's step-dependent recommendations). ``params`` override the
    settings (None: not given); ValueError for a value out of range or a model without what it needs."""
    s = spec(method)
    if not s.available(model):
        raise ValueError(f"{as_denoiser(model).name} cannot run '{method}' ({s.title}): "
                         f"{s.why_unavailable(model)}")
    given = check_values({k: v for k, v in params.items() if v is not None})
    return s.build(Run(model, steps, sampler, {**defaults_for(model, steps), **given}))


# -- inside restoration ---------------------------------------------------------------------------
def restoration_available(model) -> dict[str, bool]:
    """Per restoration method: whether the model has what its inner correction needs."""
    from .restoration.tasks import RESTORATION_METHODS

    return {name: m.inner is None or METHODS[m.inner].available(model) for name, m in RESTORATION_METHODS.items()}


def restoration_settings(model, method: str, steps: int | None = None, **overrides) -> dict:
    """A restoration method's free settings (``RestorationMethod.knobs``) for ``model`` and a budget of
    ``steps`` network evaluations: its validated choice (noisecorr.json ``restoration``: {method:
    {"eta": ..., ...}}, chosen on train images; each a number, or an object keyed by step count as
    ``for_steps`` reads it), else the method's declared values; ``overrides`` that are not None on top
    (a user's own). A value out of range is an error naming the file."""
    from .restoration.tasks import METHOD_KNOBS, RESTORATION_METHODS

    out = RESTORATION_METHODS[method].knobs()
    own, where = _model_file(model, "restoration")
    chosen = own.get(method) or {}
    if not isinstance(chosen, dict):
        raise ValueError(f"restoration.{method} in {where} must be an object")
    for param in METHOD_KNOBS:
        key = param.key
        if key in chosen and key in out:
            try:
                check_step_keyed(chosen[key], param)
            except ValueError as e:
                raise ValueError(f"{where}, restoration.{method}: {e}") from None
            out[key] = for_steps(chosen[key], steps)
    return {**out, **{k: v for k, v in overrides.items() if v is not None}}


def restoration_correction(method: str, model, steps: int | None = None, correction: str = "none") -> Correction:
    """The correction inside a restoration method's loop: its own, else ``correction`` (one marked
    ``in_restoration``; for iterproj-nlc a level correction such as NLC replaces its fixed reading), with
    restoration's settings (RESTORATION_PARAMS)."""
    from .restoration.tasks import RESTORATION_METHODS

    if method not in RESTORATION_METHODS:
        raise ValueError(f"unknown restoration method {method!r} (choose from {', '.join(RESTORATION_METHODS)})")
    return setup(RESTORATION_METHODS[method].inner or correction, model, steps=steps, **RESTORATION_PARAMS).correction
