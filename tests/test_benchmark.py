"""The benchmarks `evaluate generation` and `evaluate restoration`, run through the CLI on tiny models:
JSON schema and values, resuming without recomputation, skipped methods, Markdown and plots."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import LAUNCHERS, ROOT, save_tiny_model
from PIL import Image

from noisecorr_app.cli import main
from noisecorr_app.evaluation import generation, restoration
from noisecorr_app.extras.classifier import CifarClassifier, save_classifier
from noisecorr_app.extras.estimator import NoiseLevelEstimator, save_estimator
from noisecorr_app.extras.nlc import LevelNet, save_level_net
from noisecorr_app.models.loading import load_model

CLASSES = ("cat", "dog", "frog")
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NOISECORR_CACHE", str(tmp_path / "cache"))


def as_16px(folder):
    """The tiny UNet is fully convolutional: declare 16x16 samples so SSIM's 11x11 window fits."""
    cfg = folder / "unet" / "config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "sample_size": 16}))
    return folder


@pytest.fixture(scope="module")
def equipped_model(tmp_path_factory):
    """A tiny 16x16 model with classifier-free NAG support, its own noise-level estimator and an NLC
    network (a non-zero r), but no NLC lookup table."""
    folder = as_16px(save_tiny_model(tmp_path_factory.mktemp("bench") / "m", extra={"null_timestep": 10000}))
    model = load_model(folder, device="cpu")
    torch.manual_seed(0)
    save_estimator(NoiseLevelEstimator(3, 8), folder / "estimator", {"test": True})
    f = model.features(torch.zeros(1, 3, 16, 16), torch.tensor([1.0]))
    net = LevelNet(f.shape[1], f.shape[-1])
    torch.nn.init.normal_(net.head[-1].weight, std=0.05)
    save_level_net(net, folder / "nlc", {"test": True})
    return folder


@pytest.fixture(scope="module")
def fid_setup(tmp_path_factory):
    """A tiny reference data set (train/ and test/ class folders) and a tiny classifier for FID-C10."""
    root = tmp_path_factory.mktemp("fid")
    rng = np.random.default_rng(0)
    for split, k in (("train", 4), ("test", 2)):
        for ci, c in enumerate(CLASSES):
            (root / "data" / split / c).mkdir(parents=True)
            for i in range(k):
                arr = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                arr[..., ci] = 255
                Image.fromarray(arr).save(root / "data" / split / c / f"{i}.png")
    torch.manual_seed(0)
    save_classifier(CifarClassifier((8, 16, 16, 32), len(CLASSES), list(CLASSES)).eval(), root / "clf",
                    {"test_accuracy": 0.5})
    return root / "data", root / "clf"


class Counter:
    """Counts the cells a benchmark actually computes (wrapping the real run_cell)."""

    def __init__(self, monkeypatch, module):
        self.calls, real = [], module.run_cell

        def counted(*args, **kw):
            self.calls.append(args[2] if module is restoration else args[1])
            return real(*args, **kw)

        monkeypatch.setattr(module, "run_cell", counted)


def generation_args(model, data, clf, tmp_path, methods="none,nag,nlc,nlc-lut,self,es", extra=(), plots=True):
    return ["evaluate", "generation", "--model", str(model), "--device", "cpu", "--threads", "1",
            "--samplers", "ddim,edm", "--steps", "2,3", "--methods", methods, "--n", "4", "--batch-size", "3",
            "--classifier", str(clf), "--data", str(data), "--kid-subsets", "2",
            "--json", str(tmp_path / "gen.json"), "--markdown", str(tmp_path / "gen.md"),
            *(["--plots", str(tmp_path / "plots")] if plots else []), *extra]


