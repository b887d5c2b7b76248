"""The noise-level reading for any model (extras/wavelet.py): nothing trained, any size; checked on forward-noised
real images it never saw (CIFAR-10 test images at 32 pixels, crops of the photos in ../shared/data at 64 and 128),
and used for the plots and leftover figures of a model that has no trained estimator."""
from __future__ import annotations

import math

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


def test_a_model_without_an_estimator_gets_the_reading_for_its_plots_but_no_estimator_guidance(tmp_path):
    from noisecorr_app.extras.wavelet import WaveletLevel
    from noisecorr_app.methods import METHODS, level_reader_for, load_estimator_for
    from noisecorr_app.models.loading import load_model
    from noisecorr_app.sampling.run import sample

    model = load_model(save_tiny_model(tmp_path / "model"), device="cpu")          # 8x8: no trained estimator
    reader = level_reader_for(model)
    assert load_estimator_for(model) is None and isinstance(reader, WaveletLevel)
    assert reader.reference is not None and reader.reference["median"] > 0            # real photos' readings
    res = sample(model, steps=3, n=2, estimator=reader)
    assert res.leftover is not None and len(res.leftover) == 2
    assert all(r.extras.get("sigma_est") is not None for r in res.records)
    assert not METHODS["nag-est"].available(model)
    with pytest.raises(ValueError, match="cannot guide"):
        reader.log_prob(torch.zeros(1, 3, 8, 8), torch.ones(1))


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
