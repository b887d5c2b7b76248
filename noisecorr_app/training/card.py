"""Model cards for what ``train`` produces: regenerated from the checkpoint's own records.

The card says what data, what command, how long on what hardware, and what it scores; the loss
curve and the sample grid are drawn from ``training/loss_log.csv`` and the weights themselves.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import torch

from .loop import hardware, read_state


def loss_curve(log_csv: Path, out_png: Path, title: str, smooth: int = 50):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(open(log_csv)))
    steps = [int(r["step"]) for r in rows]
    loss = torch.tensor([float(r["loss"]) for r in rows])
    k = max(1, min(smooth, len(loss) // 5))
    smoothed = torch.nn.functional.avg_pool1d(loss.view(1, 1, -1), k, 1).view(-1) if len(loss) >= k else loss
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    ax.plot(steps, loss.numpy(), color="0.8", lw=0.8, label="logged")
    ax.plot(steps[k - 1:], smoothed.numpy(), color="C0", lw=1.5, label=f"mean of {k}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)


def class_grid(model, out_png: Path, per_class: int = 8, steps: int = 50, sampler: str = "ddim", seed: int = 0):
    """One row per class (or a block of unconditional samples), same seeds in every row."""
    from ..images import grid, to_pil
    from ..sampling.run import sample

    rows = list(range(model.num_classes)) if model.num_classes else [None] * 4
    images = []
    for c in rows:
        res = sample(model, sampler=sampler, steps=steps, n=per_class, seed=seed,
                     labels=None if c is None else [c] * per_class)
        images += to_pil(res.images)
    grid(images, cols=per_class, scale=2).save(out_png)


def _recommended_run(info: dict) -> str:
    rec = info.get("recommended") or {}
    if not rec.get("method"):
        return "none: the app starts at its first correction, 20 steps; the CLI at no correction"
    return (f"`{rec['method']}` at {rec.get('steps', 20)} steps: where the app's Generate tab and `sample` start "
            f"(`noisecorr.json`, `recommended`)" + (f"; why: {rec['note']}" if rec.get("note") else ""))


def _recommended(info: dict) -> str:
    own = info.get("method_defaults") or {}
    if not own:
        return "none: the CLI and app use the papers' values"
    from ..settings import PARAMS

    notes = [v for k, v in own.items() if k.endswith("note") and v]

    def shown(v):              # a number, or {steps: value} (methods.for_steps)
        return ", ".join(f"{w:g} at {k} steps" for k, w in v.items()) + " (the nearest count applies)" \
            if isinstance(v, dict) else f"{v:g}"

    return "; ".join(f"`{k}` {shown(v)}" for k, v in own.items() if k in PARAMS and PARAMS[k].tunable) + \
        " in `noisecorr.json`: the CLI's and the app's defaults for this model (`cfg_scale`: the app's, when a " \
        "class is picked)" + (f"; why: {' / '.join(notes)}" if notes else "")


def write_denoiser_card(folder: Path, command: str, metrics: dict | None = None, samples: bool = True,
                        note: str = ""):
    from ..models.loading import load_model

    folder = Path(folder)
    state = read_state(folder / "training" / "state.json")
    info = json.loads((folder / "noisecorr.json").read_text())
    cfg = state["config"]
    loss_curve(folder / "training" / "loss_log.csv", folder / "loss_curve.png", f"{folder.name}: training loss")
    model = load_model(folder, device="cpu")
    if samples:
        class_grid(model, folder / "samples_per_class.png")
    n_params = sum(p.numel() for p in model.unet.parameters())
    # The card describes the shipped weights (unet/, stamped in noisecorr.json when exported); the
    # training state may have run on past them without being shipped (extras were made on these).
    steps, hours = info.get("trained_steps", state["step"]), info.get("train_hours", state["seconds"] / 3600)
    ahead = (f"; `training/` holds the run at step {state['step']:,} ({state['seconds'] / 3600:.2f} h), not shipped"
             if state["step"] > steps else "")
    metrics = metrics or {}
    rows = "\n".join(f"| {k} | {v} |" for k, v in metrics.items()) or "| (not measured yet) | |"
    classes = ", ".join(f"{i} {n}" for i, n in enumerate(info.get("class_names") or []))
    text = f"""# {folder.name}: the embedded default model

