"""A Hub repo id or a local folder -> a sigma-space ``UNetDenoiser``, or one clear error.

Layouts: a diffusers pipeline folder (``unet/``, ``scheduler/``) or a flat model folder
(``config.json`` + weights + ``scheduler_config.json``, as the google/ddpm repos are).
Safety: only safetensors load without asking. A pickle checkpoint (``.bin``) needs
``allow_pickle=True`` and is then read by diffusers with ``torch.load(weights_only=True)``.
No remote code is ever run. From the Hub only the JSON configs and the one weights file needed
are downloaded; with no network the local Hugging Face cache is used.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from .cache import cache_bound_from_env, mark_used, trim_hub_cache
from .denoiser import UNetDenoiser
from .registry import default_model_path

REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
SAFETENSORS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors")
PICKLE = ("diffusion_pytorch_model.bin",)


MAX_TRAIN_TIMESTEPS = 100_000    # DDPM-type models train with 1,000-4,000; more underflows the schedule


class ModelLoadError(Exception):
    """A loading problem, with a message that names the model and says what to do."""


def _read_json(path: Path, name: str) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        raise ModelLoadError(f"The {path.name} of '{name}' is not readable JSON: download or write it again.") from None
    if not isinstance(value, dict):
        raise ModelLoadError(f"The {path.name} of '{name}' must hold a JSON object.")
    return value


def check_configs(name: str, unet_dir: Path, sched_file: Path | None, max_side: int | None = None):
    """The configs' values a loader can trust, read before any weights: a UNet2DModel, an image side within
    ``max_side`` (a server's bound), a training schedule of a sane length. ModelLoadError otherwise."""
    config = _read_json(unet_dir / "config.json", name)
    if config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise ModelLoadError(f"'{name}' is a {config.get('_class_name')}, not a UNet2DModel: only DDPM-type "
                             f"pixel-space UNets are supported")
    side = config.get("sample_size", 32)
    sides = side if isinstance(side, (list, tuple)) else [side]
    if not sides or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v for v in sides):
        raise ModelLoadError(f"'{name}' has an invalid sample_size in its config: {side!r}")
    if max_side is not None and max(sides) > max_side:
        raise ModelLoadError(f"'{name}' makes {max(sides)}x{max(sides)} images; this server runs models of at most "
                             f"{max_side}x{max_side} pixels. Run it from the command line or on a GPU.")
    sched = _read_json(sched_file, name) if sched_file else {}
    steps = sched.get("num_train_timesteps", sched.get("timesteps", 1000))
    if isinstance(steps, bool) or not isinstance(steps, int) or not 2 <= steps <= MAX_TRAIN_TIMESTEPS:
        raise ModelLoadError(f"'{name}' has num_train_timesteps {steps!r} in its scheduler config; a DDPM-type "
                             f"model has from 2 to {MAX_TRAIN_TIMESTEPS:,}.")
    return config, sched


