"""The model picker's logic: which sources a web user may load, a small cache of loaded models,
and what each model offers (classes, corrections, restoration methods).

A session remembers only a key (``DEFAULT_KEY`` or a Hub repo id); the models live here, shared.
The server's default model (the embedded one, or what the operator passed to ``build_demo``) is
loaded once and kept; Hub models are loaded on demand and the least recently used are dropped
beyond ``max_cached``. Web users can never name a local path: only the default, the presets and
Hub repo ids (``loading.REPO_ID``) are accepted.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from pathlib import Path

from ..methods import METHODS, recommended_run
from ..models.loading import REPO_ID, ModelLoadError, load_model
from ..models.registry import HUB_PRESETS
from ..restoration.tasks import RESTORATION_METHODS
from .common import RunLock, shown

DEFAULT_KEY = "default"
OTHER_KEY = "other"
PRESET_IDS = [source for _, source, _ in HUB_PRESETS]
ANY_CLASS = "any class"

def check_hub_id(text) -> str:
    """A Hub repo id typed by a web user, or ValueError. Local paths are refused (path traversal)."""
    s = str(text or "").strip()
    if not s:
        raise ValueError("Type a Hugging Face Hub repo id such as google/ddpm-cifar10-32.")
    if not REPO_ID.match(s) or ".." in s or "\\" in s:
        raise ValueError(f"'{s}' is not a Hub repo id (owner/name, letters, digits, '.', '_', '-'). "
                         f"Local folders cannot be loaded from the web app.")
    try:
        local = Path(s).expanduser().exists()
    except OSError:
        local = False
    if local:
        raise ValueError(f"'{s}' names a path on the server: the web app loads only Hub repo ids, "
                         f"never local folders.")
    return s


def picker_choices(default_label: str) -> list[tuple[str, str]]:
    return ([(default_label, DEFAULT_KEY)] + [(f"{label} ({note})", source) for label, source, note in HUB_PRESETS]
            + [("Another Hub repo id (type it below)", OTHER_KEY)])


def resolve_choice(choice, repo_id) -> str:
    """Picker dropdown value + free repo-id text -> a model key, or ValueError."""
    if choice in (None, "", DEFAULT_KEY):
        return DEFAULT_KEY
    if choice in PRESET_IDS:
        return choice
    if choice == OTHER_KEY:
        return check_hub_id(repo_id)
    return check_hub_id(choice)


def max_side(device) -> int:
    """The largest model a web user may load here: a 128x128 model takes seconds per network evaluation on
    two CPU cores (a 256x256 one ~25 s); a GPU runs 512x512 models in well under a second."""
    import torch

    from ..models.loading import resolve_device

    return MAX_SIDE_GPU if torch.device(resolve_device(device)).type != "cpu" else MAX_SIDE_CPU


MAX_SIDE_CPU, MAX_SIDE_GPU = 128, 512


class ModelStore:
    """Loaded models, shared by every session. Loading one model never blocks runs on another, nor a
    session reading one already loaded: the store's own lock is held only to look up and insert, and
    each model being loaded has a lock of its own (two users asking for the same one load it once)."""

    def __init__(self, default_source=None, max_cached: int = 2, device=None):
        self.default_source = default_source          # trusted: given by whoever runs the server
        self.max_cached, self.device = max_cached, device
        self._default = None
        self._default_error: str | None = None
        self._hub: OrderedDict = OrderedDict()
        self._lock = threading.Lock()                 # the dictionaries below, briefly
        self._loading: dict[str, threading.Lock] = {}
        self._run_locks: dict[int, RunLock] = {}

    # -- loading --------------------------------------------------------------------------------
    def load_default(self):
        """Load the server's default model now (at start-up); problems become a message."""
        for attempt in range(2):
            try:
                self._default = self._measured(load_model(self.default_source, device=self.device))
                self._default_error = None
                break
            except ModelLoadError as e:
                # a trainer rewrites the embedded model's weights every few minutes: a read that
                # races the write fails once and succeeds a moment later
                self._default, self._default_error = None, str(e)
                if attempt == 0 and "could not be read" in str(e):
                    time.sleep(2.0)
                    continue
                break
            except Exception as e:      # anything else must not stop the app from starting
                self._default = None
                self._default_error = f"The default model could not be loaded ({type(e).__name__}: {e})"
                break
        return self._default

    @staticmethod
    def _measured(model):
        """The model, its speed measured now (the cost check prices requests with it, before queueing)."""
        from .limits import seconds_per_image

        seconds_per_image(model)
        return model

    @property
    def default_error(self) -> str | None:
        return self._default_error

    def _key_lock(self, key: str) -> threading.Lock:
        with self._lock:
            return self._loading.setdefault(key, threading.Lock())

    def loaded(self, key):
        """The model for a key if it is loaded already, else None (never loads)."""
        if key in (None, "", DEFAULT_KEY):
            return self._default
        with self._lock:
            return self._hub.get(key)

    def get(self, key: str):
        """The model for a key; ModelLoadError with a message for the user."""
        if key in (None, "", DEFAULT_KEY):
            if self._default is None:
                with self._key_lock(DEFAULT_KEY):
                    if self._default is None:
                        self.load_default()
            if self._default is None:
                raise ModelLoadError(self._default_error or "The default model is not available.")
            return self._default
        key = check_hub_id(key) if key not in PRESET_IDS else key
        found = self.loaded(key)
        if found is not None:
            with self._lock:
                if key in self._hub:
                    self._hub.move_to_end(key)
            return found
        with self._key_lock(key):
            found = self.loaded(key)
            if found is not None:
                return found
            try:
                model = self._measured(load_model(key, device=self.device, allow_pickle=key in PRESET_IDS,
                                                  max_side=max_side(self.device)))
            except ModelLoadError:
                raise
            except Exception as e:
                raise ModelLoadError(f"'{key}' could not be loaded ({type(e).__name__}: {str(e)[:300]})") from None
            with self._lock:
                self._hub[key] = model
                while len(self._hub) > self.max_cached:
                    self._hub.popitem(last=False)
            return model

    def run_lock(self, model) -> RunLock:
        with self._lock:
            return self._run_locks.setdefault(id(model), RunLock())

    def default_label(self) -> str:
        if self.default_source in (None, "", "default"):
            return "Embedded default: noisecorr-ddpm-cifar10 (class-conditional CIFAR-10, 32x32, works offline)"
        name = self._default.name if self._default is not None else str(self.default_source)
        return f"Server default: {Path(str(name)).name}"


