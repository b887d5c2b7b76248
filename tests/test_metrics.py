"""FID-C10 / KID-C10, PSNR / SSIM, the CIFAR-10 classifier (save/load, training, resume) and the CLI.

Everything runs without trained weights on tiny data; the one test that needs the shipped classifier
(weights/cifar10-classifier) skips when it is absent.
"""
import json
import math

import numpy as np
import pytest
import torch
from conftest import ROOT, SHARED_DATA, save_tiny_model
from PIL import Image

from noisecorr_app.cli import main
from noisecorr_app.evaluation.metrics import (PSNR_MAX_DB, FeatureStats, feature_stats, fid, frechet_distance, kid,
                                              psnr, ssim)
from noisecorr_app.extras.classifier import (DEFAULT_CLASSIFIER, CifarClassifier, load_classifier,
                                             save_classifier)
from noisecorr_app.training.classifier import augment, evaluate_accuracy

SMALL = (8, 16, 16, 32)   # a tiny classifier for the plumbing tests


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NOISECORR_CACHE", str(tmp_path / "cache"))


def exact_moments(n, d, seed):
    """n samples in d dims whose empirical mean is exactly 0 and (unbiased) covariance exactly I."""
    z = np.random.default_rng(seed).standard_normal((n, d))
    z -= z.mean(0)
    return z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T


# -- FID --------------------------------------------------------------------------------------------------
def test_fid_of_a_set_with_itself_is_zero():
    x = np.random.default_rng(0).standard_normal((400, 16)) * np.linspace(0.1, 3, 16)
    assert fid(x, x) == pytest.approx(0.0, abs=1e-8)


def test_fid_matches_closed_form_for_diagonal_gaussians():
    d = 6
    rng = np.random.default_rng(1)
    mu_a, mu_b = rng.standard_normal(d), rng.standard_normal(d)
    a, b = rng.uniform(0.2, 3.0, d), rng.uniform(0.2, 3.0, d)
    expected = ((mu_a - mu_b) ** 2).sum() + (a + b - 2 * np.sqrt(a * b)).sum()
    # from statistics ...
    assert frechet_distance(mu_a, np.diag(a), mu_b, np.diag(b)) == pytest.approx(expected, rel=1e-10)
    # ... and from feature sets with exactly those moments
    x = mu_a + exact_moments(3000, d, 2) * np.sqrt(a)
    y = mu_b + exact_moments(2000, d, 3) * np.sqrt(b)
    assert fid(x, y) == pytest.approx(expected, rel=1e-8)
    assert fid(feature_stats(x), y) == pytest.approx(expected, rel=1e-8)


def test_fid_full_covariance_matches_trace_of_sqrt_of_product():
    rng = np.random.default_rng(4)
    d = 8
    a_, b_ = rng.standard_normal((d, d)), rng.standard_normal((d, d))
    s1, s2 = a_ @ a_.T + 0.1 * np.eye(d), b_ @ b_.T + 0.1 * np.eye(d)
    # tr sqrt(S1 S2) = sum of sqrt of the (real, positive) eigenvalues of S1 S2
    tr_sqrt = np.sqrt(np.linalg.eigvals(s1 @ s2).real).sum()
    assert frechet_distance(np.zeros(d), s1, np.zeros(d), s2) == pytest.approx(np.trace(s1 + s2) - 2 * tr_sqrt, rel=1e-9)


def test_fid_is_symmetric_and_grows_with_a_mean_shift():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((500, 10))
    y = rng.standard_normal((600, 10)) * 1.3
    assert fid(x, y) == pytest.approx(fid(y, x), rel=1e-9)
    values = [fid(x, y + s) for s in (0.0, 0.25, 0.5, 1.0, 2.0)]
    assert all(v1 < v2 for v1, v2 in zip(values, values[1:]))
    assert isinstance(feature_stats(x), FeatureStats) and feature_stats(x).n == 500


# -- KID --------------------------------------------------------------------------------------------------
def test_kid_near_zero_for_the_same_distribution_and_positive_when_shifted():
    rng = np.random.default_rng(6)
    x, y = rng.standard_normal((600, 32)), rng.standard_normal((600, 32))
    mean, std = kid(x, y, subsets=20, subset_size=200)
    assert abs(mean) < 0.02 and std >= 0
    shifted, _ = kid(x, y + 0.5, subsets=20, subset_size=200)
    assert shifted > 0.1 and shifted > 10 * abs(mean)


