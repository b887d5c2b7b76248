"""Train the small networks that live beside a denoiser: NLC's r_theta and the noise-level estimator."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from .. import parallel
from ..extras.estimator import NoiseLevelEstimator, estimator_loss, save_estimator
from ..extras.nlc import LevelNet, save_level_net
from ..models.denoiser import Cond
from ..sampling.corrections import rms
from .data import load_images, to_tensor
from .loop import Trainer, TrainConfig, infinite_batches


def _batches(data, split, image_size, batch_size, seed):
    ds = load_images(data, split=split, size=image_size)
    images, labels = torch.from_numpy(ds.images), torch.from_numpy(ds.labels)

    def make_batch(idx, g):
        x = to_tensor(images[idx].numpy())
        flip = torch.rand(len(idx), generator=g) < 0.5
        x[flip] = x[flip].flip(-1)
        return x, labels[idx]

    return ds, lambda start: infinite_batches(len(labels), batch_size, make_batch, seed=seed + start)


def nlc_loss(denoiser, eta_range: float = 0.5, max_t: int = 990, p_null_class: float = 0.1):
    """Official recipe: x_t = x0 + sigma_t (1 + eta) eps with the network told sigma_t;
    target ||(1 + eta) eps|| / sqrt(n) - 1 (docs/methods.md section 3). Under ``accelerate launch`` each process
    runs the denoiser on its rows of the batch (``parallel.rows``) and r_theta on the gathered whole."""
    def loss(net, batch):
        x0, labels = (t.to(denoiser.device) for t in batch)
        b = x0.shape[0]
        t = torch.randint(0, max_t, (b,))
        sigma = denoiser.sigma_of_timestep(t).to(x0.device)
        eta = (torch.rand(b, device=x0.device) * 2 - 1) * eta_range
        eps = torch.randn_like(x0) * (1 + eta).view(-1, 1, 1, 1)
        cond, mine = None, parallel.rows(b)
        if denoiser.num_classes:
            drop = torch.rand(b) < p_null_class
            cond = Cond(labels=labels[mine].cpu(), null_label=drop[mine] if denoiser.supports_null_label else None)
        with torch.no_grad():      # the denoiser is frozen: no graph through it
            feats = denoiser.features(x0[mine] + sigma[mine].view(-1, 1, 1, 1) * eps[mine], sigma[mine], cond)
        return torch.nn.functional.mse_loss(net(parallel.gather_rows(feats), sigma), rms(eps) - 1)
    return loss


POOL_SEED = 1_000_000      # the model's own training images start here: benchmarks sample from seed 0
POOL_CORRECTION = "nlc-est-wavelet"      # how they are drawn (``model_samples``): part of their cache's name
# `train nlc --data-free`: 50 steps, not more, because the wavelet reading reads the last step's level well only
# above ~0.05 (100 steps end at 0.04: median leftover 0.023 against 0.008 at 20-50 steps; docs/noise-shift.md)
DATA_FREE = {"pool": 2000, "pool_steps": 50, "steps": 4000, "batch_size": 64}


def model_samples(denoiser, n: int, steps: int = DATA_FREE["pool_steps"], seed: int = POOL_SEED, batch_size: int = 100):
    """(images uint8 (n, C, H, W), labels) drawn from the model itself with ``steps`` DDIM steps (classes in
    turn for a class-conditional model), cached in chunks under noisecorr's cache (keyed by the weights'
    SHA-1): a second run, or one resumed after a stop, samples only what is missing. Under ``accelerate launch``
    the processes share the missing chunks (each chunk is made whole, as one process makes it).

    The last step reads each image's noise level with the wavelet reading (nlc-est, nothing trained): plain DDIM
    at 100 steps leaves noise in 94% of the embedded model's images (median 0.048, real photos 0.0096), and
    r_theta trained on them learns to call that noise clean (docs/noise-shift.md)."""
    from safetensors.torch import save_file
    from tqdm import tqdm

    from ..extras.storage import atomic_write
    from ..extras.wavelet import WaveletLevel, usable
    from ..images import to_uint8
    from ..models.registry import weights_sha1
    from ..sampling.corrections import EstimatedLevel
    from ..sampling.run import sample
    from .data import cache_dir

    fingerprint = (weights_sha1(denoiser) or denoiser.name)[:16]
    folder = cache_dir() / "model-samples" / f"{fingerprint}-{steps}steps-{POOL_CORRECTION}-seed{seed}"
    correction = EstimatedLevel(WaveletLevel(denoiser.sample_shape[-1])) if usable(denoiser.sample_shape) else None
    folder.mkdir(parents=True, exist_ok=True)
    sizes = {start: min(batch_size, n - start) for start in range(0, n, batch_size)}
    chunks = {start: folder / f"{start:07d}-{count}.safetensors" for start, count in sizes.items()}
    for start in tqdm(parallel.share(list(chunks)), desc=f"samples of the model ({steps} DDIM steps)", unit="batch",
                      disable=not parallel.is_main()):
        count, chunk = sizes[start], chunks[start]
        if not chunk.exists():
            lab = (torch.arange(start, start + count) % denoiser.num_classes) if denoiser.num_classes else None
            with torch.no_grad():
                res = sample(denoiser, sampler="ddim", steps=steps, n=count, seed=seed + start, labels=lab,
                             correction=correction)
            tensors = {"images": torch.from_numpy(to_uint8(res.images)).permute(0, 3, 1, 2).contiguous(),
                       "labels": lab if lab is not None else torch.zeros(count, dtype=torch.long)}
            atomic_write(chunk, lambda tmp, t=tensors: save_file(t, tmp), suffix=".safetensors")
    parallel.wait_for_everyone()
    images, labels = [], []
    for chunk in chunks.values():
        loaded = load_file(chunk)
        images.append(loaded["images"])
        labels.append(loaded["labels"])
    return torch.cat(images), torch.cat(labels)


def _pool_batches(images, labels, batch_size, seed):
    def make_batch(idx, g):
        x = images[idx].float().div(127.5).sub(1)
        flip = torch.rand(len(idx), generator=g) < 0.5
        x[flip] = x[flip].flip(-1)
        return x, labels[idx]

    return lambda start: infinite_batches(len(labels), batch_size, make_batch, seed=seed + start)


# network evaluations one training image costs (encoder features at batch 64, r_theta): on the embedded model,
# 4,000 steps took 8.5 minutes on 2 cores where an evaluation costs 7.8 ms an image (its 200,000 took 25 minutes)
TRAINING_IMAGE_COST = 0.25


def data_free_seconds(seconds_per_image: float, pool: int, pool_steps: int, steps: int, batch_size: int) -> float:
    """Estimated time of a data-free NLC run: drawing the images, then the training steps."""
    return seconds_per_image * (pool * pool_steps + steps * batch_size * TRAINING_IMAGE_COST)


def data_free_plan(seconds_per_image: float, budget_s: float | None = None) -> dict:
    """The data-free recipe (DATA_FREE), made smaller until its estimate fits ``budget_s``: fewer DDIM steps
    per drawn image (down to 25), fewer images (down to 500), then fewer training steps (down to 500)."""
    plan = dict(DATA_FREE)
    fits = lambda: budget_s is None or data_free_seconds(seconds_per_image, **plan) <= budget_s
    for key, floor in (("pool_steps", 25), ("pool", 500), ("steps", 500)):
        while not fits() and plan[key] > floor:
            plan[key] = max(floor, plan[key] // 2)
    plan["seconds"] = data_free_seconds(seconds_per_image, **plan)
    return plan


def nlc_trainer(denoiser, data=None, out=None, steps=20_000, batch_size=64, lr=3e-4, split="train", blocks=2,
                pool: int = DATA_FREE["pool"], pool_steps: int = DATA_FREE["pool_steps"]):
    """(Trainer, batches) for NLC's r_theta on a loaded, frozen denoiser. ``data``: an image folder or tarball;
    None trains it data-free, on ``pool`` images the model draws itself (``model_samples``). The weights record
    the denoiser's name and the SHA-1 of its UNet weights (``registry.nlc_for`` finds them for that model only)."""
    from ..models.registry import nlc_home, weights_sha1

    out = Path(out or nlc_home(denoiser))
    with torch.no_grad():
        f = denoiser.features(torch.zeros(1, *denoiser.sample_shape, device=denoiser.device),
                              torch.tensor([1.0], device=denoiser.device))
    with torch.random.fork_rng(devices=[]):         # the same first weights in every run (and every process)
        torch.manual_seed(0)
        net = LevelNet(f.shape[1], f.shape[-1], blocks=blocks)
    if data is None:
        images, labels = model_samples(denoiser, pool, pool_steps)
        batches = _pool_batches(images, labels, batch_size, seed=1)
        source = (f"samples of the model itself: {pool} images, {pool_steps} DDIM steps with the wavelet reading's "
                  f"final-step level correction, seeds from {POOL_SEED}")
    else:
        _, batches = _batches(data, split, denoiser.sample_shape[-1], batch_size, seed=1)
        source = str(data)
    cfg = TrainConfig(steps=steps, lr=lr, ema_decay=0.9995, precision="fp32",
                      extra=dict(model=str(denoiser.name), data=source, batch_size=batch_size))
    folder = Path(denoiser.info.get("folder", ""))
    revision = folder.name if "snapshots" in folder.parts else None       # a Hub snapshot: its commit
    info = {"denoiser": denoiser.name, "denoiser_sha1": weights_sha1(denoiser), "revision": revision, "data": source}
    trainer = Trainer(net, nlc_loss(denoiser), out, cfg, device=denoiser.device, save_dtype=torch.float32,
                      on_checkpoint=lambda tr: save_level_net(_ema_copy(tr, net), out, {**info, "steps": tr.step}),
                      ema_fallback=lambda: load_file(out / "model.safetensors"))
    return trainer, batches


