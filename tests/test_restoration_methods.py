"""Restoration methods (DDNM, IterProj, IterProj-NLC) through the sampling engine, on analytic
Gaussian priors whose posteriors are known."""
import math

import pytest
import torch

from noisecorr_app.models.denoiser import sigmas_from_alphas_cumprod
from noisecorr_app.restoration.methods import (METHODS, OFFICIAL_TAIL_FRACTION, SIGMA_Y_MAX, Projected, cyclic_tail, default_tail_steps,
                                               degrade, iterproj_sigmas, measurement_size,
                                               restore)
from noisecorr_app.restoration.operators import Inpainting, make_mask, make_operator
from noisecorr_app.restoration.tasks import LEVEL_BELOW
from noisecorr_app.sampling.corrections import Correction, EpsScaling, OracleLevel
from noisecorr_app.sampling.run import sample, sample_steps
from noisecorr_app.sampling.samplers import SAMPLERS
from noisecorr_app.sampling.trace import step_summary

TASKS = ["sr4", "sr2", "inpaint", "deblur", "colorize", "cs"]


pytestmark = pytest.mark.usefixtures("one_thread")


class PixelGaussian:
    """Exact denoiser for data with independent pixels x ~ N(mu, s^2) (per-pixel mean and std), on a
    DDPM training schedule (linear betas, T = 1000) so the 'model' spacing exists:
    eps(x, sigma) = (x - mu) sigma / (s^2 + sigma^2)."""

    def __init__(self, size=32, s=0.1, mu=None):
        if mu is None:
            yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
            mu = 0.4 * torch.stack([xx, yy, xx * yy])                 # smooth, within [-0.4, 0.4]
        self.mu = torch.as_tensor(mu, dtype=torch.float64).expand(3, size, size).clone()
        self.s = torch.as_tensor(s, dtype=torch.float64).expand(3, size, size).clone()
        betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
        self.alphas_cumprod = torch.cumprod(1 - betas, 0)
        sig = sigmas_from_alphas_cumprod(self.alphas_cumprod)
        self.sigma_min, self.sigma_max = float(sig[0]), float(sig[-1])
        self.sample_shape = (3, size, size)

    def eps(self, x, sigma, cond=None):
        s = sigma.double().view(-1, 1, 1, 1)
        return ((x.double() - self.mu) * s / (self.s ** 2 + s ** 2)).to(x.dtype)

    def draw(self, n, seed):
        z = torch.randn(n, *self.mu.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        return (self.mu + self.s * z).float()


@pytest.fixture(scope="module")
def prior():
    return PixelGaussian()


@pytest.fixture(scope="module")
def truth(prior):
    return prior.draw(2, 123)


def rms(t):
    return t.flatten(1).pow(2).mean(1).sqrt()


# ----------------------------------------------------------------------------------------------
# Exact consistency without measurement noise

@pytest.mark.parametrize("method", ["ddnm", "iterproj"])
@pytest.mark.parametrize("task", TASKS)
def test_consistency_without_noise(prior, truth, task, method):
    op = make_operator(task, 32)
    y = degrade(op, truth)
    res = restore(prior, op, y, method=method, steps=20, seed=1)
    assert res.images.shape == truth.shape and float(res.images.abs().max()) <= 1
    assert res.consistency.shape == (2,)
    assert float(res.consistency.max()) < 1e-3, res.consistency
    torch.testing.assert_close(res.consistency, op.consistency(res.images, y))
    assert len(res.records) == len(res.history) == 20
    assert res.history[-1]["consistency"] < 1e-3 and res.history[0]["consistency_before"] > 1e-2


def test_full_mask_projection_returns_y_exactly():
    """Nothing hidden: the projection replaces the whole estimate by y (A^+ = A = identity)."""
    op = Inpainting(torch.ones(8, 8))
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    model = PixelGaussian(size=8)
    proj = Projected(Correction(), op, y, clip=False)
    sigma = torch.full((3,), 0.7)
    p = proj.predict(model, x, sigma, sigma * 0.5, None, 0)
    assert torch.equal(p.x0, y) or float((p.x0 - y).abs().max()) < 1e-6
    assert torch.equal(p.sigma, sigma) and torch.equal(p.sigma_next, sigma * 0.5)
    torch.testing.assert_close(p.x, x)
    assert proj.history[0]["consistency"].max() < 1e-6 and proj.history[0]["consistency_before"].min() > 0.1


def test_projection_is_idempotent_and_keeps_consistent_estimates():
    op = make_operator("sr4", 16)
    model = PixelGaussian(size=16)
    x_true = model.draw(2, 5)
    y = op.A(x_true)
    proj = Projected(None, op, y, clip=False)
    x = x_true + 0.3 * torch.randn(x_true.shape, generator=torch.Generator().manual_seed(2))
    sigma = torch.full((2,), 0.3)
    p = proj.predict(model, x, sigma, sigma / 2, None, 0)
    assert float(op.consistency(p.x0, y).max()) < 1e-5
    torch.testing.assert_close(op.project(p.x0, y), p.x0, atol=1e-6, rtol=0)
    # eps' is recomputed from the projected estimate: x - sigma eps' = x0p; the null space is the model's
    raw = Correction().predict(model, x, sigma, sigma / 2, None, 0).x0
    null = lambda v: v - op.pinv(op.A(v))
    torch.testing.assert_close(null(p.x0), null(raw), atol=1e-5, rtol=0)
    # an estimate that already satisfies A x = y is left alone
    assert float((op.project(x_true, y) - x_true).abs().max()) < 1e-6


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_projected_works_in_every_sampler(prior, truth, sampler):
    """The engine's own sample(): the wrapper is just a correction, the samplers are unchanged."""
    for task in ("sr4", "inpaint"):
        op = make_operator(task, 32)
        y = degrade(op, truth)
        res = sample(prior, sampler=sampler, steps=12, n=2, seed=3, correction=Projected(Correction(), op, y))
        assert float(op.consistency(res.images, y).max()) < 1e-3, (sampler, task)
        assert res.settings["correction"] == "projected+none"
        restored = restore(prior, op, y, method="iterproj", steps=12, sampler=sampler, seed=3)
        assert float(restored.consistency.max()) < 1e-3


# ----------------------------------------------------------------------------------------------
# The posterior, statistically

def test_inpainting_samples_the_known_posterior():
    """Independent Gaussian pixels: the observed pixels are y, the missing ones ~ N(mu, s^2) (prior),
    whatever is observed. Pooled over 256 restorations of one measurement, the standardized missing
    pixels must have mean ~0 and spread ~1. Accurate samplers (DPM-Solver++, DDIM eta=0) are used:
    DDNM's eta form (eta > 0 applied to the whole sigma_next) is under-dispersed on exact Gaussian
    data (spread ~0.6-0.85), a property of that sampler, not of the projection. The fine log-linear
    grid is used: DDNM's grid (IterProj's default) jumps from sigma 0.12 to 0.01 at 30 steps, coarse
    for pixel stds of 0.1-0.2, and DPM-Solver++ on it gives a spread of 1.20."""
    g = torch.Generator().manual_seed(5)
    mu = 0.3 * (2 * torch.rand(3, 8, 8, generator=g, dtype=torch.float64) - 1)
    s = 0.1 + 0.1 * torch.rand(3, 8, 8, generator=g, dtype=torch.float64)
    model = PixelGaussian(size=8, s=s, mu=mu)
    op = Inpainting(make_mask("box", 8))
    y = degrade(op, model.draw(1, 3))
    missing = ~op.mask.expand(3, 8, 8)
    for kw in ({"sampler": "dpmpp", "steps": 30}, {"sampler": "ddim", "eta": 0.0, "steps": 50}):
        res = restore(model, op, y, method="iterproj", n=256, seed=100, grid="loglinear", **kw)
        assert float((res.images - y)[:, ~missing].abs().max()) < 1e-5          # observed pixels are y
        z = ((res.images.double() - mu) / s)[:, missing]
        assert abs(float(z.mean())) < 0.05, (kw, float(z.mean()))
        assert 0.9 < float(z.std()) < 1.1, (kw, float(z.std()))
        assert float(z.mean(0).abs().max()) < 0.35                                 # every pixel, 256 samples
        assert float(z.std(0).min()) > 0.7


# ----------------------------------------------------------------------------------------------
# Measurement noise

def test_degrade_noise_level_and_seeding(truth):
    for task in ("sr4", "cs", "inpaint"):
        op = make_operator(task, 32)
        y = degrade(op, truth, sigma_y=0.1, seed=4)
        m = measurement_size(op, y)
        level = (y - op.A(truth)).flatten(1).norm(dim=1) / math.sqrt(m)
        assert torch.allclose(level, torch.full_like(level, 0.2), rtol=0.1), (task, level)   # 2 sigma_y in [-1, 1]
        torch.testing.assert_close(degrade(op, truth[1:], 0.1, seed=5), y[1:])                # image i uses seed + i
        if task == "inpaint":
            assert float(y[:, ~op.mask.expand(3, 32, 32)].abs().max()) == 0     # nothing measured in holes
    assert torch.equal(degrade(op, truth, 0.0), op.A(truth))


def test_pinv_noise_gain_is_one_over_the_singular_value():
    y = lambda op: op.A(torch.zeros(1, 3, 32, 32))
    for task, gain in [("sr4", 4.0), ("sr2", 2.0), ("colorize", math.sqrt(3)), ("inpaint", 1.0), ("cs", 1.0)]:
        op = make_operator(task, 32)
        assert op.noise_gain(y(op)) == pytest.approx(gain, rel=1e-6), task
    assert make_operator("deblur", 32).noise_gain(y(make_operator("deblur", 32))) > 1


@pytest.mark.parametrize("method", ["ddnm", "iterproj"])
def test_noisy_measurements_are_not_fitted(prior, truth, method):
    """sigma_y > 0: the residual ||A x - y|| / sqrt(m) is about the noise level 2 sigma_y (a posterior
    sample of this Gaussian has exactly that in expectation), not forced to 0."""
    sigma_y = 0.1
    for task in ("sr4", "cs", "inpaint", "colorize", "deblur"):
        op = make_operator(task, 32)
        y = degrade(op, truth, sigma_y, seed=7)
        res = restore(prior, op, y, method=method, steps=20, sigma_y=sigma_y, seed=2)
        ratio = res.consistency / math.sqrt(measurement_size(op, y)) / (2 * sigma_y)
        assert float(ratio.min()) > 0.5 and float(ratio.max()) < 2.0, (task, ratio)
        lam = [h["lambda"] for h in res.history]
        assert lam[0] == 1.0 and lam[-1] == 0.0 and min(lam) >= 0          # DDNM+: exact early, none at the end
        exact = restore(prior, op, y, method=method, steps=20, seed=2)      # ignoring the noise ...
        if task != "deblur":                                                # ... fits it
            assert bool((exact.consistency < 0.2 * res.consistency).all()), task
        else:   # ... or, through the blur's small singular values, blows it up (per-s lambda prevents it)
            err = lambda r: (r.images - truth).flatten(1).norm(dim=1)
            assert bool((err(res) < 0.5 * err(exact)).all()), (err(res), err(exact))


def test_noisy_iterproj_keeps_an_x0_from_below_the_noise_crossover(prior, truth):
    """With noise, an early x0 pinned to the noisy y can match the discrepancy by chance; only
    steps with lambda < 1 may be kept (before this rule: steps 2-5 of 20, PSNR ~10 dB on CIFAR-10)."""
    op = make_operator("sr4", 32)
    y = degrade(op, truth, 0.05, seed=7)
    res = restore(prior, op, y, method="iterproj", steps=20, sigma_y=0.05, seed=2)
    lam = torch.stack([r.extras["lambda"] for r in res.records])                  # (steps, B)
    assert bool((lam[res.kept_step, torch.arange(len(truth))] < 1).all()), res.kept_step
    ddnm = restore(prior, op, y, method="ddnm", steps=20, sigma_y=0.05, seed=2)
    err = lambda r: float(rms(r.images - truth).mean())
    assert err(res) < 1.5 * err(ddnm), (err(res), err(ddnm))


def test_sigma_y_out_of_range_is_refused(prior, truth):
    op = make_operator("sr4", 32)
    y = degrade(op, truth)
    for bad in (-0.01, SIGMA_Y_MAX + 0.01, float("nan"), "0.1", True):
        with pytest.raises(ValueError, match="sigma_y"):
            restore(prior, op, y, steps=5, sigma_y=bad)
        with pytest.raises(ValueError, match="sigma_y"):
            degrade(op, truth, bad)
        with pytest.raises(ValueError, match="sigma_y"):
            Projected(None, op, y, sigma_y=bad)
    restore(prior, op, y, steps=3, sigma_y=SIGMA_Y_MAX)                    # the end of the range is fine


# ----------------------------------------------------------------------------------------------
# IterProj: schedule, selection, corrections inside, equal NFE

def test_iterproj_sigmas_and_cyclic_tail():
    tail = cyclic_tail(25)
    assert tail.shape == (25,) and float(tail[0]) == pytest.approx(0.02) and float(tail[10]) == pytest.approx(0.02)
    assert float(tail.min()) >= 0.003 and float(tail.max()) <= 0.02 + 1e-12
    for start in (0, 10, 20):
        cyc = tail[start:start + 10]
        assert bool((cyc[1:] < cyc[:-1]).all())                             # saw-tooth: decays within a cycle
    assert float(tail[9]) == pytest.approx(0.003 * (0.02 / 0.003) ** 0.1)
    s = iterproj_sigmas(16, 4, 100.0, 0.01)
    assert s.shape == (21,) and float(s[0]) == pytest.approx(100.0) and float(s[-1]) == 0
    assert bool((s[1:16] < s[:15]).all()) and float(s[15]) == pytest.approx(0.01, rel=1e-5)
    assert float(s[16]) == pytest.approx(0.02) and float(s[16]) > float(s[15])   # the jump up: re-noising
    assert default_tail_steps(100) == 0                                       # off by default (measured)
    assert default_tail_steps(100, OFFICIAL_TAIL_FRACTION) == 20 and default_tail_steps(20, OFFICIAL_TAIL_FRACTION) == 4
    assert default_tail_steps(3, OFFICIAL_TAIL_FRACTION) == 0


def test_iterproj_grids(prior, truth):
    """IterProj's main grid: DDNM's by default (so at sigma_y = 0, with the plain network inside and
    every x0 consistent, IterProj is DDNM step for step), the official log-linear one on request."""
    op = make_operator("sr4", 32)
    y = degrade(op, truth)
    ddnm = restore(prior, op, y, method="ddnm", steps=12, seed=3)
    it = restore(prior, op, y, method="iterproj", steps=12, seed=3)
    assert it.settings["grid"] == "model" and it.settings["schedule"] == ddnm.settings["schedule"] == "model-leading"
    assert [r.sigma for r in it.records] == [r.sigma for r in ddnm.records]
    assert torch.allclose(it.images, ddnm.images, atol=1e-5)
    off = restore(prior, op, y, method="iterproj", steps=12, seed=3, grid="loglinear", tail_steps=2)
    assert off.settings["schedule"] == "loglinear+cyclic-tail" and off.settings["sigma_first"] == pytest.approx(100.0)
    want = iterproj_sigmas(10, 2, 100.0, prior.sigma_min)
    assert [r.sigma for r in off.records] == pytest.approx(want[:-1].tolist(), rel=1e-6)
    tail = restore(prior, op, y, method="iterproj", steps=12, seed=3, tail_steps=2)    # the tail on DDNM's grid
    assert tail.settings["schedule"] == "model-leading+cyclic-tail" and tail.records[-1].sigma == pytest.approx(
        float(cyclic_tail(2, cycle=2)[1]), rel=1e-6)
    with pytest.raises(ValueError, match="grid"):
        restore(prior, op, y, method="iterproj", steps=5, grid="karras")
    with pytest.raises(ValueError, match="loglinear"):
        restore(prior, op, y, method="iterproj", steps=5, sigma_max=50.0)


def test_level_correction_steps_to_the_scheduled_level(prior, truth):
    """Inside the projection loop a level correction sets the level the network is evaluated at; the
    step re-noises to the scheduled sigma_next (ours) or, on request, to sigma_next (1 + r) (official).
    Without a level correction the two rules are the same."""
    op = make_operator("colorize", 32)
    y = degrade(op, truth)
    high = OracleLevel(lambda x, s, i: 1.2 * s)                     # reads 20% more noise than scheduled
    ours = restore(prior, op, y, method="iterproj-nlc", steps=8, correction=high)
    official = restore(prior, op, y, method="iterproj-nlc", steps=8, correction=high, next_level="corrected")
    assert ours.settings["next_level"] == "scheduled" and official.settings["next_level"] == "corrected"
    assert not torch.equal(ours.images, official.images)
    x = prior.draw(2, 7) + 2.0 * torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    sigma, sigma_next = torch.full((2,), 2.0), torch.full((2,), 1.0)
    for rule, want in (("scheduled", 1.0), ("corrected", 1.2)):
        p = Projected(high, op, y, next_level=rule).predict(prior, x, sigma, sigma_next, None, 3)
        assert p.sigma.tolist() == pytest.approx([2.4, 2.4]) and p.sigma_next.tolist() == pytest.approx([want, want])
    plain = [restore(prior, op, y, method="iterproj", steps=8, next_level=v).images for v in ("scheduled", "corrected")]
    assert torch.equal(plain[0], plain[1])
    with pytest.raises(ValueError, match="next_level"):
        restore(prior, op, y, method="iterproj", steps=8, next_level="nominal")


def test_ddim_renoises_correctly_on_the_upward_jumps():
    """The samplers take any sigma array: a step to a larger sigma re-noises from x0 (DDIM form)."""
    model = PixelGaussian(size=16, s=0.3)
    sig = iterproj_sigmas(8, 12, 50.0, 0.01)
    for rec in sample_steps(model, sampler="ddim", steps=len(sig) - 1, n=4, seed=0, sigmas=sig, eta=0.85,
                            eta_style="ddnm"):
        if rec.sigma_next > rec.sigma:
            level = rms(rec.x_next - rec.x0) / rec.sigma_next
            assert bool(((level > 0.8) & (level < 1.25)).all()), (rec.step, level)


def test_iterproj_keeps_the_most_consistent_x0():
    """Prior mass beyond the image range: clamped estimates are not exactly consistent, and the
    consistency varies over the steps; IterProj returns, per image, the best step's x0."""
    model = PixelGaussian(size=32, s=0.35, mu=0.75)
    op = make_operator("sr4", 32)
    y = degrade(op, model.draw(3, 9).clamp(-1, 1))
    res = restore(model, op, y, method="iterproj", steps=20, seed=4)
    per_step = torch.stack([r.extras["consistency"] for r in res.records])      # (steps, B)
    assert float(per_step.std(0).min()) > 0                                      # the choice matters
    tol = 1e-3 * math.sqrt(measurement_size(op, y))
    kept = per_step[res.kept_step, torch.arange(3)]
    assert bool((kept <= per_step[-1] + 1e-6).all())
    assert bool((kept <= per_step.min(0).values + tol + 1e-6).all())
    # ... then brought onto {A x = y} within the pixel range (the clamped x0s are not on it)
    assert float(per_step[-1].min()) > 1e-3 > float(res.consistency.max())
    assert float(res.images.abs().max()) <= 1
    ddnm = restore(model, op, y, method="ddnm", steps=20, seed=4)
    assert ddnm.kept_step.tolist() == [19, 19, 19]                                # ddnm: the last x0


def test_equal_nfe_and_inner_corrections(prior, truth):
    op = make_operator("inpaint", 32)
    y = degrade(op, truth)
    ddnm = restore(prior, op, y, method="ddnm", steps=20)
    it = restore(prior, op, y, method="iterproj", steps=20, tail_steps=4)
    assert ddnm.nfe_per_image == it.nfe_per_image == 20
    assert it.settings["main_steps"] + it.settings["tail_steps"] == 20 and it.settings["tail_steps"] == 4
    plain = restore(prior, op, y, method="iterproj", steps=20)
    assert plain.nfe_per_image == 20 and plain.settings["tail_steps"] == 0
    # training-free corrections inside the loop
    es = restore(prior, op, y, method="iterproj", steps=10, correction=EpsScaling(1.01))
    assert es.settings["correction"] == "es" and float(es.consistency.max()) < 1e-3
    # iterproj-nlc: its own fixed reading, or a level correction given in its place (an oracle here)
    with pytest.raises(ValueError, match="LevelCorrection"):
        restore(prior, op, y, method="iterproj-nlc", steps=10, correction=EpsScaling())
    nlc = restore(prior, op, y, method="iterproj-nlc", steps=10, correction=OracleLevel(lambda x, s, i: s))
    assert nlc.nfe_per_image == 10 and float(nlc.consistency.max()) < 1e-3
    assert nlc.settings["correction"] == "oracle" and "level_ratio" not in nlc.settings
    own = restore(prior, op, y, method="iterproj-nlc", steps=10)
    assert own.settings["correction"] == "fixed-level" and own.settings["level_ratio"] == 0.3
    assert own.nfe_per_image == 10 and float(own.consistency.max()) < 1e-3


@pytest.mark.parametrize("level_below", [None, 0.5])
def test_iterproj_nlc_tells_the_network_a_raised_level_in_the_last_steps(prior, truth, level_below):
    """sigma (1 + r) at sigma <= level_below (declared: LEVEL_BELOW's default), the scheduled sigma above;
    the step still goes to the scheduled next level; r = 0 is IterProj itself."""
    op = make_operator("sr4", 32)
    y = degrade(op, truth)
    told = []

    class Spy(PixelGaussian):
        def eps(self, x, sigma, cond=None):
            told.append(sigma.clone())
            return super().eps(x, sigma, cond)

    res = restore(Spy(), op, y, method="iterproj-nlc", steps=12, level_ratio=0.4, level_below=level_below)
    below = LEVEL_BELOW.default if level_below is None else level_below
    assert res.settings["level_below"] == below
    scheduled = torch.tensor([h["sigma"] for h in res.history])
    used = torch.stack([t[0] for t in told]).double()
    low = scheduled <= below
    assert 0 < int(low.sum()) < len(scheduled)
    assert torch.allclose(used[low], 1.4 * scheduled[low].double(), rtol=1e-4)
    assert torch.allclose(used[~low], scheduled[~low].double(), rtol=1e-4)
    assert [h["sigma_next"] for h in res.history][:-1] == [h["sigma"] for h in res.history][1:]
    zero = restore(prior, op, y, method="iterproj-nlc", steps=12, level_ratio=0.0)
    assert torch.equal(zero.images, restore(prior, op, y, method="iterproj", steps=12).images)
    assert not torch.equal(zero.images, res.images)
    with pytest.raises(ValueError, match="level r"):
        restore(prior, op, y, method="iterproj-nlc", steps=4, level_ratio=2.0)


def test_records_history_progress_and_validation(prior, truth):
    op = make_operator("colorize", 32)
    y = degrade(op, truth)
    seen = []
    res = restore(prior, op, y, method="iterproj", steps=8, progress=seen.append)
    assert [r.step for r in seen] == list(range(8)) and all(r.x0 is not None for r in seen)
    summary = step_summary(res.records[-1])
    assert {"consistency", "consistency_before", "lambda"} <= set(summary)
    assert res.records[0].x0 is None                                             # light records
    assert set(res.history[0]) >= {"sigma", "sigma_used", "consistency", "consistency_before", "lambda"}
    trace = res.trace()
    assert len(trace["steps"]) == 8 and trace["settings"]["method"] == "iterproj"
    # one measurement, several restorations; unbatched y
    many = restore(prior, op, y[0], method="ddnm", steps=4, n=3)
    assert many.images.shape == (3, 3, 32, 32) and not torch.equal(many.images[0], many.images[1])
    with pytest.raises(ValueError, match="method"):
        restore(prior, op, y, method="dps")
    assert set(METHODS) == {"ddnm", "iterproj", "iterproj-nlc", "ddrm", "diffpir"}
    with pytest.raises(ValueError, match="eta"):
        restore(prior, op, y, steps=4, eta=1.5)
    with pytest.raises(ValueError, match="tail_steps"):
        restore(prior, op, y, steps=4, tail_steps=4)
    with pytest.raises(ValueError, match="steps"):
        restore(prior, op, y, steps=0)
    with pytest.raises(ValueError, match="shape"):
        restore(prior, make_operator("sr4", 32), y, steps=4)


def test_noisy_lambda_is_the_one_on_the_top_singular_value():
    """The recorded lambda (and the selection's crossover) is DDNM+'s lambda on A's largest singular
    value: below 1 only once every component is damped. For the blur that is sigma_next < 2 sigma_y;
    the RMS-gain scalar used before fell below 1 at the first steps of a deblur."""
    sigma_next = torch.tensor([0.02, 0.05, 1.0])
    for task, s_top in [("deblur", 1.0), ("sr4", 0.25), ("colorize", 1 / math.sqrt(3)), ("inpaint", 1.0), ("cs", 1.0)]:
        op = make_operator(task, 32)
        y = op.A(torch.zeros(1, 3, 32, 32))
        lam = Projected(None, op, y, sigma_y=0.05).lam(sigma_next)
        torch.testing.assert_close(lam, (sigma_next * s_top / 0.1).clamp(max=1.0)), task
    blur = make_operator("deblur", 32)
    assert blur.top_singular_value(torch.zeros(1, 3, 32, 32)) == pytest.approx(1.0, abs=1e-9)   # rows sum to 1


# ----------------------------------------------------------------------------------------------
# The peers, DDRM and DiffPIR, on exact Gaussian posteriors

def gaussian_posterior(op, y, mu, s, noise_std):
    """Mean and per-pixel std of x | y for x ~ N(mu, diag(s^2)) and y = A x + N(0, noise_std^2)."""
    shape = mu.shape
    n = mu.numel()
    a = op.A(torch.eye(n, dtype=torch.float64).reshape(n, *shape)).reshape(n, -1).T
    cov = torch.diag(s.reshape(-1) ** 2)
    k = a @ cov @ a.T + (noise_std ** 2 + 1e-12) * torch.eye(a.shape[0], dtype=torch.float64)
    gain = cov @ a.T @ torch.linalg.inv(k)
    mean = mu.reshape(-1) + gain @ (y.reshape(-1).double() - a @ mu.reshape(-1))
    var = (cov - gain @ a @ cov).diagonal().clamp_min(1e-12)
    return mean.reshape(shape), var.sqrt().reshape(shape)


@pytest.mark.parametrize("method", ["ddrm", "diffpir"])
@pytest.mark.parametrize("task,sigma_y", [("sr2", 0.0), ("sr2", 0.05), ("deblur", 0.0), ("deblur", 0.05)])
def test_peers_average_to_the_posterior_mean(method, task, sigma_y):
    """256 restorations of one measurement average to the exact posterior mean of independent Gaussian
    pixels (within 0.35 posterior std, RMS over pixels, at 50 steps on DDNM's grid), with and without
    measurement noise; without noise the output satisfies the measurement. DDRM on the noisy blur runs
    at eta = 1: below it, its rule for components noisier than the level pulls the mean towards y at
    every step (eta 0.85: 0.47 std at 50 steps, 0.82 at 200, 1.11 at 500; eta 1: 0.25 / 0.34 / 0.37)."""
    g = torch.Generator().manual_seed(5)
    mu = 0.3 * (2 * torch.rand(3, 8, 8, generator=g, dtype=torch.float64) - 1)
    s = 0.1 + 0.1 * torch.rand(3, 8, 8, generator=g, dtype=torch.float64)
    model = PixelGaussian(size=8, s=s, mu=mu)
    op = make_operator(task, 8, **({"sigma": 1.0} if task == "deblur" else {}))
    y = degrade(op, model.draw(1, 3), sigma_y, seed=9)
    mean, std = gaussian_posterior(op, y[0], mu, s, 2 * sigma_y)
    eta = 1.0 if (method, task) == ("ddrm", "deblur") and sigma_y else None
    res = restore(model, op, y, method=method, n=256, seed=100, steps=50, sigma_y=sigma_y, eta=eta)
    z = (res.images.double().mean(0) - mean) / std
    assert float(z.pow(2).mean().sqrt()) < 0.35, float(z.pow(2).mean().sqrt())
    if sigma_y == 0:
        assert float(res.consistency.max()) < 1e-3


def test_ddrm_noise_follows_its_per_component_rule():
    """DDRM's step on one singular component, against its formulas: where the measurement is noisier
    than the level (s sigma_next < sigma_y) the mean moves a share sqrt(1 - eta^2) sigma_next s / sigma_y
    towards y / s and the fresh noise has std eta sigma_next; elsewhere the mean is y / s and the std
    sqrt(sigma_next^2 - (sigma_y / s)^2)."""
    from noisecorr_app.sampling.noise import SeededNoise

    op = Inpainting(torch.tensor([[True, False]]).view(1, 1, 2))          # one measured pixel, one hidden
    n, eta, sy = 20000, 0.5, 0.1                                           # sigma_y = 0.1 in model units: 0.05
    y = torch.full((n, 1, 1, 2), 0.4) * op.mask
    proj = Projected(None, op, y, sigma_y=sy / 2, clip=False, rule="ddrm", eta=eta,
                     noise=SeededNoise(list(range(n))))
    x = x0 = torch.zeros(n, 1, 1, 2)                                       # the state and its x0 estimate
    for sigma_next, noisy in ((0.05, True), (0.5, False)):
        sigma, sn = torch.full((n,), 1.0), torch.full((n,), sigma_next)
        x0p = proj.data_step(x0, op.A(x0) - y, sigma, sn)
        step = x0p + sigma_next * proj.ddrm_direction(x, x0, sigma, sn)
        measured = step[:, 0, 0, 0]
        if noisy:
            share = (1 - eta ** 2) ** 0.5 * sigma_next / sy
            assert float(measured.mean()) == pytest.approx(share * 0.4, abs=3e-3)
            assert float(measured.std()) == pytest.approx(eta * sigma_next, rel=0.03)
        else:
            assert float(measured.mean()) == pytest.approx(0.4, abs=5e-3)
            assert float(measured.std()) == pytest.approx((sigma_next ** 2 - sy ** 2) ** 0.5, rel=0.03)
        hidden = step[:, 0, 0, 1]       # the null space: DDIM's mix of the direction (0 here) and fresh noise
        assert float(hidden.std()) == pytest.approx(eta * sigma_next, rel=0.03)


@pytest.mark.parametrize("damping, damped_from, power", [(1.0, 1.0, 1.0), (1.5, 0.05, 1.5), (1.5, 1.0, 1.0)])
def test_ddnm_plus_step_keeps_the_scheduled_level(damping, damped_from, power):
    """DDNM+ with a noisy measurement: on a measured component the noise the data step passes on plus
    the fresh noise it adds make exactly sigma_next (gamma), whether the component is damped
    (s sigma_next < sigma_y: weight u^p where its crossover sigma_y / s lies above damped_from, u below,
    the rest of the level fresh noise) or imposed; the hidden one
    gets sigma_next of fresh noise; the step carries its noise, so the sampler adds none."""
    from noisecorr_app.sampling.noise import SeededNoise

    op = Inpainting(torch.tensor([[True, False]]).view(1, 1, 2))
    n, sy = 20000, 0.1                                                     # model units: sigma_y = 0.05
    y = (0.4 + sy * torch.randn(n, 1, 1, 1, generator=torch.Generator().manual_seed(3))) * op.mask
    proj = Projected(None, op, y, sigma_y=sy / 2, clip=False, rule="ddnm", eta=1.0,
                     noise=SeededNoise(list(range(n))), damping=damping, damped_from=damped_from)
    assert proj.carries_noise and not Projected(None, op, y, sigma_y=0.0, noise=SeededNoise([0])).carries_noise
    x = x0 = torch.zeros(n, 1, 1, 2)
    for sigma_next, damped in ((0.05, True), (0.5, False)):
        sigma, sn = torch.full((n,), 1.0), torch.full((n,), sigma_next)
        x0p = proj.data_step(x0, op.A(x0) - y, sigma, sn)
        step = x0p + sigma_next * proj.ddnm_plus_direction(x, x0p, sigma, sn)
        measured = step[:, 0, 0, 0]
        target = (sigma_next / sy) ** power * 0.4 if damped else 0.4
        assert float(measured.mean()) == pytest.approx(target, abs=5e-3)
        assert float(measured.std()) == pytest.approx(sigma_next, rel=0.03)
        assert float(step[:, 0, 0, 1].std()) == pytest.approx(sigma_next, rel=0.03)
