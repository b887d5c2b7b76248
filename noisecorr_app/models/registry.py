"""The embedded default model and the Hub presets offered in the app."""
from __future__ import annotations

from pathlib import Path

WEIGHTS = Path(__file__).resolve().parents[2] / "weights"
DEFAULT_MODEL = WEIGHTS / "noisecorr-ddpm-cifar10"

# (label, source, note) for the app's model picker. Hub repos ship pickle weights, some also safetensors.
HUB_PRESETS = [
    ("google/ddpm-cifar10-32", "google/ddpm-cifar10-32", "35.7M params, unconditional CIFAR-10, 32x32"),
    ("google/ddpm-ema-celebahq-256", "google/ddpm-ema-celebahq-256", "114M params, faces, 256x256 (GPU advised)"),
    ("google/ddpm-ema-church-256", "google/ddpm-ema-church-256", "114M params, churches, 256x256 (GPU advised)"),
    ("google/ddpm-ema-bedroom-256", "google/ddpm-ema-bedroom-256", "114M params, bedrooms, 256x256 (GPU advised)"),
]


def default_model_path() -> Path:
    return DEFAULT_MODEL

CIFAR_ESTIMATOR = WEIGHTS / "cifar10-noise-estimator"


def extras_for(model) -> dict[str, Path]:
    """The trained extras a model has: its NLC network and lookup table (``nlc_for``) and a noise-level
    estimator (its own, else the CIFAR-10 one for 32x32 RGB models, whose data it matches).
    Training-free corrections need nothing and are always available."""
    from .denoiser import as_denoiser

    model = as_denoiser(model)
    folder = Path(model.info["folder"]) if model.info.get("folder") else None
    found = {}
    nlc, _ = nlc_for(model)
    if nlc is not None:
        found["nlc"] = nlc
        if (nlc / "lut" / "table.safetensors").exists():
            found["nlc-lut"] = nlc / "lut"
    if folder and (folder / "estimator" / "model.safetensors").exists():
        found["estimator"] = folder / "estimator"
    elif tuple(model.sample_shape or ()) == (3, 32, 32) and (CIFAR_ESTIMATOR / "model.safetensors").exists():
        found["estimator"] = CIFAR_ESTIMATOR
    return found


# -- NLC weights and the model they belong to ---------------------------------------------------------
def nlc_home(model) -> Path:
    """Where ``train nlc`` writes a model's NLC weights by default: beside the model in its own folder, or,
    for a Hub model (its folder is the Hub cache's), in noisecorr's cache under the repo's name."""
    import os

    folder = Path(model.info.get("folder") or ".")
    if "snapshots" in folder.parts:
        cache = Path(os.environ.get("NOISECORR_CACHE", Path.home() / ".cache" / "noisecorr"))
        return cache / "nlc" / str(model.name).replace("/", "--")
    return folder / "nlc"


def nlc_candidates(model) -> list[Path | str]:
    """Where NLC weights for a model may be, first found first: the one named for it (``load_model(nlc=...)``,
    or ``"nlc"`` in its noisecorr.json: a folder, relative to the model's, or a Hub repo id), then the
    default home."""
    folder = Path(model.info.get("folder") or ".")
    named = model.info.get("nlc")
    out: list[Path | str] = []
    if named:
        path = Path(str(named)).expanduser()
        out.append(path if path.is_absolute() or path.exists() else
                   (folder / path if (folder / path).exists() else str(named)))
    return out + [nlc_home(model)]


def nlc_for(model) -> tuple[Path | None, str | None]:
    """(the folder of NLC weights trained for this model, None), or (None, why not). NLC weights record the
    SHA-1 of the UNet weights they were trained on; weights for another model are refused, not used."""
    reasons = []
    for place in nlc_candidates(model):
        folder = _hub_extra(place) if isinstance(place, str) else place
        if folder is None or not (folder / "model.safetensors").exists():
            if isinstance(place, str):
                reasons.append(f"the NLC weights named for it ({place}) are not available here")
            continue
        recorded = nlc_record(folder).get("denoiser_sha1")
        if recorded is None or recorded == weights_sha1(model):
            return folder, None
        reasons.append(f"the NLC weights at {_shown(place)} were trained for another model (or an earlier state of "
                       f"this one): train them again with `train nlc`")
    return None, ("; ".join(reasons) or None)


def nlc_record(folder) -> dict:
    """What a folder of NLC weights says of itself (its config's ``info``): the denoiser and its weights'
    SHA-1, how it was trained. Empty when unreadable."""
    import json

    try:
        info = json.loads((Path(folder) / "config.json").read_text()).get("info", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return info if isinstance(info, dict) else {}


def _shown(place) -> str:
    return place if isinstance(place, str) else Path(place).name if "snapshots" in Path(place).parts else str(place)


def _hub_extra(repo_id: str) -> Path | None:
    """A Hub repo holding NLC weights (config.json, model.safetensors, lut/), from the Hub or its cache."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=["config.json", "model.safetensors", "lut/*", "README.md"]))
    except Exception:
        try:
            return Path(snapshot_download(repo_id, local_files_only=True))
        except Exception:
            return None


_sha1_cache: dict = {}


def weights_sha1(model) -> str | None:
    """SHA-1 of the file holding a loaded model's UNet weights (remembered per file, size and time)."""
    from .cache import file_sha1

    folder = model.info.get("folder")
    if not folder:
        return None
    for sub in ("unet", "."):
        for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
                     "diffusion_pytorch_model.bin"):
            path = Path(folder) / sub / name
            if path.exists():
                st = path.stat()
                key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
                if key not in _sha1_cache:
                    _sha1_cache[key] = file_sha1(path)
                return _sha1_cache[key]
    return None
