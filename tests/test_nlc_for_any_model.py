"""NLC for any model: trained without a dataset on the model's own samples, saved with the SHA-1 of the
UNet weights it belongs to, found again for that model (its folder, noisecorr's cache for a Hub model, or a
folder named for it) and refused for any other."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import save_tiny_model


def _train(model, *extra, steps=2):
    from noisecorr_app.cli import main

    return main(["train", "nlc", "--model", str(model), "--data-free", "--pool", "6", "--pool-steps", "2",
                 "--batch-size", "4", "--steps", str(steps), "--threads", "1", *extra])


def _other_model(folder):
    """The tiny model with one weight changed: the same architecture, another model."""
    from safetensors.torch import load_file, save_file

    save_tiny_model(folder)
    path = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights = load_file(path)
    name = next(k for k in weights if k.endswith("bias"))
    weights[name] = weights[name] + 0.01
    save_file(weights, path)
    return folder


def test_data_free_nlc_trains_resumes_and_belongs_to_its_model(tmp_path, monkeypatch):
    from noisecorr_app.methods import METHODS
    from noisecorr_app.models.loading import load_model
    from noisecorr_app.models.registry import nlc_for, weights_sha1

    monkeypatch.setenv("NOISECORR_CACHE", str(tmp_path / "cache"))
    model_dir = save_tiny_model(tmp_path / "model")
    assert _train(model_dir) == 0
    nlc = model_dir / "nlc"
    record = json.loads((nlc / "config.json").read_text())["info"]
    model = load_model(model_dir, device="cpu")
    assert record["denoiser_sha1"] == weights_sha1(model) and record["data"].startswith("samples of the model itself")
    card = (nlc / "README.md").read_text()            # the card: which weights it belongs to, how it was made
    assert weights_sha1(model) in card and "train nlc --model" in card and "--data-free" in card
    chunks = sorted((tmp_path / "cache" / "model-samples").rglob("*.safetensors"))
    assert len(chunks) == 1                                     # 6 images, one chunk
    stamp = chunks[0].stat().st_mtime_ns

    assert _train(model_dir, steps=4) == 0                      # the same command resumes
    assert json.loads((nlc / "training" / "state.json").read_text())["step"] == 4
    assert chunks[0].stat().st_mtime_ns == stamp                # the samples came from the cache

    assert nlc_for(model) == (nlc, None) and METHODS["nlc"].available(model)
    other = load_model(_other_model(tmp_path / "other"), device="cpu", nlc=nlc)
    found, why = nlc_for(other)
    assert found is None and "trained for another model" in why
    assert not METHODS["nlc"].available(other) and "trained for another model" in METHODS["nlc"].why_unavailable(other)


def test_a_hub_models_nlc_lives_in_noisecorrs_cache_and_is_found_there(tmp_path, monkeypatch):
    import huggingface_hub.constants

    from noisecorr_app.methods import METHODS
    from noisecorr_app.models.loading import load_model

    snap = tmp_path / "hub" / "models--someone--tiny" / "snapshots" / ("b" * 40)
    save_tiny_model(snap, layout="flat")
    (snap.parents[1] / "refs").mkdir(parents=True)
    (snap.parents[1] / "refs" / "main").write_text("b" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("NOISECORR_CACHE", str(tmp_path / "cache"))
    assert not METHODS["nlc"].available(load_model("someone/tiny", device="cpu"))
    assert _train("someone/tiny") == 0
    home = tmp_path / "cache" / "nlc" / "someone--tiny"
    assert json.loads((home / "config.json").read_text())["info"]["revision"] == "b" * 40
    assert not (snap / "nlc").exists()                          # the Hub cache is left as downloaded
    assert METHODS["nlc"].available(load_model("someone/tiny", device="cpu"))


def test_nlc_refuses_an_out_of_another_kind(tmp_path, capsys):
    from noisecorr_app.cli import main

    model_dir = save_tiny_model(tmp_path / "model")
    assert main(["train", "nlc", "--model", str(model_dir), "--data-free", "--out", str(model_dir)]) == 2
    assert "holds a diffusion model (UNet), not NLC weights" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--pool", "--pool-steps"])
def test_data_free_settings_are_checked(tmp_path, capsys, flag):
    from noisecorr_app.cli import main

    assert main(["train", "nlc", "--model", str(save_tiny_model(tmp_path / "m")), "--data-free", flag, "0"]) == 2
    assert "--pool and --pool-steps must be at least 1" in capsys.readouterr().err


def test_the_cli_takes_nlc_weights_named_for_a_model_and_refuses_another_models(tmp_path, monkeypatch, capsys):
    from noisecorr_app.cli import main

    monkeypatch.setenv("NOISECORR_CACHE", str(tmp_path / "cache"))
    model_dir = save_tiny_model(tmp_path / "model")
    assert _train(model_dir, "--out", str(tmp_path / "its-nlc")) == 0
    common = ["sample", "--method", "nlc", "--steps", "2", "--n", "1", "--nlc", str(tmp_path / "its-nlc")]
    assert main(common + ["--model", str(model_dir), "--out", str(tmp_path / "ok")]) == 0
    assert sorted(p.suffix for p in (tmp_path / "ok").iterdir())[-1] == ".png"
    capsys.readouterr()
    assert main(common + ["--model", str(_other_model(tmp_path / "other")), "--out", str(tmp_path / "no")]) == 2
    err = capsys.readouterr().err
    assert "trained for another model" in err and "Traceback" not in err


def test_the_app_trains_nlc_for_a_model_that_has_none(tmp_path, monkeypatch):
    """Where training is allowed (a GPU; here NOISECORR_APP_TRAINING=1 on a tiny model), one click trains NLC
    from the model's own images and NLC becomes a correction of that model; where it is not (a CPU), the
    page says how long it would take and gives the command."""
    from gradio_client import Client

    from noisecorr_app.ui.app import build_demo, launch

    monkeypatch.setenv("NOISECORR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("NOISECORR_APP_TRAINING_SECONDS", "5")
    model_dir = save_tiny_model(tmp_path / "model")
    demo = build_demo(str(model_dir), device="cpu")          # training not allowed: the command instead
    said = next(b.value for b in demo.blocks.values() if getattr(b, "elem_id", None) == "nlc-status")
    assert "would take" in said and "train nlc --model" in said and "--data-free" in said

    monkeypatch.setenv("NOISECORR_APP_TRAINING", "1")
    demo = build_demo(str(model_dir), device="cpu")
    launch(demo, prevent_thread_lock=True, server_port=None, quiet=True)
    try:
        client = Client(demo.local_url, verbose=False)
        outputs = client.predict(api_name="/train_nlc")
        assert outputs[0].startswith("NLC trained for this model")
        assert (model_dir / "nlc" / "model.safetensors").exists()
        slider, base, fixed, metrics, *_ = client.predict("any class", "ddim", 2, 0, 1, "nlc", 1.0, 1.0, 1.0,
                                                          api_name="/generate")
        assert "corrected (nlc)" in metrics
    finally:
        demo.close()


def test_accelerate_launch_shares_data_free_nlc_training(tmp_path):
    """`train nlc` under `accelerate launch` with 2 processes: the model's samples are shared chunk by chunk and
    come out identical, each step's gradient is averaged over the processes' rows of the same batch, so the
    weights equal a one-process run's up to float rounding."""
    import os
    import subprocess

    from conftest import LAUNCHERS, ROOT
    from safetensors.torch import load_file

    model_dir = save_tiny_model(tmp_path / "model")
    runs = {}
    for name, launcher in LAUNCHERS.items():
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "NOISECORR_CACHE": str(tmp_path / name)}
        args = ["train", "nlc", "--model", str(model_dir), "--data-free", "--pool", "200", "--pool-steps", "2",
                "--batch-size", "4", "--steps", "3", "--threads", "1", "--out", str(tmp_path / name / "nlc")]
        done = subprocess.run([*launcher, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        assert ("2 processes shared the work" in done.stdout) == (name == "two"), done.stdout[-2000:]
        chunks = sorted((tmp_path / name / "model-samples").rglob("*.safetensors"))
        assert len(chunks) == 2                                 # 200 images: two chunks of 100
        runs[name] = ([load_file(c)["images"] for c in chunks], load_file(tmp_path / name / "nlc" / "model.safetensors"))
    (pool_one, weights_one), (pool_two, weights_two) = runs["one"], runs["two"]
    assert all(a.equal(b) for a, b in zip(pool_one, pool_two))
    assert weights_one.keys() == weights_two.keys()
    for k in weights_one:
        assert torch.allclose(weights_one[k], weights_two[k], rtol=1e-4, atol=1e-6), k
    state = json.loads((tmp_path / "two" / "nlc" / "training" / "state.json").read_text())
    assert state["step"] == 3