def test_generation_benchmark_rows_resume_and_outputs(equipped_model, fid_setup, tmp_path, monkeypatch, capsys, one_thread):
    data, clf = fid_setup
    counter = Counter(monkeypatch, generation)
    args = generation_args(equipped_model, data, clf, tmp_path)
    assert main(args) == 0
    doc = json.loads((tmp_path / "gen.json").read_text())
    assert "skipping nlc-lut" in capsys.readouterr().out
    assert doc["skipped"] == [{"what": "nlc-lut", "reason": doc["skipped"][0]["reason"]}]
    assert doc["command"].startswith("python -m noisecorr_app evaluate generation") and "--methods" in doc["command"]
    assert doc["model"] and doc["settings"]["n"] == 4 and doc["settings"]["weights"]
    rows = doc["rows"]
    assert len(rows) == 2 * 2 * 5 == len(counter.calls)
    assert {(r["sampler"], r["steps"], r["method"]) for r in rows} == {
        (s, k, m) for s in ("ddim", "edm") for k in (2, 3) for m in ("none", "nag", "nlc", "self", "es")}
    for r in rows:
        assert r["n"] == 4
        for key in ("fid", "kid", "noise_shift", "seconds_per_image"):
            assert math.isfinite(r[key]), (key, r)
        assert r["fid"] >= 0 and r["seconds_per_image"] > 0
        plain = r["steps"] if r["sampler"] == "ddim" else 2 * r["steps"] - 1     # Heun: 2 per step, 1 on the last
        assert r["nfe"] == pytest.approx(2 * plain if r["method"] == "nag" else plain)
        assert len(r["per_step"]["sigma_scheduled"]) == r["steps"] and all(r["per_step"]["sigma_est"])
    # NLC moves the level used; the plain sampler uses the schedule's
    by = {(r["sampler"], r["steps"], r["method"]): r for r in rows}
    plain = by[("ddim", 3, "none")]["per_step"]
    assert plain["sigma_used"] == pytest.approx(plain["sigma_scheduled"])
    assert by[("ddim", 3, "nlc")]["per_step"]["sigma_used"] != pytest.approx(plain["sigma_scheduled"])

    md = (tmp_path / "gen.md").read_text()
    assert doc["command"] in md and "| sampler | steps | method | FID-C10" in md and "skipped nlc-lut" in md
    assert md.count("\n| ddim |") + md.count("\n| edm |") == 20
    for name in ("fid_vs_steps.png", "noise_shift_ddim_2.png", "noise_shift_edm_3.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:8] == PNG

    # the same command again: nothing recomputed, rows untouched
    counter.calls.clear()
    assert main(args) == 0
    assert counter.calls == [] and json.loads((tmp_path / "gen.json").read_text())["rows"] == rows
    # one more method: only its cells run
    assert main(generation_args(equipped_model, data, clf, tmp_path, methods="none,nag,nlc,nlc-lut,self,es,ts",
                                 plots=False)) == 0
    assert counter.calls == ["ts"] * 4
    assert len(json.loads((tmp_path / "gen.json").read_text())["rows"]) == 24
    # other settings: refused (rows would not be comparable), unless started over
    capsys.readouterr()
    assert main(generation_args(equipped_model, data, clf, tmp_path, extra=("--seed", "5"), plots=False)) == 2
    assert "other settings" in capsys.readouterr().err
    counter.calls.clear()
    assert main(generation_args(equipped_model, data, clf, tmp_path, methods="none", extra=("--seed", "5", "--fresh"),
                                 plots=False)) == 0
    assert len(counter.calls) == 4 and len(json.loads((tmp_path / "gen.json").read_text())["rows"]) == 4


def test_generation_uses_and_records_step_dependent_weights(equipped_model, fid_setup, tmp_path, monkeypatch,
                                                           one_thread):
    """A model recommending a NAG weight per step count: each cell runs with its steps' weight, and the
    JSON's settings record the recommendation as the model gave it."""
    import shutil

    data, clf = fid_setup
    folder = shutil.copytree(equipped_model, tmp_path / "m")
    info = json.loads((folder / "noisecorr.json").read_text())
    (folder / "noisecorr.json").write_text(json.dumps({**info, "method_defaults": {"nag_scale": {"2": 0.0, "3": 1.0}}}))
    used, real = [], generation.setup

    def spy(method, model, steps=None, **params):
        ms = real(method, model, steps=steps, **params)
        used.append((steps, ms.options["nag_scale"]))
        return ms

    monkeypatch.setattr(generation, "setup", spy)
    assert main(generation_args(folder, data, clf, tmp_path, methods="nag", plots=False)) == 0
    assert sorted(set(used)) == [(2, 0.0), (3, 1.0)]
    doc = json.loads((tmp_path / "gen.json").read_text())
    assert doc["settings"]["method_params"]["nag_scale"] == {"2": 0.0, "3": 1.0}


def test_generation_cells_share_seeds(equipped_model, fid_setup, tmp_path, one_thread):
    """Epsilon scaling with lambda = 1 is the plain sampler: with the same seeds, every number agrees."""
    data, clf = fid_setup
    args = generation_args(equipped_model, data, clf, tmp_path, methods="none,es", extra=("--es-lambda", "1.0"),
                           plots=False)
    args[args.index("--samplers") + 1], args[args.index("--steps") + 1] = "ddim", "3"
    assert main(args) == 0
    none, es = json.loads((tmp_path / "gen.json").read_text())["rows"]
    assert es["fid"] == pytest.approx(none["fid"], rel=1e-6) and es["kid"] == pytest.approx(none["kid"], rel=1e-6, abs=1e-9)
    assert es["noise_shift"] == pytest.approx(none["noise_shift"], rel=1e-6)


def test_generation_rejects_unknown_names(equipped_model, fid_setup, tmp_path, capsys):
    data, clf = fid_setup
    assert main(generation_args(equipped_model, data, clf, tmp_path, methods="none,magic")) == 2
    assert "unknown method magic" in capsys.readouterr().err
    args = generation_args(equipped_model, data, clf, tmp_path)
    args[args.index("--steps") + 1] = "2,x"
    assert main(args) == 2 and "--steps" in capsys.readouterr().err


def image_folder(folder, sizes=((20, 24), (16, 16), (40, 30))):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i, (w, h) in enumerate(sizes):
        base = np.linspace(0, 255, w * h * 3).reshape(h, w, 3)         # smooth images: something to restore
        arr = np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"img{i}.png")
    return folder


