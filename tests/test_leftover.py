"""Noise shift measured per image: leftover noise of the final images against real images' reading
(the reference level), the per-image and systematic shift, on an analytic model where the truth is
known, on the shipped estimator, and in the app on its defaults."""
import json
import zipfile

import numpy as np
import pytest
import torch
from conftest import GaussianDenoiser

from noisecorr_app.extras.estimator import reference_level
from noisecorr_app.sampling.corrections import EstimatedLevel
from noisecorr_app.sampling.run import sample
from noisecorr_app.sampling.trace import shift_per_image

SHAPE = (3, 128, 128)        # enough pixels for the variance to read the level within a few percent


class VarianceEstimator:
    """The exact level reader for Gaussian data N(mu, s0^2): per image, the variance around mu beyond
    s0^2 is the noise's."""

    def __init__(self, model: GaussianDenoiser):
        self.model = model

    def estimate(self, x):
        var = (x.double() - self.model.mu).flatten(1).pow(2).mean(1)
        return (var - self.model.s0 ** 2).clamp_min(1e-8).sqrt().float()


@pytest.fixture
def analytic():
    model = GaussianDenoiser(shape=SHAPE)
    est = VarianceEstimator(model)
    clean = model.mu + model.s0 * torch.randn((300, *SHAPE), generator=torch.Generator().manual_seed(1))
    est.reference = reference_level(est, clean)
    return model, est


def mislevelled_start(model, n=10, bad=(0, 1), sigma=1.0, excess=1.3):
    """States at level sigma, except the ``bad`` images, which carry ``excess`` times as much noise."""
    g = torch.Generator().manual_seed(0)
    x0 = model.mu + model.s0 * torch.randn((n, *SHAPE), generator=g)
    scale = torch.ones(n)
    scale[list(bad)] = excess
    return x0 + sigma * scale.view(-1, 1, 1, 1) * torch.randn((n, *SHAPE), generator=g)


# down to sigma 0.2, where the variance still reads the level (about 5% per image), then to 0
SIGMAS = torch.cat([torch.logspace(0, -0.7, 12), torch.zeros(1)])


def test_a_few_noisy_images_are_flagged_per_image_where_the_median_sees_nothing(analytic):
    model, est = analytic
    res = sample(model, sampler="ddim", sigmas=SIGMAS, x=mislevelled_start(model), estimator=est, clip_x0=False)
    clean = sample(model, sampler="ddim", sigmas=SIGMAS, x=mislevelled_start(model, bad=()), estimator=est,
                   clip_x0=False)
    f = res.figures
    # the batch median does not move: the systematic figure cannot tell the two batches apart
    assert abs(f["systematic_shift"] - clean.figures["systematic_shift"]) < 0.01
    assert f["per_image_shift"] > 1.5 * clean.figures["per_image_shift"]
    per_image = shift_per_image(res.records, res.leftover, res.reference)
    assert per_image[:2].min() > 0.15 and per_image[2:].max() < 0.08
    # their final images keep noise that real (here: exact) samples never show
    p90 = res.reference["p90"]
    assert res.leftover[:2].min() > 1.5 * p90
    assert set(torch.topk(res.leftover, 2).indices.tolist()) == {0, 1}
    assert f["share_above_real_p90"] >= 0.2 and f["leftover_max"] == pytest.approx(float(res.leftover.max()))


def test_nlc_with_a_perfect_level_reading_leaves_real_noise_levels_in_every_image(analytic):
    model, est = analytic
    x = mislevelled_start(model)
    base = sample(model, sampler="ddim", sigmas=SIGMAS, x=x, estimator=est, clip_x0=False)
    fixed = sample(model, sampler="ddim", sigmas=SIGMAS, x=x, estimator=est, clip_x0=False,
                   correction=EstimatedLevel(est))
    p90 = fixed.reference["p90"]
    assert base.leftover[:2].min() > 1.5 * p90
    assert fixed.leftover.max() <= p90                  # every image, the two bad ones included
    assert fixed.figures["share_above_real_p90"] == 0 < base.figures["share_above_real_p90"]
    assert fixed.figures["per_image_shift"] < base.figures["per_image_shift"]


