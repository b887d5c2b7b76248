"""NLC for a model that has none, from the app: trained data-free (on the model's own images) within a time
budget where the server has a GPU; on a CPU the app says how long it would take and gives the command."""
from __future__ import annotations

import os

from ..models.registry import nlc_for
from ..training.extras import data_free_plan, nlc_trainer, write_nlc_card
from .limits import seconds_per_image

APP_BUDGET_S = 600          # one click trains for about ten minutes at most (NOISECORR_APP_TRAINING_SECONDS)


def budget() -> float:
    return float(os.environ.get("NOISECORR_APP_TRAINING_SECONDS") or APP_BUDGET_S)


def can_train(model) -> bool:
    """On a GPU; NOISECORR_APP_TRAINING=1 allows it on a CPU too (a server for small models, the tests)."""
    return model is not None and (model.device.type != "cpu" or os.environ.get("NOISECORR_APP_TRAINING") == "1")


def command(model) -> str:
    source = "" if model.name == "embedded default" else f" --model {model.name}"
    return f"python -m noisecorr_app train nlc{source} --data-free"


def _minutes(seconds: float) -> str:
    return "under a minute" if seconds < 60 else f"about {seconds / 60:.0f} minutes"


def status(model) -> tuple[str, bool]:
    """(a sentence on this model's NLC weights, whether to offer the training button)."""
    if model is None:
        return "", False
    found, why = nlc_for(model)
    if found is not None:
        return "", False
    reason = f" ({why})" if why else ""
    full = data_free_plan(seconds_per_image(model))
    if can_train(model):
        plan = data_free_plan(seconds_per_image(model), budget())
        smaller = "" if plan["steps"] == full["steps"] and plan["pool"] == full["pool"] else \
            " (a shorter run than the command line's, to fit a web request)"
        return (f"**This model has no NLC weights yet**{reason}. The button trains them from the model's own images, "
                f"no dataset needed, in {_minutes(plan['seconds'])}{smaller}; NLC then appears among the "
                f"corrections.", True)
    return (f"**This model has no NLC weights yet**{reason}. Training them from the model's own images would take "
            f"{_minutes(full['seconds'])} on this server's CPU, too long for a web request: run `{command(model)}` "
            f"on a machine of your own (with a GPU: minutes), and the app finds them when it loads this model.", False)


def train(model):
    """Train NLC for ``model`` data-free within ``budget()``; the weights go where ``nlc_for`` finds them.
    Progress shows through tqdm (drawing the images, then the training steps)."""
    plan = data_free_plan(seconds_per_image(model), budget())
    trainer, batches = nlc_trainer(model, None, steps=plan["steps"], batch_size=plan["batch_size"],
                                   pool=plan["pool"], pool_steps=plan["pool_steps"])
    for _ in trainer.run(batches(trainer.step), max_minutes=1.5 * budget() / 60):
        pass
    write_nlc_card(trainer.dir.parent, model, f"the app's Train NLC button (data-free: {plan['pool']} images of "
                                              f"{plan['pool_steps']} steps, {plan['steps']} training steps)")
    return trainer.step, plan