def restoration_args(model, images, tmp_path, methods="ddnm,iterproj,iterproj-nlc"):
    return ["evaluate", "restoration", "--model", str(model), "--device", "cpu", "--threads", "1",
            "--tasks", "sr4,inpaint,deblur,colorize,cs", "--methods", methods, "--images", str(images),
            "--n", "3", "--batch-size", "2", "--sigma-y", "0,0.05", "--steps", "6",
            "--json", str(tmp_path / "rest.json"), "--markdown", str(tmp_path / "rest.md")]


def test_restoration_benchmark_rows_and_resume(equipped_model, tmp_path, monkeypatch, capsys, one_thread):
    images = image_folder(tmp_path / "imgs")
    counter = Counter(monkeypatch, restoration)
    args = restoration_args(equipped_model, images, tmp_path)
    assert main(args) == 0
    assert "2 of 3 images were cropped/resized to 16x16" in capsys.readouterr().out
    doc = json.loads((tmp_path / "rest.json").read_text())
    rows = doc["rows"]
    assert len(rows) == 5 * 2 * 3 == len(counter.calls) and doc["skipped"] == []
    for r in rows:
        assert r["n"] == 3 and r["nfe"] == pytest.approx(6)     # equal budget for every method
        for key in ("psnr", "ssim", "consistency", "seconds_per_image"):
            assert math.isfinite(r[key]), (key, r)
        assert -1 <= r["ssim"] <= 1 and r["psnr"] > 0
    by = {(r["task"], r["sigma_y"], r["method"]): r for r in rows}
    # without noise the projection is exact; only the final clamp to [-1, 1] can break it, and an untrained
    # model's saturated x0 does (measured 0.07-0.6 here), except for inpainting, whose projection only
    # pastes the measured pixels
    assert by[("inpaint", 0.0, "ddnm")]["consistency"] < 1e-6 and by[("inpaint", 0.0, "iterproj")]["consistency"] < 1e-6
    for task in ("sr4", "inpaint", "deblur", "colorize", "cs"):
        for method in ("ddnm", "iterproj"):       # with noise, y is not fitted exactly (DDNM+'s rule)
            assert by[(task, 0.05, method)]["consistency"] > by[(task, 0.0, method)]["consistency"], (task, method)
    md = (tmp_path / "rest.md").read_text()
    assert doc["command"] in md and "| task | sigma_y | method | PSNR (dB)" in md and md.count("\n| sr4 |") == 6

    counter.calls.clear()
    assert main(args) == 0
    assert counter.calls == [] and json.loads((tmp_path / "rest.json").read_text())["rows"] == rows

    # a redone cell lands last in the JSON, but the table keeps the grid's order
    doc["rows"] = [r for r in rows if (r["task"], r["sigma_y"]) != ("sr4", 0.0)]
    (tmp_path / "rest.json").write_text(json.dumps(doc))
    assert main(args) == 0 and len(counter.calls) == 3
    lines = [l for l in (tmp_path / "rest.md").read_text().splitlines() if l.startswith("| sr4 |")]
    assert [l.split("|")[2].strip() for l in lines[:3]] == ["0", "0", "0"]