def test_batches_merge_into_the_figures_of_one_run(analytic):
    from noisecorr_app.sampling.run import merge_results

    model, est = analytic
    x = mislevelled_start(model)
    whole = sample(model, sampler="ddim", sigmas=SIGMAS, x=x, estimator=est, clip_x0=False)
    parts = merge_results([sample(model, sampler="ddim", sigmas=SIGMAS, x=x[i:i + 5], estimator=est, clip_x0=False,
                                  seeds=list(range(i, i + 5))) for i in (0, 5)])
    for key in ("leftover_median", "leftover_p90", "per_image_shift", "share_above_real_p90"):
        assert parts.figures[key] == pytest.approx(whole.figures[key], rel=1e-4), key


def test_the_shipped_reference_level_holds_on_real_test_images_it_was_not_computed_on():
    from noisecorr_app.methods import load_estimator_for
    from noisecorr_app.models.loading import load_model
    from noisecorr_app.training.data import default_cifar10, load_images, to_tensor

    if not default_cifar10().exists():
        pytest.skip(f"CIFAR-10 is not at {default_cifar10()} (../shared/data beside the checkout)")
    est = load_estimator_for(load_model())
    ref = est.reference
    assert ref and ref["p10"] < ref["median"] < ref["p90"]
    # `reference-level` read a seeded half of the test split: check on the other half
    ds = load_images(default_cifar10(), split="test")
    used = np.random.default_rng(ref["seed"]).permutation(len(ds))[: ref["images"]]
    rest = np.setdiff1d(np.arange(len(ds)), used)[::5]
    reads = est.estimate(to_tensor(ds.images[rest]))
    assert float((reads <= ref["p90"]).float().mean()) >= 0.85
    assert abs(float(reads.median()) / ref["median"] - 1) < 0.1


@pytest.fixture(scope="module")
def default_app():
    from gradio_client import Client

    from noisecorr_app.ui.app import build_demo, launch

    demo = build_demo(None, device="cpu")
    launch(demo, prevent_thread_lock=True, server_port=None, quiet=True)
    yield Client(demo.local_url, verbose=False)
    demo.close()


def test_generate_on_its_defaults_shows_each_images_leftover_noise_as_the_library_measures_it(default_app):
    """The tab's starting values (the model's recommended correction and steps, seed 0, 4 images)."""
    from noisecorr_app.methods import defaults_for, load_estimator_for, recommended_run, setup
    from noisecorr_app.models.loading import load_model
    from noisecorr_app.ui.common import CPU_THREADS, torch_threads

    model = load_model()
    method, steps = recommended_run(model)
    assert method is not None, "the shipped model recommends a correction"
    weight = defaults_for(model, steps)["nag_scale"]
    *_, metrics, levels, leftover, bundle = default_app.predict(
        "any class", "ddim", steps, 0, 4, method, weight, 1.0, 1.005, api_name="/generate")
    with zipfile.ZipFile(bundle) as z:
        traces = json.loads(z.read("run.json"))["traces"]
    est = load_estimator_for(model)
    ms = setup(method, model, steps=steps)
    with torch_threads(max(1, CPU_THREADS // 2)):      # as each of the app's two side-by-side runs
        base = sample(model, sampler="ddim", steps=steps, n=4, seed=0, estimator=est)
        fixed = sample(model, sampler="ddim", steps=steps, n=4, seed=0, estimator=est, correction=ms.correction,
                       **{k: v for k, v in ms.options.items() if k != "estimator"})
    for run, res in (("baseline", base), ("corrected", fixed)):
        shown = traces[run]["leftover_per_image"]
        assert shown == pytest.approx(res.leftover.tolist(), abs=2e-4), run
    assert f"{float(base.figures['leftover_median']):.3f}" in metrics
    assert "less leftover noise" in metrics or "more leftover noise" in metrics or "about as much" in metrics
    assert levels is not None and leftover is not None
