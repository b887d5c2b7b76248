"""Method names -> correction objects and sampling options, for the CLI, the app and the benchmark.

One table: ``none`` (baseline), ``nlc`` (r_theta), ``nlc-lut`` (its lookup table), ``nag``
(classifier-free, needs noise-condition dropout), ``nag-est`` (estimator-based), ``es`` (epsilon
scaling), ``ts`` (time shift), ``self`` (the eps-norm self-estimate). Trained ones need their
weights (``models.registry.extras_for``); the others work for every model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from .models.registry import extras_for
from .sampling.corrections import NLC, Correction, EpsScaling, EstimatedLevel, NLCTable, SelfEstimate, TimeShift

METHODS = {
    "none": "baseline sampler",
    "nlc": "Noise Level Correction (trained r_theta)",
    "nlc-lut": "NLC lookup table (no network at sampling time)",
    "nlc-est": "Noise Level Correction read by the noise-level estimator (on the final step)",
    "nag+nlc-est": "Noise Awareness Guidance, then the estimator's level correction on the final step",
    "nag": "Noise Awareness Guidance, classifier-free (model trained with noise-condition dropout)",
    "nag-est": "Noise Awareness Guidance with the noise-level estimator",
    "es": "epsilon scaling (training-free)",
    "ts": "time-shift sampler (training-free)",
    "self": "self-estimated level ||eps||/sqrt(n) (training-free)",
}
DEFAULTS = {"nag_scale": 3.0, "nag_est_scale": 10.0, "es_lambda": 1.005, "ts_window": 20, "ts_cutoff": 300,
            "cfg_scale": 1.0}
# The numeric settings a model folder may recommend for itself (noisecorr.json "method_defaults"):
# the papers' values suit models trained to convergence, not necessarily ours (NAG's w = 3 made the
# embedded model worse; its measured best is in its noisecorr.json and its card).
# A value may depend on the step count (NAG's best weight falls as steps rise): see for_steps.
TUNABLE = ("nag_scale", "nag_est_scale", "es_lambda", "cfg_scale")   # cfg_scale: the app's start when a class is picked
REFERENCE_STEPS = 20      # the app's default step count: whose recommendation applies when steps are unknown


@dataclass
class MethodSetup:
    correction: Correction
    options: dict = field(default_factory=dict)     # extra keyword arguments for sample()


def available(model) -> dict[str, bool]:
    ex = extras_for(model)
    return {"none": True, "nlc": "nlc" in ex, "nlc-lut": "nlc-lut" in ex,
            "nag": bool(getattr(model, "supports_null_noise", False)), "nag-est": "estimator" in ex, "nlc-est": "estimator" in ex,
            "nag+nlc-est": "estimator" in ex and bool(getattr(model, "supports_null_noise", False)),
            "es": True, "ts": hasattr(model, "alphas_cumprod"), "self": True}


def check_params(nag_scale=None, nag_est_scale=None, es_lambda=None, cfg_scale=None, eta=None):
    """The numeric settings of the methods (None = default), checked up front so that a NaN, an
    infinity or an out-of-range value is refused before a model, a classifier or reference features
    are loaded. The same limits as the code that uses them (Guided, EstimatorGuided, EpsScaling, DDIM)."""
    import math

    def finite(v):
        return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)

    for name, v in (("nag_scale", nag_scale), ("nag_est_scale", nag_est_scale), ("cfg_scale", cfg_scale)):
        if v is not None and not (finite(v) and abs(v) < 100):
            raise ValueError(f"{name} must be a finite number below 100, got {v}")
    if es_lambda is not None and not (finite(es_lambda) and 0.5 < es_lambda < 2.0):
        raise ValueError(f"epsilon-scaling factor must lie in (0.5, 2), got {es_lambda}")
    if eta is not None and not (finite(eta) and 0 <= eta <= 1):
        raise ValueError(f"DDIM's eta must be a number from 0 to 1, got {eta}")


def for_steps(value, steps: int | None):
    """A recommendation is a number, or an object keyed by step count (``{"10": 1.5, "20": 0.5}``) when the
    best weight depends on the steps: the entry nearest ``steps`` on a log scale (ties: the larger count),
    and for ``steps`` None the one nearest REFERENCE_STEPS."""
    if not isinstance(value, dict):
        return value
    target = math.log(steps if steps else REFERENCE_STEPS)
    return min(value.items(), key=lambda kv: (abs(math.log(int(kv[0])) - target), -int(kv[0])))[1]


def _check_recommendations(own: dict, where: str) -> None:
    for key, value in own.items():
        table = value if isinstance(value, dict) else {str(REFERENCE_STEPS): value}
        if not table or not all(str(k).isdigit() and int(k) >= 1 for k in table):
            raise ValueError(f"{where}, method_defaults: {key} must be a number or an object keyed by step "
                             f"counts (e.g. {{\"10\": 1.5, \"20\": 0.5}}), got {value!r}")
        try:
            for v in table.values():
                check_params(**{key: v})
        except ValueError as e:
            raise ValueError(f"{where}, method_defaults: {e}") from None


def recommendations(model) -> dict:
    """DEFAULTS with the model's own recommendations (``method_defaults`` in its noisecorr.json) on top,
    as written there: numbers, or step-keyed objects (``for_steps``). A recommendation outside the
    methods' limits is an error naming the file, not a silent fallback."""
    info = getattr(model, "info", None) or {}
    own = info.get("method_defaults") or {}
    where = f"{info.get('folder', 'the model')}/noisecorr.json"
    if not isinstance(own, dict):
        raise ValueError(f"method_defaults in {where} must be an object")
    own = {k: v for k, v in own.items() if k in TUNABLE}
    _check_recommendations(own, where)
    return {**DEFAULTS, **own}