# -- PSNR / SSIM ------------------------------------------------------------------------------------------
def test_psnr_known_values_and_cap():
    a = torch.zeros(2, 3, 8, 8)
    assert torch.allclose(psnr(a, a, value_range=(0, 1)), torch.full((2,), PSNR_MAX_DB, dtype=torch.float64))
    b = a + 0.1                                            # MSE 0.01 on [0, 1] -> 20 dB
    assert torch.allclose(psnr(a, b, value_range=(0, 1)), torch.full((2,), 20.0, dtype=torch.float64))
    # the same images in model space [-1, 1] (the default): 0.2 there is 0.1 on [0, 1]
    assert psnr(a[0] * 2 - 1, b[0] * 2 - 1).item() == pytest.approx(20.0)
    x, y = torch.rand(4, 3, 16, 16), torch.rand(4, 3, 16, 16)
    mse = ((x - y) ** 2).flatten(1).mean(1).double()
    assert torch.allclose(psnr(x, y, value_range=(0, 1)), 10 * torch.log10(1 / mse))


def test_ssim_identity_noise_and_range():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 32, 32, generator=g) * 2 - 1
    assert torch.allclose(ssim(x, x), torch.ones(3, dtype=torch.float64))
    scores = [ssim(x, (x + s * torch.randn(x.shape, generator=g)).clamp(-1, 1)).mean().item() for s in (0.05, 0.2, 0.5)]
    assert 1 > scores[0] > scores[1] > scores[2]
    for other in (-x, torch.rand(3, 3, 32, 32, generator=g) * 2 - 1, torch.zeros_like(x)):
        v = ssim(x, other)
        assert v.shape == (3,) and bool(((v >= -1) & (v <= 1)).all())
    assert ssim(x, -x).max() < 0                          # anti-correlated images score negative


def test_ssim_of_constant_images_has_the_closed_form():
    a, b = 0.3, 0.7                                       # on [0, 1]: variances vanish, SSIM is the luminance term
    c1 = 0.01 ** 2
    v = ssim(torch.full((3, 16, 16), a), torch.full((3, 16, 16), b), value_range=(0, 1))
    assert v.ndim == 0 and v.item() == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1))
    with pytest.raises(ValueError, match="11x11"):
        ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))


# -- the classifier ------------------------------------------------------------------------------------------
def small_classifier(names=("a", "b", "c")):
    torch.manual_seed(0)
    m = CifarClassifier(SMALL, len(names), list(names))
    for mod in m.modules():                               # non-trivial BatchNorm buffers must survive too
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
    return m.eval()


