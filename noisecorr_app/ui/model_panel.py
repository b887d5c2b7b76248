"""The Model panel: the picker (the embedded model, Hub presets, any Hub repo id), what the loaded model
offers, and NLC training for a model that has none (``nlc_training``). Loading a model updates every tab."""
from __future__ import annotations

import gradio as gr

from ..models.loading import ModelLoadError
from . import inputs as checked, nlc_training, tab_generate
from .state import ANY_CLASS, DEFAULT_KEY, OTHER_KEY, PRESET_IDS, class_choices, correction_choices, \
    default_correction, describe, picker_choices, resolve_choice, restoration_plan
from .wiring import SAMPLING, hub_message, session_model


def build(store, model) -> dict:
    """The panel's widgets under the current Blocks."""
    with gr.Accordion("Model", open=model is None):
        with gr.Row():
            choice = checked.Dropdown(picker_choices(store.default_label()), value=DEFAULT_KEY, label="Model", scale=3)
            repo = gr.Textbox(label="Hub repo id (for 'Another Hub repo id')", placeholder="owner/name", scale=2)
            load = gr.Button("Load model", scale=1)
        said, offered = nlc_training.status(model)
        nlc_md = gr.Markdown(said, elem_id="nlc-status")
        train = gr.Button("Train NLC for this model", visible=offered, elem_id="train-nlc")
    return {"choice": choice, "repo": repo, "load": load, "nlc": nlc_md, "train": train}


def wire(store, panel: dict, model_key, model_md, gen: dict, plans: list, concurrency: int):
    """Loading and training, and what they update: the session's model, its description, the Generate tab's
    class, correction and steps, each restoration tab's plan."""

    def offers(model, correction=None) -> list:
        """What every tab shows of ``model``: its corrections (the one picked), its NLC status and button."""
        ok, _ = correction_choices(model)
        said, offered = nlc_training.status(model)
        picked = correction if correction in [k for _, k in ok] else default_correction(ok, model)
        return [gr.update(choices=ok, value=picked), said, gr.update(visible=offered)]

    def pick(choice_value, repo_id, key):
        """Load the chosen model for this session; on failure say why and keep the previous one."""
        target = choice_value
        try:
            target = resolve_choice(choice_value, repo_id)
            new = store.get(target)
        except (ValueError, ModelLoadError) as e:
            msg = hub_message(repo_id if choice_value == OTHER_KEY else target, e)
            gr.Warning(msg)
            try:
                current = describe(store.get(key))
            except (ValueError, ModelLoadError) as e2:
                current = describe(None, str(e2))
            # the picker goes back to the model still in use, so it does not show the one that failed
            shown = key if key in (DEFAULT_KEY, *PRESET_IDS) else OTHER_KEY
            return [key, f"⚠️ **Could not load that model.** {msg}\n\n{current}", gr.update(value=shown),
                    gr.update(value="" if shown != OTHER_KEY else key)] + [gr.skip()] * (5 + len(plans))
        corrections, said, button = offers(new)
        return ([target, describe(new), gr.skip(), gr.skip(), gr.update(choices=class_choices(new), value=ANY_CLASS),
                 corrections, gr.update(value=tab_generate.start_steps(new)), said, button]
                + [restoration_plan(new)[1]] * len(plans))

    # the API's outputs keep their order (description, picker, repo, class, correction, steps); NLC's come after
    panel["load"].click(pick, [panel["choice"], panel["repo"], model_key],
                        [model_key, model_md, panel["choice"], panel["repo"], gen["class"], gen["correction"],
                         gen["steps"], panel["nlc"], panel["train"], *plans],
                        api_name="load_model", concurrency_id="model-loading", concurrency_limit=1)

    def train_nlc(key, progress=gr.Progress(track_tqdm=True)):
        """Data-free NLC for the session's model, within the app's time budget; then NLC is a correction."""
        model = session_model(store, key)
        if not nlc_training.can_train(model):
            raise gr.Error("Training NLC needs a GPU on this server: run the command shown instead.",
                           print_exception=False)
        with store.run_lock(model).hold(exclusive=True):
            steps, plan = nlc_training.train(model)
        done = (f"NLC trained for this model ({steps:,} steps on {plan['pool']:,} of its own images) and ready: "
                f"pick it under 'Correction to compare with the baseline'.")
        corrections, said, button = offers(model, "nlc")
        return [said or done, button, describe(model), corrections] + [restoration_plan(model)[1]] * len(plans)

    panel["train"].click(train_nlc, [model_key], [panel["nlc"], panel["train"], model_md, gen["correction"], *plans],
                         api_name="train_nlc", concurrency_id=SAMPLING, concurrency_limit=concurrency)
