"""The noise-level reading for any model (extras/wavelet.py): nothing trained, any size; checked on forward-noised
real images it never saw (CIFAR-10 test images at 32 pixels, crops of the photos in ../shared/data at 64 and 128),
and used for the plots, leftover figures, nlc-est and nag-est of a model that has no trained estimator."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import save_tiny_model


def _errors(images, lo, hi, seed=0):
    g = torch.Generator().manual_seed(seed)
    sigma = torch.empty(len(images)).uniform_(math.log(lo), math.log(hi), generator=g).exp()
    x = images + sigma.view(-1, 1, 1, 1) * torch.randn(images.shape, generator=g)
    from noisecorr_app.extras.wavelet import read_level

    return (read_level(x) / sigma).log().abs()


@pytest.mark.parametrize("size", [32, 64, 128])
def test_the_reading_is_within_5_percent_per_decade_from_0_1_to_100(size):
    from noisecorr_app.training.data import default_cifar10, default_photos, load_images, photo_crops, to_tensor

    if size == 32:
        if not default_cifar10().exists():
            pytest.skip("CIFAR-10 is not beside the checkout")
        images = to_tensor(load_images(default_cifar10(), split="test").images[:200])
    else:
        if not default_photos().exists():
            pytest.skip("the photos are not beside the checkout")
        images = photo_crops(default_photos(), size, 60, seed=3)
    for lo in (0.1, 1, 10):
        median = _errors(images, lo, 10 * lo).median().item()
        assert median < 0.05, (size, lo, median)


def test_a_model_without_an_estimator_reads_corrects_and_guides_with_the_reading(tmp_path):
    from noisecorr_app.extras.wavelet import WaveletLevel
    from noisecorr_app.methods import METHODS, level_reader_for, load_estimator_for, setup
    from noisecorr_app.models.loading import load_model
    from noisecorr_app.sampling.run import sample

    model = load_model(save_tiny_model(tmp_path / "model"), device="cpu")          # 8x8: no trained estimator
    reader = level_reader_for(model)
    assert load_estimator_for(model) is None and isinstance(reader, WaveletLevel)
    assert reader.reference is not None and reader.reference["median"] > 0            # real photos' readings
    res = sample(model, steps=3, n=2, estimator=reader)
    assert res.leftover is not None and len(res.leftover) == 2
    assert all(r.extras.get("sigma_est") is not None for r in res.records)
    for method in ("nlc-est", "nag-est"):           # the corrections that read or follow the level run on it
        assert METHODS[method].available(model)
        s = setup(method, model, steps=3)
        fixed = sample(model, steps=3, n=2, correction=s.correction, **s.options)
        assert not torch.equal(fixed.images, res.images), method


def test_the_guide_is_most_likely_at_the_true_level_and_moves_every_pixel():
    """log g(sigma | x) of forward-noised images peaks near the sigma they carry (median within 6%, every image within
    15%), and its gradient reaches most pixels (the median's reaches one coefficient)."""
    from noisecorr_app.extras.wavelet import WaveletLevel, guide_level, read_level
    from noisecorr_app.training.data import default_cifar10, load_images, to_tensor

    if not default_cifar10().exists():
        pytest.skip("CIFAR-10 is not beside the checkout")
    images = to_tensor(load_images(default_cifar10(), split="test").images[:16])
    reader = WaveletLevel(32)
    grid = torch.logspace(-2, 2, 161)
    for true in (0.2, 1.0, 10.0):
        x = images + true * torch.randn(images.shape, generator=torch.Generator().manual_seed(1))
        logp = torch.stack([reader.log_prob(x, torch.full((len(x),), float(s))) for s in grid])
        best = grid[logp.argmax(0)]
        err = (best / true).log().abs()                  # a textured image reads a little high at sigma 0.2
        assert (err < 0.15).all() and err.median() < 0.06, (true, best)
        level, _ = guide_level(x)
        assert ((level / read_level(x)).log().abs() < 0.1).all()         # the smooth twin reads as the median
    x = (images[:2] + 0.3 * torch.randn(2, 3, 32, 32)).requires_grad_(True)
    reader.log_prob(x, torch.full((2,), 0.1)).sum().backward()
    assert (x.grad != 0).float().mean() > 0.8


def test_the_wavelet_reading_can_replace_a_trained_estimator(tmp_path):
    """level_reader = wavelet: the embedded model, which has a trained estimator, corrects with the wavelet; the
    same setting reaches the corrections from the command line."""
    from noisecorr_app.cli import main
    from noisecorr_app.extras.wavelet import WaveletLevel
    from noisecorr_app.methods import setup
    from noisecorr_app.models.loading import load_model

    model = load_model(None, device="cpu")
    assert not isinstance(setup("nlc-est", model, steps=10).correction.estimator, WaveletLevel)
    assert isinstance(setup("nlc-est", model, steps=10, level_reader="wavelet").correction.estimator, WaveletLevel)
    assert isinstance(setup("nag-est", model, steps=10, level_reader="wavelet").options["guide"], WaveletLevel)
    with pytest.raises(ValueError, match="noise-level reading must be one of auto, wavelet"):
        setup("nlc-est", model, steps=10, level_reader="other")
    from PIL import Image

    for reader in ("auto", "wavelet"):
        assert main(["sample", "--method", "nlc-est", "--level-reader", reader, "--steps", "3", "--n", "1",
                     "--out", str(tmp_path / reader)]) == 0
    auto, wavelet = (np.asarray(Image.open(tmp_path / r / "seed000000.png")) for r in ("auto", "wavelet"))
    assert not np.array_equal(auto, wavelet)            # another reading, another final-step level


def test_the_cli_reports_the_reading_per_decade(tmp_path, capsys):
    from noisecorr_app.cli import main
    from noisecorr_app.training.data import default_photos

    if not default_photos().exists():
        pytest.skip("the photos are not beside the checkout")
    out = tmp_path / "wavelet.json"
    assert main(["evaluate", "estimator", "--wavelet", "--size", "64", "--images", "20", "--n", "32",
                 "--json", str(out)]) == 0
    import json

    rows = json.loads(out.read_text())["rows"]
    assert [r["decade"] for r in rows][:3] == ["0.1-1", "1-10", "10-100"]
    assert "median |log err|" in capsys.readouterr().out