def _is_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def accelerator_state():
    """accelerate's process state: this process's device, its rank among the processes ``accelerate launch``
    (or torchrun) started, and their number. Several processes without a GPU share the work over gloo on
    the CPU, which accelerate does only when told ``cpu`` at the state's first creation: here."""
    from accelerate import PartialState

    return PartialState(cpu=int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available())


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The accelerator accelerate finds (CUDA, MPS) or the CPU; an explicit device wins."""
    if device is not None:
        return torch.device(device)
    return accelerator_state().device


def _find_layout(folder: Path) -> tuple[Path, Path | None]:
    """(unet folder, scheduler config file or None)."""
    unet = folder / "unet" if (folder / "unet" / "config.json").exists() else folder
    if not (unet / "config.json").exists():
        raise FileNotFoundError
    for sched in (folder / "scheduler" / "scheduler_config.json", folder / "scheduler_config.json"):
        if sched.exists():
            return unet, sched
    return unet, None


def _download(repo_id: str, revision: str | None, allow_pickle: bool, offline: bool, cache_dir,
              max_side: int | None = None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    def fetch(patterns, local_only):
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns,
                                      local_files_only=local_only, cache_dir=cache_dir))

    try:
        # Without a network huggingface_hub falls back to its cache by itself.
        folder = fetch(["*.json"], offline)
        try:
            unet_dir, sched_file = _find_layout(folder)
        except FileNotFoundError:
            raise ModelLoadError(f"Hub repo '{repo_id}' has no diffusers UNet config (config.json or unet/config.json)")
        check_configs(repo_id, unet_dir, sched_file, max_side)      # before the weights are downloaded
        sub = unet_dir.relative_to(folder).as_posix()
        prefix = "" if sub == "." else sub + "/"
        wanted = [prefix + SAFETENSORS[0]] + ([prefix + PICKLE[0]] if allow_pickle else [])
        folder = fetch(wanted, offline)
        return folder
    except ModelLoadError:
        raise
    except RepositoryNotFoundError:
        raise ModelLoadError(f"There is no Hub repo '{repo_id}' (or it is private: set HF_TOKEN). Check the id.")
    except GatedRepoError:
        raise ModelLoadError(f"Hub repo '{repo_id}' is gated: accept its terms on huggingface.co and set HF_TOKEN.")
    except RevisionNotFoundError:
        raise ModelLoadError(f"Hub repo '{repo_id}' has no revision '{revision}'.")
    except LocalEntryNotFoundError:
        raise ModelLoadError(
            f"Model '{repo_id}' is not in the local Hugging Face cache and the Hub cannot be reached. "
            f"Connect to the internet once to download it, or choose a local model folder.")
    except (OSError, ConnectionError, TimeoutError) as e:
        raise ModelLoadError(f"Could not download '{repo_id}' from the Hub: {e}")


def _resolve_source(source) -> tuple[str, Path | None]:
    """(display name, local folder or None for a Hub id)."""
    if source is None or str(source) in ("", "default"):
        p = default_model_path()
        return "embedded default", p
    s = str(source).strip()
    p = Path(s).expanduser()
    if p.is_dir():
        return s, p
    looks_like_path = s.startswith((".", "/", "~")) or "\\" in s or s.count("/") != 1 or p.suffix != "" and p.exists()
    if looks_like_path or not REPO_ID.match(s) or ".." in s:
        if p.exists():
            raise ModelLoadError(f"'{s}' is a file, not a model folder: give the folder that holds config.json")
        raise ModelLoadError(f"'{s}' is neither an existing model folder nor a Hub repo id like 'google/ddpm-cifar10-32'")
    return s, None


def _weights_kind(unet_dir: Path) -> str:
    if any((unet_dir / f).exists() for f in SAFETENSORS):
        return "safetensors"
    if any((unet_dir / f).exists() for f in PICKLE):
        return "pickle"
    return "none"


def load_model(source: str | Path | None = None, *, device: str | torch.device | None = None,
               dtype: torch.dtype = torch.float32, allow_pickle: bool = False, revision: str | None = None,
               offline: bool | None = None, cache_dir: str | Path | None = None,
               max_cache_bytes: int | None = None, max_side: int | None = None,
               nlc: str | Path | None = None) -> UNetDenoiser:
    """Load a diffusers UNet2DModel (DDPM type) as a sigma-space denoiser.

    source: a local folder, a Hub repo id, or None for the embedded default model.
    dtype: torch.float16 halves memory on a GPU; the CPU always computes in float32.
    max_cache_bytes: after a Hub load, trim the Hub cache to this size, least recently used repos
    first (default: ``NOISECORR_HUB_CACHE_GB``, unset = no bound; see ``models/cache.py``).
    max_side: refuse, before reading any weights, a model whose images are larger (a server's bound).
    nlc: a folder or Hub repo id holding NLC weights for this model (``registry.nlc_for`` checks they are its own).
    """
    from diffusers import DDPMScheduler, UNet2DModel

    name, folder = _resolve_source(source)
    source_is_hub = folder is None
    if folder is None:
        folder = _download(name, revision, allow_pickle, _is_offline() if offline is None else offline, cache_dir,
                           max_side)
        bound = cache_bound_from_env() if max_cache_bytes is None else max_cache_bytes
        if bound is not None:
            mark_used(folder)
            trim_hub_cache(bound, cache_dir, keep=(name,))
    try:
        unet_dir, sched_file = _find_layout(folder)
    except FileNotFoundError:
        hint = " Train it with `python -m noisecorr_app train denoiser`." if name == "embedded default" else ""
        where = "" if source_is_hub else f" ({folder})"
        raise ModelLoadError(f"'{name}'{where} holds no diffusers UNet config (config.json or unet/config.json).{hint}")
    kind = _weights_kind(unet_dir)
    if kind == "none":
        if source_is_hub:       # only safetensors are downloaded unless pickle was allowed
            raise ModelLoadError(
                f"Hub repo '{name}' has no safetensors weights ({SAFETENSORS[0]}). If it ships only a pickle "
                f"checkpoint (.bin), load it only if you trust the source: pass --allow-pickle.")
        raise ModelLoadError(f"'{name}' has a config but no weights file ({SAFETENSORS[0]}) in {unet_dir}")
    if kind == "pickle" and not allow_pickle:
        raise ModelLoadError(
            f"'{name}' ships only a pickle checkpoint ({PICKLE[0]}), which can run code when opened. "
            f"Load it only if you trust the source: pass --allow-pickle (it is then read with weights_only=True).")
    config, sched_cfg = check_configs(name, unet_dir, sched_file, max_side)
    dev = resolve_device(device)
    if dev.type == "cpu":
        dtype = torch.float32
    try:
        unet = UNet2DModel.from_pretrained(unet_dir, use_safetensors=(kind == "safetensors"), torch_dtype=dtype)
    except Exception as e:  # corrupt file, wrong shapes, truncated download: all one message
        where = "" if source_is_hub else f" in {unet_dir}"
        raise ModelLoadError(f"The weights of '{name}'{where} could not be read ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:200]}). The file may be corrupt or incomplete: "
                             f"download or train it again.") from None
    unet = unet.to(dev).eval().requires_grad_(False)
    if dev.type == "cpu":
        # oneDNN's convolutions run faster on channels_last weights here (a batch-4 network call
        # on 2 cores, 9 interleaved pairs: median 13% less time; same outputs to 3e-6); the
        # denoiser hands out contiguous tensors again
        unet = unet.to(memory_format=torch.channels_last)
    if "timesteps" in sched_cfg and "num_train_timesteps" not in sched_cfg:   # pre-1.0 diffusers name
        sched_cfg["num_train_timesteps"] = sched_cfg["timesteps"]
    sched = DDPMScheduler.from_config({k: v for k, v in sched_cfg.items() if not k.startswith("_")})
    if not bool((sched.alphas_cumprod > 0).all()) or not bool(torch.isfinite(sched.alphas_cumprod).all()):
        raise ModelLoadError(f"The noise schedule of '{name}' reaches zero signal (its scheduler config gives "
                             f"alphas_cumprod of 0): not a schedule a sampler can follow.")
    extra_file = folder / "noisecorr.json"
    extra = _read_json(extra_file, name) if extra_file.exists() else {}
    num_embeds = config.get("num_class_embeds")
    num_classes = extra.get("num_classes", num_embeds)
    return UNetDenoiser(unet=unet, alphas_cumprod=sched.alphas_cumprod,
                        prediction_type=sched.config.prediction_type, num_classes=num_classes,
                        null_label=extra.get("null_class") if num_embeds and num_classes and num_embeds > num_classes else None,
                        null_timestep=extra.get("null_timestep"), class_names=extra.get("class_names"),
                        clip_sample=bool(sched.config.clip_sample),
                        name=name, info={"folder": str(folder), **extra, **({"nlc": str(nlc)} if nlc else {})})