def defaults_for(model, steps: int | None = None) -> dict:
    """The methods' settings for a run of ``steps`` steps on ``model``: its recommendations, resolved."""
    return {k: for_steps(v, steps) for k, v in recommendations(model).items()}


def recommended_values(model, key: str) -> set:
    """Every value the model recommends for ``key`` (any step count), and the paper's default: the app
    moves a slider that still shows one of these when the steps change, and leaves a user's own alone."""
    own = recommendations(model)[key]
    return {float(v) for v in (own.values() if isinstance(own, dict) else [own])} | {float(DEFAULTS[key])}


FALLBACK_STEPS = 20       # the step count of a model that recommends none

# What restoration asks of setup(): NLC with its direction normalised to sqrt(n), as the paper does. In
# generation the network's own eps measured better on our model, in restoration the normalised one
# (docs/noise-shift.md).
RESTORATION_PARAMS = {"nlc_normalize": True}


def recommended_run(model) -> tuple[str | None, int]:
    """(correction, steps) the app and the CLI start at: the model's measured choice (noisecorr.json
    ``recommended``: {"method", "steps"}), where its benchmark shows the correction winning, so that a
    visitor's first run shows what the correction does rather than a setting where it loses. A model
    without one: no correction preferred (the caller's order applies) and FALLBACK_STEPS."""
    info = getattr(model, "info", None) or {}
    rec = info.get("recommended") or {}
    where = f"{info.get('folder', 'the model')}/noisecorr.json"
    if not isinstance(rec, dict):
        raise ValueError(f"recommended in {where} must be an object")
    method, steps = rec.get("method"), rec.get("steps", FALLBACK_STEPS)
    if method is not None and method not in METHODS:
        raise ValueError(f"recommended.method in {where} must be one of {', '.join(METHODS)}, got {method!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 1000:
        raise ValueError(f"recommended.steps in {where} must be a whole number from 1 to 1000, got {steps!r}")
    if method is not None and not available(model)[method]:
        method = None
    return method, steps


_cache: dict = {}


def _cached(kind, path, loader):
    key = (kind, str(path))
    if key not in _cache:
        _cache[key] = loader(path)
    return _cache[key]


def load_estimator_for(model):
    from .extras.estimator import load_estimator

    path = extras_for(model).get("estimator")
    return None if path is None else _cached("estimator", path, lambda p: load_estimator(p, device=model.device))


def setup(method: str, model, steps: int | None = None, **params) -> MethodSetup:
    """The correction and sample() options for a method run with ``steps`` steps (which picks the model's
    step-dependent recommendations); ValueError if the model lacks what it needs."""
    if method not in METHODS:
        raise ValueError(f"unknown method '{method}' (choose from {', '.join(METHODS)})")
    if not available(model)[method]:
        raise ValueError(f"{model.name if hasattr(model, 'name') else 'this model'} has no trained weights "
                         f"for '{method}' ({METHODS[method]})")
    p = {**defaults_for(model, steps), **{k: v for k, v in params.items() if v is not None}}
    ex = extras_for(model)
    if method == "none":
        return MethodSetup(Correction())
    if method == "es":
        return MethodSetup(EpsScaling(p["es_lambda"]))
    if method == "ts":
        return MethodSetup(TimeShift(p["ts_window"], p["ts_cutoff"]))
    if method == "self":
        return MethodSetup(SelfEstimate())
    if method == "nlc":
        from .extras.nlc import load_level_net

        net = _cached("nlc", ex["nlc"], lambda q: load_level_net(q, device=model.device))
        return MethodSetup(NLC(net, mode=p.get("nlc_mode", "reuse"), normalize=p.get("nlc_normalize", False)))
    if method == "nlc-lut":
        from .extras.nlc_table import NLCLookupTable

        return MethodSetup(NLCTable(_cached("lut", ex["nlc-lut"], NLCLookupTable.load)))
    if method == "nlc-est":
        return MethodSetup(EstimatedLevel(load_estimator_for(model)))
    if method == "nag+nlc-est":
        return MethodSetup(EstimatedLevel(load_estimator_for(model)), {"nag_scale": p["nag_scale"]})
    if method == "nag":
        return MethodSetup(Correction(), {"nag_scale": p["nag_scale"]})
    if method == "nag-est":
        return MethodSetup(Correction(), {"estimator": load_estimator_for(model), "nag_est_scale": p["nag_est_scale"]})
    raise AssertionError(method)
