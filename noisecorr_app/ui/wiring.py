"""Gradio glue shared by the tabs: the session's model, errors as gr.Error, streaming a run with a
progress bar and throttled previews. The logic itself lives in the Gradio-free modules."""
from __future__ import annotations

import inspect
import logging

import gradio as gr

from ..models.loading import ModelLoadError
from .common import Throttle, png_in_cache, stream
from .state import DEFAULT_KEY, ModelStore

log = logging.getLogger("noisecorr_app.ui")
SAMPLING = "sampling"          # one concurrency group for every tab that runs the network


def hub_message(key: str, err: Exception) -> str:
    """A loading error as a web user should read it: this server has no Hub access, not 'connect'."""
    msg = str(err)
    if key in (None, "", DEFAULT_KEY):      # the server's own default: the operator's message as it is
        return msg
    if "cannot be reached" in msg or "Could not download" in msg:
        return (f"The Hugging Face Hub cannot be reached from this server (no network), and '{key}' is not in "
                f"its local cache, so it cannot be loaded here. The app keeps using the model it had.")
    if "only a pickle checkpoint" in msg or "no safetensors weights" in msg:
        # the loader's advice (--allow-pickle) is for the command line: the web app never opens pickles
        return (f"'{key}' has no safetensors weights (at most a pickle checkpoint, which can run code when "
                f"opened): the web app loads only safetensors weights from a typed repo id. The app keeps "
                f"using the model it had.")
    if "could not be read" in msg:          # without the server's cache paths
        return (f"The weights of '{key}' could not be read: the downloaded file is corrupt or incomplete. "
                f"The app keeps using the model it had.")
    return msg


def png(img, name: str = "image"):
    """An image output as a PNG file in Gradio's cache, safe when users get identical pictures at
    the same time (see ``common.png_in_cache``); None stays None."""
    from gradio.utils import get_upload_folder

    return None if img is None else png_in_cache(img, get_upload_folder(), name)


def session_model(store: ModelStore, key):
    """The session's model, or gr.Error with the loading message."""
    try:
        return store.get(key or DEFAULT_KEY)
    except (ModelLoadError, ValueError) as e:
        raise gr.Error(hub_message(key, e), print_exception=False) from None


def user_error(err: Exception) -> gr.Error:
    """A run's failure as a message: ValueErrors are written for users; anything else is logged
    with its traceback and shown by type and text."""
    if isinstance(err, gr.Error):
        return err
    if isinstance(err, ValueError):
        from .inputs import InputError

        return InputError(str(err), print_exception=False)
    log.exception("run failed")
    return gr.Error(f"The run failed ({type(err).__name__}: {str(err)[:300]}).")


def run_streamed(fn, args, total: int, progress, desc: str, on_preview):
    """Run ``fn(*args, on_event=...)`` (events: (run, StepRecord)) in a worker thread; advance the
    progress bar each step and yield ``on_preview(run, record)`` at throttled moments. The
    generator's return value is fn's result."""
    throttle, done, per_run = Throttle(), 0, {}
    gen = stream(fn, *args)
    progress((0, total), desc=desc)
    try:
        while True:
            try:
                run, rec = next(gen)
            except StopIteration as stop:
                return stop.value
            done += 1
            per_run[run] = per_run.get(run, 0) + 1      # the runs may sample side by side
            progress((done, total), desc=", ".join(f"{r}: step {k}/{total // 2}" for r, k in per_run.items()))
            last = rec.sigma_next == 0
            if throttle.due(last):
                yield on_preview(run, rec)
    except gr.Error:
        raise
    except Exception as e:
        raise user_error(e) from None
    finally:
        gen.close()


def param_widget(param, value=None, **kw):
    """A setting's control, made from its declaration: a choice of its options, or a slider over its
    range; its label (with the hint) and its help as the info line. ``value`` None: its default."""
    from ..settings import Choice
    from . import inputs as checked

    label = f"{param.label} ({param.hint})" if getattr(param, "hint", "") else param.label
    value = param.default if value is None else value
    if isinstance(param, Choice) or param.options:
        return checked.Radio(list(param.options), value=value, label=label, info=param.help, **kw)
    return checked.Slider(param.lo, param.hi, value=value, step=param.step, label=label, info=param.help, **kw)


def seed_box():
    """The Seed box and a button that puts a new random seed in it: the seed a run used is always the
    one shown, so any run can be repeated."""
    import random

    from . import inputs as checked

    with gr.Row(equal_height=True):
        seed = checked.Number(0, precision=0, minimum=0, label="Seed", scale=3,
                              info="the same seed gives the same images")
        dice = gr.Button("New random seed", size="sm", scale=1)
    dice.click(lambda: random.randrange(2 ** 31), None, seed, api_visibility="private", queue=False)
    return seed


def named(fn, names: list[str]):
    """``fn(*values, progress=...)`` with a signature naming each input: Gradio reads it to name the
    endpoint's arguments (inputs made from declarations have no fixed list of parameters)."""
    params = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in names]
    params.append(inspect.Parameter("progress", inspect.Parameter.KEYWORD_ONLY, default=gr.Progress()))
    fn.__signature__ = inspect.Signature(params)
    return fn