def test_classifier_save_load_round_trip(tmp_path):
    m = small_classifier()
    save_classifier(m, tmp_path / "clf", {"test_accuracy": 0.5})
    loaded = load_classifier(tmp_path / "clf")
    x = torch.rand(5, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(m(x), loaded(x))
        assert loaded.features(x).shape == (5, SMALL[-1])
    assert not loaded.training and loaded.class_names == ["a", "b", "c"] and len(loaded.fingerprint) == 40
    cfg = json.loads((tmp_path / "clf" / "config.json").read_text())
    assert cfg["widths"] == list(SMALL) and cfg["test_accuracy"] == 0.5 and "Inception" in cfg["metric"]


def test_classifier_load_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no classifier folder.*train classifier"):
        load_classifier(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        load_classifier(tmp_path / "empty")
    save_classifier(small_classifier(), tmp_path / "clf")
    (tmp_path / "clf" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="corrupt"):
        load_classifier(tmp_path / "clf")
    save_classifier(small_classifier(), tmp_path / "clf2")
    cfg = json.loads((tmp_path / "clf2" / "config.json").read_text())
    (tmp_path / "clf2" / "config.json").write_text(json.dumps({**cfg, "widths": [8, 16, 16, 64]}))
    with pytest.raises(ValueError, match="do not match"):
        load_classifier(tmp_path / "clf2")


def test_augment_crops_and_flips():
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (16, 32, 32, 3), dtype=torch.uint8)
    out = augment(imgs, g)
    assert out.shape == (16, 3, 32, 32) and out.min() >= -1 and out.max() <= 1
    plain = imgs.permute(0, 3, 1, 2).float().div(127.5).sub(1)
    same = augment(imgs, g, pad=0)                        # no padding: only flips remain
    for o, p in zip(same, plain):
        assert torch.equal(o, p) or torch.equal(o, p.flip(-1))


def test_evaluate_accuracy_counts_matches():
    m = small_classifier()
    imgs = np.random.default_rng(0).integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
    with torch.no_grad():
        pred = m(torch.from_numpy(imgs).permute(0, 3, 1, 2).float().div(127.5).sub(1)).argmax(1).numpy()
    labels = pred.copy()
    labels[:3] = (labels[:3] + 1) % 3
    assert evaluate_accuracy(m, imgs, labels, batch_size=3) == pytest.approx(4 / 7)
    assert not m.training


def test_cosine_schedule_in_the_shared_loop(tmp_path):
    from noisecorr_app.training.loop import Trainer, TrainConfig

    lin = torch.nn.Linear(2, 2)
    t = Trainer(lin, None, tmp_path / "c", TrainConfig(steps=100, lr=1.0, warmup=10, schedule="cosine"),
                device=torch.device("cpu"))
    assert t.lr_at(0) == pytest.approx(0.1 * 0.5 * (1 + math.cos(0)))
    assert t.lr_at(50) == pytest.approx(0.5) and t.lr_at(100) == pytest.approx(0.0, abs=1e-12)
    const = Trainer(lin, None, tmp_path / "k", TrainConfig(steps=100, lr=1.0, warmup=10), device=torch.device("cpu"))
    assert const.lr_at(50) == 1.0 and const.lr_at(4) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="schedule"):
        Trainer(lin, None, tmp_path / "x", TrainConfig(schedule="step"), device=torch.device("cpu"))


# -- training and evaluation through the CLI -------------------------------------------------------------------
def make_image_folder(root, size=32, per_class=3, test_per_class=1, classes=("cat", "dog", "frog")):
    rng = np.random.default_rng(0)
    for split, k in (("train", per_class), ("test", test_per_class)):
        for ci, c in enumerate(classes):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(k):
                arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                arr[..., ci] = 255                        # a class-coloured channel: something to learn
                Image.fromarray(arr).save(root / split / c / f"{i}.png")
    return root


def test_train_classifier_command_runs_and_resumes(tmp_path):
    data = make_image_folder(tmp_path / "data")
    out = tmp_path / "clf"
    args = ["train", "classifier", "--data", str(data), "--out", str(out), "--batch-size", "4",
            "--widths", ",".join(map(str, SMALL)), "--warmup", "2", "--threads", "2"]
    assert main(args + ["--steps", "3"]) == 0
    state = json.loads((out / "training" / "state.json").read_text())
    cfg = json.loads((out / "config.json").read_text())
    assert state["step"] == 3 and state["config"]["schedule"] == "cosine"
    assert cfg["trained_steps"] == 3 and cfg["test_images"] == 3 and 0 <= cfg["test_accuracy"] <= 1
    assert cfg["class_names"] == ["cat", "dog", "frog"] and cfg["weights"] in ("ema", "raw")
    first = load_classifier(out).state_dict()

    assert main(args + ["--steps", "3"]) == 0             # already done: resumes and trains nothing
    assert all(torch.equal(v, first[k]) for k, v in load_classifier(out).state_dict().items())
    assert main(args + ["--steps", "5"]) == 0             # continues from step 3
    assert json.loads((out / "training" / "state.json").read_text())["step"] == 5
    assert json.loads((out / "config.json").read_text())["trained_steps"] == 5
    log = (out / "training" / "loss_log.csv").read_text().splitlines()
    assert log[0] == "step,loss,lr,seconds"

    assert main(args[:-2] + ["--widths", "8,8,8,8", "--steps", "6"]) == 2     # other widths: clear refusal
    assert main(["train", "classifier", "--data", str(tmp_path / "nothing"), "--out", str(out)]) == 2


