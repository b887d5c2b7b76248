"""Loading from folders and the (offline) Hub cache; every failure is one clear message."""
import json

import numpy as np
import shutil
import time
from pathlib import Path

import pytest
import torch
from conftest import save_tiny_model

from noisecorr_app.cli import main
from noisecorr_app.models.denoiser import Cond
from noisecorr_app.models.loading import ModelLoadError, load_model
from noisecorr_app.sampling.guidance import Guided
from noisecorr_app.sampling.run import sample


@pytest.mark.parametrize("layout", ["pipeline", "flat"])
def test_folder_round_trip(tmp_path, layout):
    folder = save_tiny_model(tmp_path / "m", layout=layout)
    model = load_model(folder, device="cpu")
    assert model.sample_shape == (3, 8, 8) and model.num_classes is None
    x = torch.randn(2, 3, 8, 8)
    eps = model.eps(x, torch.tensor([1.0, 10.0]))
    # the same network called by hand: z = x / sqrt(1 + sigma^2) at t(sigma)
    t = model.timestep(torch.tensor([1.0, 10.0]))
    ref = model.unet(x / torch.tensor([2.0, 101.0]).sqrt().view(2, 1, 1, 1), t).sample
    torch.testing.assert_close(eps, ref)


def test_timestep_inverts_the_training_grid(tiny_model_dir):
    model = load_model(tiny_model_dir, device="cpu")
    t = torch.tensor([0, 1, 10, 500, 999])
    assert torch.equal(model.timestep(model.sigma_of_timestep(t)), t.float())
    mid = (model.sigma_of_timestep(torch.tensor([10])) * model.sigma_of_timestep(torch.tensor([11]))).sqrt()
    assert 10 < float(model.timestep(mid)) < 11


def _cached_hub_repo(cache, repo_id, source):
    """Lay out a folder as huggingface_hub caches a downloaded repo."""
    snap = cache / f"models--{repo_id.replace('/', '--')}" / "snapshots" / ("a" * 40)
    shutil.copytree(source, snap)
    (snap.parents[1] / "refs").mkdir(parents=True)
    (snap.parents[1] / "refs" / "main").write_text("a" * 40)
    return cache


def test_cpu_channels_last_changes_no_output(tiny_model_dir):
    """On the CPU the UNet runs channels_last (faster convolutions); what the denoiser hands out is
    the plain diffusers model's output, in the standard layout (r_theta trains on the features)."""
    from diffusers import UNet2DModel

    model = load_model(tiny_model_dir, device="cpu")
    assert model.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    plain = UNet2DModel.from_pretrained(tiny_model_dir / "unet").eval()
    x = torch.randn(3, *model.sample_shape, generator=torch.Generator().manual_seed(0)) * 2.0
    sigma = torch.tensor([0.5, 2.0, 10.0])
    eps, feats = model.eps_and_features(x, sigma)
    assert eps.is_contiguous() and feats.is_contiguous() and model.features(x, sigma).is_contiguous()
    with torch.no_grad():
        z = x / (1 + sigma.view(-1, 1, 1, 1) ** 2).sqrt()
        expected = plain(z, model.timestep(sigma)).sample
    torch.testing.assert_close(eps, expected, rtol=1e-4, atol=1e-5)


def test_hub_id_loads_from_the_local_cache_offline(tmp_path, tiny_model_dir):
    cache = _cached_hub_repo(tmp_path / "hf", "someone/tiny-ddpm", tiny_model_dir)
    model = load_model("someone/tiny-ddpm", device="cpu", offline=True, cache_dir=cache)
    assert model.name == "someone/tiny-ddpm" and model.sample_shape == (3, 8, 8)


def test_hub_id_not_cached_offline_is_explained(tmp_path):
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache"):
        load_model("someone/not-cached", device="cpu", offline=True, cache_dir=tmp_path / "hf")


@pytest.mark.parametrize("source,msg", [
    ("no/such/folder", "neither an existing model folder nor a Hub repo id"),
    ("../../no-such-dir-xyz", "neither an existing model folder nor a Hub repo id"),
    ("bad id!/x", "neither an existing model folder nor a Hub repo id"),
])
def test_bad_sources(source, msg):
    with pytest.raises(ModelLoadError, match=msg):
        load_model(source, device="cpu")


def test_a_file_is_not_a_model(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="is a file, not a model folder"):
        load_model(str(f), device="cpu")


def test_folder_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="holds no diffusers UNet config"):
        load_model(tmp_path / "empty", device="cpu")