def test_restoration_runs_iterproj_nlc_on_a_model_without_nlc_weights(tiny_model_dir, tmp_path, one_thread):
    """IterProj-NLC's level reading needs nothing trained: a model without NLC weights runs it too."""
    images = image_folder(tmp_path / "imgs", sizes=((8, 8), (8, 8)))
    args = restoration_args(tiny_model_dir, images, tmp_path)
    args[args.index("--tasks") + 1], args[args.index("--sigma-y") + 1] = "inpaint", "0"
    assert main(args) == 0
    doc = json.loads((tmp_path / "rest.json").read_text())
    assert [r["method"] for r in doc["rows"]] == ["ddnm", "iterproj", "iterproj-nlc"] and not doc.get("skipped")
    assert doc["rows"][2]["settings"]["level_ratio"] == 0.3
    assert all(r["ssim"] is None for r in doc["rows"])          # 8x8: too small for SSIM's window


def test_default_images_are_a_seeded_sample_of_the_test_split(fid_setup):
    data, _ = fid_setup
    x, source, note = restoration.load_eval_images(None, 4, 16, seed=0, cifar=data)
    again, _, _ = restoration.load_eval_images(None, 4, 16, seed=0, cifar=data)
    assert x.shape == (4, 3, 16, 16) and torch.equal(x, again) and x.min() >= -1 and x.max() <= 1
    assert "test" in source and note.startswith("CIFAR-10 test images resized to 16x16")
    with pytest.raises(ValueError, match="more than the 6 test images"):
        restoration.load_eval_images(None, 7, 16, cifar=data)


def _launched(args_for, tmp_path) -> dict:
    """The rows of one command run as one process and under `accelerate launch` with 2 processes (on CPUs:
    accelerate's multi-process launcher, gloo)."""
    import os
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    rows = {}
    for name, launcher in LAUNCHERS.items():
        out = tmp_path / name
        out.mkdir(parents=True)
        args = args_for(out)
        done = subprocess.run([*launcher, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        assert ("2 processes shared the batches" in done.stdout) == (name == "two"), done.stdout[-2000:]
        rows[name] = json.loads(Path(args[args.index("--json") + 1]).read_text())["rows"]
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("seconds_per_image", "finished_at")} for r in rs]
    return {k: strip(v) for k, v in rows.items()}


def test_accelerate_launch_with_two_processes_gives_the_same_rows(equipped_model, fid_setup, tmp_path):
    """`accelerate launch` splits each cell's batches between processes and gathers them: the rows equal a
    one-process run's with the same seeds (each batch is made whole, by one process)."""
    data, clf = fid_setup

    def generation(out):
        args = generation_args(equipped_model, data, clf, out, methods="none,nag", plots=False)
        args[args.index("--steps") + 1] = "2"
        return args

    rows = _launched(generation, tmp_path / "gen")
    assert len(rows["one"]) == 4 and rows["one"] == rows["two"]
    images = image_folder(tmp_path / "imgs")
    rows = _launched(lambda out: restoration_args(equipped_model, images, out, methods="ddnm,iterproj-nlc")
                     [:-2] + ["--tasks", "sr4,deblur", "--sigma-y", "0.05"], tmp_path / "rest")
    assert len(rows["one"]) == 4 and rows["one"] == rows["two"]