def test_evaluate_fid_command(tmp_path, tiny_model_dir, capsys):
    data = make_image_folder(tmp_path / "data", per_class=4, test_per_class=2)
    clf = tmp_path / "clf"
    save_classifier(small_classifier(("cat", "dog", "frog")), clf, {"test_accuracy": 0.9})
    common = ["--classifier", str(clf), "--data", str(data), "--kid-subsets", "3", "--threads", "2"]

    # the floor: test images against the train features
    assert main(["evaluate", "fid", "--floor", "--json", str(tmp_path / "floor.json")] + common) == 0
    floor = json.loads((tmp_path / "floor.json").read_text())
    assert floor["metric"] == "FID-C10" and "Inception" in floor["note"]
    assert floor["samples"]["n"] == 6 and floor["reference"]["n"] == 12 and floor["fid_c10"] >= 0
    assert 0 <= floor["accuracy"] <= 1 and floor["kid_c10_std"] >= 0
    assert len(list((tmp_path / "cache").glob("fidc10-features-*.npz"))) == 1   # reference features cached

    # unconditional samples of a tiny model
    sample_args = ["--sampler", "ddim", "--steps", "2", "--batch-size", "2", "--device", "cpu"]
    assert main(["evaluate", "fid", "--model", str(tiny_model_dir), "--n", "3", "--json", str(tmp_path / "u.json")]
                + sample_args + common) == 0
    u = json.loads((tmp_path / "u.json").read_text())
    assert u["samples"]["n"] == 3 and "accuracy" not in u and math.isfinite(u["fid_c10"])
    assert "FID-C10" in capsys.readouterr().out

    # class-conditional: one class (reference = that class's train images) and per class
    cond = save_tiny_model(tmp_path / "cond", num_class_embeds=4,
                           extra={"num_classes": 3, "class_names": ["cat", "dog", "frog"], "null_class": 3})
    assert main(["evaluate", "fid", "--model", str(cond), "--n", "2", "--class", "dog",
                 "--json", str(tmp_path / "c.json")] + sample_args + common) == 0
    c = json.loads((tmp_path / "c.json").read_text())
    assert c["reference"] == {**c["reference"], "class": "dog", "n": 4} and 0 <= c["accuracy"] <= 1
    assert main(["evaluate", "fid", "--model", str(cond), "--n", "6", "--per-class",
                 "--json", str(tmp_path / "p.json")] + sample_args + common) == 0
    p = json.loads((tmp_path / "p.json").read_text())
    assert p["samples"]["class"] == "per-class" and p["reference"]["n"] == 12 and "accuracy" in p

    # errors say what to do
    capsys.readouterr()
    assert main(["evaluate", "fid", "--floor", "--classifier", str(tmp_path / "none"), "--data", str(data)]) == 2
    assert "train classifier" in capsys.readouterr().err
    assert main(["evaluate", "fid", "--floor", "--classifier", str(clf), "--data", str(tmp_path / "no-data")]) == 2
    assert "--data" in capsys.readouterr().err
    assert main(["evaluate", "fid", "--model", str(tiny_model_dir), "--per-class"] + sample_args + common) == 2
    assert "unconditional" in capsys.readouterr().err


def test_shipped_classifier_if_present(monkeypatch):
    if not (DEFAULT_CLASSIFIER / "model.safetensors").exists():
        pytest.skip(f"no shipped classifier at {DEFAULT_CLASSIFIER.relative_to(ROOT)} "
                    "(train it: python -m noisecorr_app train classifier --out weights/cifar10-classifier)")
    m = load_classifier(DEFAULT_CLASSIFIER)
    done, total = m.info.get("trained_steps", 0), m.info.get("recipe", {}).get("steps", 0)
    if done < total:
        pytest.skip(f"the shipped classifier is still training ({done}/{total} steps)")
    assert m.info.get("test_accuracy") is not None and m.info["test_accuracy"] >= 0.85
    tarball = SHARED_DATA / "cifar10" / "CIFAR-10-images-jpeg.tar.gz"
    if tarball.exists():
        from noisecorr_app.training.data import load_images

        monkeypatch.delenv("NOISECORR_CACHE")             # use the usual decoded-image cache, not a fresh one
        test = load_images(tarball, split="test", size=32)
        idx = np.random.default_rng(0).choice(len(test), 500, replace=False)
        assert evaluate_accuracy(m, test.images[idx], test.labels[idx]) >= 0.8