def test_corrupt_safetensors_is_explained(tmp_path):
    folder = save_tiny_model(tmp_path / "m")
    w = folder / "unet" / "diffusion_pytorch_model.safetensors"
    w.write_bytes(w.read_bytes()[: len(w.read_bytes()) // 2])        # a truncated download
    with pytest.raises(ModelLoadError, match="corrupt or incomplete"):
        load_model(folder, device="cpu")


def test_pickle_only_needs_explicit_opt_in(tmp_path):
    from conftest import tiny_unet
    from diffusers import DDPMScheduler

    folder = tmp_path / "pickled"
    tiny_unet().save_pretrained(folder, safe_serialization=False)
    DDPMScheduler().save_pretrained(folder)
    assert (folder / "diffusion_pytorch_model.bin").exists()
    with pytest.raises(ModelLoadError, match="only a pickle checkpoint"):
        load_model(folder, device="cpu")
    model = load_model(folder, device="cpu", allow_pickle=True)
    assert model.eps(torch.randn(1, 3, 8, 8), torch.tensor([1.0])).shape == (1, 3, 8, 8)


def test_class_conditional_model_with_nulls(tmp_path):
    folder = save_tiny_model(tmp_path / "c", num_class_embeds=4,
                             extra={"num_classes": 3, "null_class": 3, "null_timestep": 10000,
                                    "class_names": ["a", "b", "c"]})
    model = load_model(folder, device="cpu")
    assert model.num_classes == 3 and model.supports_null_label and model.supports_null_noise
    x, s = torch.randn(2, 3, 8, 8), torch.tensor([2.0, 2.0])
    lab = Cond(labels=torch.tensor([0, 1]))
    e_c = model.eps(x, s, lab)
    e_u = model.eps(x, s, Cond(labels=torch.tensor([0, 1]), null_label=torch.tensor([True, True])))
    e_n = model.eps(x, s, Cond(labels=torch.tensor([0, 1]), null_noise=torch.tensor([True, True])))
    assert not torch.allclose(e_c, e_u) and not torch.allclose(e_c, e_n)
    # guidance batches its passes into one call and mixes them as METHODS.md section 4 says
    g = Guided(model, cfg_scale=2.0, nag_scale=3.0).eps(x, s, lab)
    torch.testing.assert_close(g, e_c + (e_c - e_u) + 3.0 * (e_c - e_n), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(Guided(model, 1.0, 0.0).eps(x, s, lab), e_c)
    plain = sample(model, steps=4, n=2, labels=[0, 1], seed=0)
    nag0 = sample(model, steps=4, n=2, labels=[0, 1], seed=0, nag_scale=0.0)
    cfg = sample(model, steps=4, n=2, labels=[0, 1], seed=0, cfg_scale=2.0, nag_scale=1.0)
    assert torch.equal(plain.images, nag0.images) and cfg.nfe_per_image == 12


def test_a_model_recommends_its_own_method_weights(tmp_path):
    """noisecorr.json's method_defaults become the CLI's, the app's and the benchmark's defaults for that
    model; an explicit setting still wins, and a bad recommendation is refused naming the file."""
    from noisecorr_app.methods import DEFAULTS, setup
    from noisecorr_app.ui.generate import default_nag_weight, parse_generate

    extra = {"num_classes": 3, "null_class": 3, "null_timestep": 10000,
             "method_defaults": {"nag_scale": 0.5, "note": "measured"}}
    model = load_model(save_tiny_model(tmp_path / "m", num_class_embeds=4, extra=extra), device="cpu")
    assert setup("nag", model).options["nag_scale"] == 0.5
    assert setup("nag", model, nag_scale=2.0).options["nag_scale"] == 2.0
    assert default_nag_weight("nag", model) == 0.5 and default_nag_weight("nag") == DEFAULTS["nag_scale"]
    assert parse_generate(model, "any class", "ddim", 4, 0, 1, "nag").params["nag_scale"] == 0.5
    plain = load_model(save_tiny_model(tmp_path / "p", num_class_embeds=4, extra={**extra, "method_defaults": {}}),
                       device="cpu")
    assert setup("nag", plain).options["nag_scale"] == DEFAULTS["nag_scale"]
    for i, wrong in enumerate(({"es_lambda": 7}, {"nag_scale": {"ten": 1.5}}, {"nag_scale": {"10": float("nan")}})):
        bad = load_model(save_tiny_model(tmp_path / f"b{i}", num_class_embeds=4,
                                         extra={**extra, "method_defaults": wrong}), device="cpu")
        with pytest.raises(ValueError, match="noisecorr.json, method_defaults"):
            setup("nag", bad)


def test_a_recommended_weight_can_depend_on_the_steps(tmp_path):
    """A step-keyed recommendation: each run takes the entry of the nearest step count (log scale), in
    the library, the app's request parser and slider, and the benchmark's record of its settings."""
    from noisecorr_app.methods import defaults_for, setup
    from noisecorr_app.ui.generate import followed_nag_weight, parse_generate

    extra = {"num_classes": 3, "null_class": 3, "null_timestep": 10000,
             "method_defaults": {"nag_scale": {"10": 1.5, "20": 0.5}}}
    model = load_model(save_tiny_model(tmp_path / "m", num_class_embeds=4, extra=extra), device="cpu")
    assert [defaults_for(model, s)["nag_scale"] for s in (4, 10, 14, 15, 20, 50)] == [1.5, 1.5, 1.5, 0.5, 0.5, 0.5]
    assert defaults_for(model)["nag_scale"] == 0.5                     # steps unknown: the app's 20
    assert setup("nag", model, steps=8).options["nag_scale"] == 1.5
    assert setup("nag", model, steps=8, nag_scale=2.0).options["nag_scale"] == 2.0
    assert parse_generate(model, "any class", "ddim", 10, 0, 1, "nag").params["nag_scale"] == 1.5
    assert parse_generate(model, "any class", "ddim", 30, 0, 1, "nag").params["nag_scale"] == 0.5
    # the app's slider follows the steps while it shows a recommendation, and keeps a weight the user chose
    assert followed_nag_weight(model, "nag", 10, 0.5) == 1.5 and followed_nag_weight(model, "nag", 20, 1.5) == 0.5
    assert followed_nag_weight(model, "nag", 10, 2.2) is None and followed_nag_weight(model, "es", 10, 0.5) is None


def test_the_cfg_slider_follows_the_class_with_the_models_recommendation(tmp_path):
    """Picking a class moves a CFG slider still at 1 to the model's recommended scale; 'any class' turns a
    slider still at that scale off; a scale the user chose stays. Without a recommendation (or a null
    class) the slider is left alone."""
    from noisecorr_app.methods import defaults_for
    from noisecorr_app.ui.generate import followed_cfg_scale

    extra = {"num_classes": 3, "null_class": 3, "null_timestep": 10000, "method_defaults": {"cfg_scale": 3.0}}
    model = load_model(save_tiny_model(tmp_path / "m", num_class_embeds=4, extra=extra), device="cpu")
    assert followed_cfg_scale(model, "1", 1) == 3.0 and followed_cfg_scale(model, "any class", 3) == 1.0
    assert followed_cfg_scale(model, "2", 3) is None and followed_cfg_scale(model, "1", 4.5) is None
    assert followed_cfg_scale(model, "any class", 4.5) is None and followed_cfg_scale(model, "1", "") is None
    plain = load_model(save_tiny_model(tmp_path / "p", num_class_embeds=4, extra={**extra, "method_defaults": {}}),
                       device="cpu")
    assert followed_cfg_scale(plain, "1", 1) is None
    bad = load_model(save_tiny_model(tmp_path / "b", num_class_embeds=4,
                                     extra={**extra, "method_defaults": {"cfg_scale": 1e9}}), device="cpu")
    with pytest.raises(ValueError, match="method_defaults: cfg_scale"):
        defaults_for(bad)
    assert followed_cfg_scale(bad, "1", 1) is None                     # the slider is left alone


def test_guidance_on_a_model_without_nulls_is_refused(tiny_model_dir):
    model = load_model(tiny_model_dir, device="cpu")
    with pytest.raises(ValueError, match="noise-condition dropout"):
        sample(model, steps=2, nag_scale=2.0)


def test_cli_sample_writes_images_and_trace(tmp_path, tiny_model_dir, capsys):
    from PIL import Image

    out, trace = tmp_path / "out", tmp_path / "trace.json"
    rc = main(["sample", "--model", str(tiny_model_dir), "--sampler", "dpmpp", "--steps", "5", "--n", "3",
               "--seed", "7", "--batch-size", "2", "--out", str(out), "--trace", str(trace), "--device", "cpu"])
    assert rc == 0
    files = sorted(out.glob("*.png"))
    assert [f.name for f in files] == ["seed000007.png", "seed000008.png", "seed000009.png"]
    assert Image.open(files[0]).size == (8, 8)
    doc = json.loads(trace.read_text())
    assert len(doc["steps"]) == 5 and doc["nfe_per_image"] == 5
    assert len(doc["steps"][0]["sigma_used_per_image"]) == 3
    assert doc["steps"][0]["sigma_scheduled"] > doc["steps"][-1]["sigma_scheduled"]


def test_cli_errors_are_one_line(tmp_path, tiny_model_dir, capsys):
    assert main(["sample", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert main(["sample", "--model", str(tiny_model_dir), "--steps", "0", "--out", str(tmp_path / "o"),
                 "--device", "cpu"]) == 2
    assert main(["sample", "--model", str(tiny_model_dir), "--class", "3", "--out", str(tmp_path / "o"),
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error:") == 3


def test_cli_methods_and_restore(tmp_path, tiny_model_dir):
    from PIL import Image

    from noisecorr_app.extras.nlc import LevelNet, save_level_net
    from noisecorr_app.models.loading import load_model

    folder = tmp_path / "m"
    shutil.copytree(tiny_model_dir, folder)
    model = load_model(folder, device="cpu")
    f = model.features(torch.zeros(1, 3, 8, 8), torch.tensor([1.0]))
    save_level_net(LevelNet(f.shape[1], f.shape[-1]), folder / "nlc", {})
    for method in ["nlc", "es", "ts", "self"]:
        out = tmp_path / method
        assert main(["sample", "--model", str(folder), "--steps", "3", "--n", "2", "--method", method,
                     "--out", str(out), "--trace", str(out / "t.json"), "--device", "cpu"]) == 0
        assert json.loads((out / "t.json").read_text())["settings"]["method"] == method
    # methods the model has no weights or training for are refused with a message
    assert main(["sample", "--model", str(folder), "--method", "nag", "--out", str(tmp_path / "x"), "--device", "cpu"]) == 2
    assert main(["sample", "--model", str(folder), "--method", "nlc-lut", "--out", str(tmp_path / "x"), "--device", "cpu"]) == 2
    # restore: degrade an image, restore it, write measured / restored / reference PNGs
    img = tmp_path / "in.png"
    Image.fromarray((np.random.default_rng(0).random((20, 30, 3)) * 255).astype(np.uint8)).save(img)
    rc = main(["restore", "--model", str(folder), "--task", "sr2", "--input", str(img), "--method", "ddnm",
               "--steps", "4", "--out", str(tmp_path / "r"), "--device", "cpu"])
    assert rc == 0 and len(list((tmp_path / "r").glob("*.png"))) == 3
    assert main(["restore", "--model", str(folder), "--task", "inpaint", "--input", str(tmp_path / "none.png"),
                 "--out", str(tmp_path / "r2"), "--device", "cpu"]) == 2


def _cached_hub_repo_blobs(cache, repo_id, source, accessed):
    """huggingface_hub's real cache layout: content in blobs/, snapshot entries are symlinks."""
    import hashlib
    import os

    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()     # commits are unique across repos
    snap = repo / "snapshots" / commit
    for f in Path(source).rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(data)
            os.utime(blob, (accessed, accessed))
            link = snap / f.relative_to(source)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return repo


def test_hub_cache_bound_drops_least_recently_used_repos(tmp_path, tiny_model_dir):
    """A server that loads visitors' Hub ids keeps its cache under a bound (issue 7)."""
    from huggingface_hub import scan_cache_dir

    cache = tmp_path / "hf"
    for i, name in enumerate(["old", "middle", "new"]):   # accessed 3, 2 and 1 hours ago
        _cached_hub_repo_blobs(cache, f"someone/{name}", tiny_model_dir, time.time() - 3600 * (3 - i))
    one_repo = scan_cache_dir(cache).size_on_disk // 3
    # room for two repos: loading 'old' makes it the most recent; 'middle' (now the oldest) goes
    model = load_model("someone/old", device="cpu", offline=True, cache_dir=cache, max_cache_bytes=2 * one_repo)
    assert model.name == "someone/old"
    left = {r.repo_id for r in scan_cache_dir(cache).repos}
    assert left == {"someone/old", "someone/new"}
    # a bound smaller than the repo just loaded keeps that repo anyway
    load_model("someone/new", device="cpu", offline=True, cache_dir=cache, max_cache_bytes=1)
    assert {r.repo_id for r in scan_cache_dir(cache).repos} == {"someone/new"}


def test_hub_cache_bound_from_env(monkeypatch):
    from noisecorr_app.models.cache import cache_bound_from_env

    monkeypatch.setenv("NOISECORR_HUB_CACHE_GB", "2.5")
    assert cache_bound_from_env() == 2_500_000_000
    monkeypatch.setenv("NOISECORR_HUB_CACHE_GB", "lots")
    with pytest.raises(ValueError, match="number of GB"):
        cache_bound_from_env()
    monkeypatch.delenv("NOISECORR_HUB_CACHE_GB")
    assert cache_bound_from_env() is None