# -- what a model offers ---------------------------------------------------------------------------
def class_choices(model) -> list[str]:
    if model is None or not model.num_classes:
        return [ANY_CLASS]
    names = list(model.class_names or [])
    if len(names) != model.num_classes:
        names = [f"class {i}" for i in range(model.num_classes)]
    return [ANY_CLASS] + names


def class_index(model, choice) -> int | None:
    """'any class' -> None (the model's unconditional mode); a class name or index -> its index."""
    if choice in (None, "", ANY_CLASS, "any"):
        return None
    names = class_choices(model)[1:]
    if not names:
        raise ValueError(f"{model.name} is unconditional: choose 'any class'")
    if choice in names:
        return names.index(choice)
    s = str(choice).strip()
    if s.isascii() and s.isdigit() and int(s) < len(names):        # '²' is a digit to Python, not to int()
        return int(s)
    raise ValueError(f"unknown class {shown(choice)}: choose one of {', '.join(names)}, or 'any class'")


def correction_choices(model) -> tuple[list[tuple[str, str]], list[str]]:
    """(dropdown (label, method) for the corrections this model can run, notes on the others)."""
    ok, missing = [], []
    for method, spec in METHODS.items():
        if method == "none":
            continue
        if model is not None and spec.available(model):
            ok.append((f"{spec.title} ({method})", method))
        else:
            why = spec.why_unavailable(model) if model is not None else "no model loaded"
            missing.append(f"`{method}` ({spec.title}): {why}")
    return ok, missing


def default_correction(choices: list[tuple[str, str]], model=None) -> str | None:
    """The correction the Generate tab starts with: the model's recommended one (its benchmark shows it
    winning), else the first it has in the registry's order."""
    keys = [k for _, k in choices]
    if model is not None:
        try:
            preferred, _ = recommended_run(model)
        except ValueError:
            preferred = None
        if preferred in keys:
            return preferred
    return next((m for m in METHODS if m in keys), None)


def restoration_plan(model) -> tuple[str, str]:
    """(corrected method, a sentence for the UI): IterProj-NLC, which every model can run."""
    return "iterproj-nlc", (f"Baseline: **{RESTORATION_METHODS['ddnm'].title}** · corrected: "
                            f"**{RESTORATION_METHODS['iterproj-nlc'].title}**: in the last steps the network is told "
                            "the noise that fitting the measurement leaves in the image, so it removes it; when the "
                            "measurement is noisy, it also keeps the measurement's own noise out of the detail the "
                            "measurement hardly shows (a blur's finest detail).")


def describe(model, error: str | None = None) -> str:
    """Markdown: the model, its classes and the corrections it has."""
    if model is None:
        return f"**No model loaded.** {error or ''}"
    c, h, w = model.sample_shape
    info = model.info
    cls = (f"class-conditional ({model.num_classes} classes)" if model.num_classes
           else "unconditional")
    trained = f", trained {info['trained_steps']} steps" if "trained_steps" in info else ""
    ok, missing = correction_choices(model)
    lines = [f"**Model:** {model.name} · {w}x{h}, {c} channels, {cls}{trained} · device `{model.device}`",
             f"**This model can run {len(ok)} corrections** (the list under 'Correction to compare with the "
             f"baseline' on Generate)."]
    if missing:
        lines.append("**Not available for this model:** " + "; ".join(missing))
    if h >= 128 and model.device.type == "cpu":
        lines.append(f"⚠️ {w}x{h} images on a CPU take minutes per image: use few steps and one image.")
    return "\n\n".join(lines)