def train_nlc(model_source, data=None, out=None, max_minutes=None, threads=None, command: str | None = None,
              **settings):
    """``nlc_trainer`` on the model ``model_source`` names, run to its steps (or ``max_minutes``), then its card."""
    from ..models.loading import load_model

    if threads:
        torch.set_num_threads(threads)
    model = load_model(model_source)
    trainer, batches = nlc_trainer(model, data, out, **settings)
    for _ in trainer.run(batches(trainer.step), max_minutes=max_minutes):
        pass
    if parallel.is_main():
        write_nlc_card(trainer.dir.parent, model, command)
    return trainer


CARD_MARK = "<!-- written by train nlc: rewritten after each run -->"


def write_nlc_card(folder: Path, model, command: str | None = None):
    """The NLC folder's card: the model and weights it belongs to, how it was trained and how to measure it. A card
    someone wrote by hand (without CARD_MARK) is left alone."""
    from .card import write_extra_card

    folder = Path(folder)
    if (folder / "README.md").exists() and CARD_MARK not in (folder / "README.md").read_text():
        return
    info = json.loads((folder / "config.json").read_text())["info"]
    what = (f"{CARD_MARK}\nThe Noise Level Correction network of `{info['denoiser']}`"
            + (f" (revision `{info['revision']}`)" if info.get("revision") else "")
            + f": it reads, from the denoiser's features, how much more or less noise a state carries than the "
            f"schedule says. It belongs to the UNet weights with SHA-1 `{info['denoiser_sha1']}` and is refused for "
            f"any other. Trained on {info['data']}.")
    model_flag = "" if info["denoiser"] == "embedded default" else f" --model {info['denoiser']}"
    results = (f"Not measured here. Measure it against the plain sampler with the same seeds:\n\n"
               f"`python -m noisecorr_app evaluate generation{model_flag} --nlc {folder} --methods none,nlc "
               f"--samplers ddim --steps 10 --n 2000`")
    write_extra_card(folder, f"NLC r_theta for {info['denoiser']}", what,
                     command or f"python -m noisecorr_app train nlc{model_flag} --data-free", results)