A class-conditional DDPM-type `UNet2DModel` ({n_params / 1e6:.2f}M parameters, 32x32) trained by this
project's own script on CIFAR-10. It is small enough to sample interactively on a CPU.
{note and chr(10) + note + chr(10)}
| | |
| --- | --- |
| data | CIFAR-10 train split: 50,000 images (JPEG re-encodes, quality 75, of the originals; `../shared/data/cifar10`, provenance in its README), random horizontal flips |
| diffusion | epsilon prediction, linear betas 1e-4..0.02, T = 1000: the sigma space of `google/ddpm-cifar10-32` |
| classes | {classes}; null class {info.get('null_class')} |
| class dropout | {info.get('p_class_drop')} (classifier-free guidance) |
| noise-condition dropout | {info.get('p_noise_drop')}: the timestep is replaced by the sentinel {info.get('null_timestep')} (classifier-free NAG) |
| command | `{command}` |
| steps (shipped weights) | {steps:,} at batch {cfg['extra'].get('batch_size')} (AdamW lr {cfg['lr']}, warm-up {cfg['warmup']}, grad clip {cfg['grad_clip']}){ahead} |
| training time | {hours:.2f} h of compute, last run on {state['device']} ({state.get('hardware') or hardware()}), precision {state['precision']} |
| weights | EMA (decay ramping to {cfg['ema_decay']}), fp16 safetensors in `unet/`; `training/params.safetensors` holds the raw weights for resuming |
| recommended method weights | {_recommended(info)} |
| recommended run | {_recommended_run(info)} |

Loading needs no custom code: `UNet2DModel.from_pretrained(folder, subfolder="unet")`; the null
class is the last row of the class-embedding table, and the null noise level is the timestep
{info.get('null_timestep')}, outside [0, 1000), whose sinusoidal embedding no real timestep shares
(recorded in `noisecorr.json`). In noisecorr: `load_model("{folder.name}")` or `load_model()`.

Training resumes from `training/`: run the same command again. Adam's moments
(`training/optimizer.safetensors`) are not committed; a resume without them warms the learning
rate up again over {cfg['warmup']} steps.

## Quality
FID-C10 and KID are computed in the feature space of this project's CIFAR-10 classifier
(`weights/cifar10-classifier`), **not comparable with Inception FID**.

| measure | value |
| --- | --- |
{rows}

## Loss
![loss curve](loss_curve.png)

## Samples
DDIM, 50 steps, seeds 0-7, one row per class (same seeds in every row), upscaled 2x:

![samples](samples_per_class.png)
"""
    (folder / "README.md").write_text(text)
    return text


def metrics_from_reports(paths) -> dict[str, str]:
    """Card rows from ``evaluate fid --json`` and ``evaluate speed --json`` reports."""
    rows = {}
    for path in paths:
        doc = json.loads(Path(path).read_text())
        if doc.get("metric") == "FID-C10":
            s = doc["samples"]
            if s["kind"].startswith("floor"):
                what = f"floor: {s['n']:,} CIFAR-10 test images vs {doc['reference']['n']:,} train images"
            else:
                cls = s.get("class")
                what = (f"{s['n']:,} samples, {s['sampler']} {s['steps']} steps"
                        + ("" if s.get("method") in (None, "none") else f", {s['method']}")
                        + ("" if s.get("cfg_scale", 1.0) == 1 else f", CFG {s['cfg_scale']:g}")
                        + (", unconditional" if cls is None else f", class {cls}"))
            rows[f"FID-C10 / KID-C10, {what}"] = f"{doc['fid_c10']:.3f} / {doc['kid_c10_mean']:.5f}"
            if "accuracy" in doc:
                rows[f"classifier accuracy on {what}"] = f"{doc['accuracy']:.3f} (chance 0.100)"
        elif doc.get("kind") == "speed":
            for r in doc["rows"]:
                rows[f"CPU seconds per image, {r['sampler']} {r['steps']} steps, batch {r['batch']}"
                     f" ({doc.get('threads', '?')} threads)"] = f"{r['seconds_per_image']:.3f}"
        else:
            raise ValueError(f"{path}: not an `evaluate fid --json` or `evaluate speed --json` report")
    return rows


def write_extra_card(folder: Path, title: str, what: str, command: str, results_md: str):
    """A card for a small network trained beside a denoiser (estimator, NLC, classifier)."""
    folder = Path(folder)
    state = read_state(folder / "training" / "state.json")
    cfg = state["config"]
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").exists() else {}
    exported = {"raw": "raw weights: they scored higher than the EMA"}.get(config.get("weights"), "EMA")
    loss_curve(folder / "training" / "loss_log.csv", folder / "loss_curve.png", f"{folder.name}: training loss")
    text = f"""# {title}

{what}

| | |
| --- | --- |
| command | `{command}` |
| steps so far | {state['step']:,} at batch {cfg['extra'].get('batch_size')} (AdamW lr {cfg['lr']}, EMA {cfg['ema_decay']}) |
| training time | {state['seconds'] / 3600:.2f} h of compute on {state['device']} ({state.get('hardware') or hardware()}) |
| weights | `model.safetensors` ({exported}, fp32) + `config.json`; `training/` resumes the run |

## Results
{results_md}

## Loss
![loss curve](loss_curve.png)
"""
    (folder / "README.md").write_text(text)
    return text