def train_estimator(data, out, steps=20_000, batch_size=128, lr=1e-3, max_minutes=None, split="train",
                    threads=None, image_size=32):
    if threads:
        torch.set_num_threads(threads)
    net = NoiseLevelEstimator()
    ds, batches = _batches(data, split, image_size, batch_size, seed=2)
    cfg = TrainConfig(steps=steps, lr=lr, ema_decay=0.999, precision="fp32",
                      extra=dict(data=str(data), batch_size=batch_size, image_size=image_size))
    out = Path(out)
    trainer = Trainer(net, lambda m, batch: estimator_loss(batch[0].to(trainer.device), batch[1], m), out, cfg,
                      save_dtype=torch.float32,
                      on_checkpoint=lambda tr: save_estimator(_ema_copy(tr, net), out,
                                                              {"data": str(data), "steps": tr.step}),
                      ema_fallback=lambda: load_file(out / "model.safetensors"))
    for _ in trainer.run(batches(trainer.step), max_minutes=max_minutes):
        pass
    return trainer


def _ema_copy(trainer: Trainer, net: torch.nn.Module) -> torch.nn.Module:
    """A copy of the network holding the EMA weights (what gets shipped)."""
    import copy

    ema = copy.deepcopy(net).cpu()
    ema.load_state_dict({k: v.cpu() for k, v in trainer.ema_state(torch.float32).items()})
    return ema
