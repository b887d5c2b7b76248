"""Corrections in every sampler: identity, oracle level, self-estimate, NLC (both modes), guidance."""
import pytest
import torch
from conftest import GaussianDenoiser, save_tiny_model

from noisecorr_app.extras.nlc import LevelNet, load_level_net, save_level_net
from noisecorr_app.models.loading import load_model
from noisecorr_app.sampling.corrections import NLC, OracleLevel, SelfEstimate
from noisecorr_app.sampling.run import sample, sample_steps
from noisecorr_app.sampling.samplers import SAMPLERS
from noisecorr_app.sampling.schedules import Karras


class ShiftedStart:
    """Gaussian data; sampling starts mid-way at sigma_start but with (1 + extra) times the noise."""

    def __init__(self, extra=0.3, sigma_start=2.0, n=2048):
        self.g = GaussianDenoiser(mu=0.0, s0=0.5, shape=(1, 8, 8))
        gen = torch.Generator().manual_seed(0)
        x0 = 0.5 * torch.randn(n, 1, 8, 8, generator=gen)
        self.actual = sigma_start * (1 + extra)
        self.x = x0 + self.actual * torch.randn(n, 1, 8, 8, generator=gen)
        self.sigmas = Karras(0.01, sigma_start).sigmas(30)
        self.extra, self.n = extra, n

    def true_sigma(self, x, sigma, step):
        """A perfect estimate in any sampler: for N(0, s0^2) data, Var(x) = s0^2 + sigma_true^2."""
        v = x.double().var().item()
        return torch.full_like(sigma, max(v - self.g.s0 ** 2, 1e-8) ** 0.5)

    def run(self, sampler, correction=None):
        recs = list(sample_steps(self.g, sampler=sampler, steps=30, n=self.n, sigmas=self.sigmas, x=self.x,
                                 correction=correction))
        return recs[-1].x_next.double().std().item()


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_oracle_level_recovers_from_too_much_noise(sampler):
    case = ShiftedStart()
    plain = case.run(sampler)
    fixed = case.run(sampler, OracleLevel(case.true_sigma, normalize=False, max_sigma=None))
    # Without the correction the leftover noise distorts the spread (measured: ddim 0.62, edm and
    # dpmpp 0.64, ddpm 0.47, whose own discretisation pulls the other way); with the true level it is right.
    assert abs(plain - 0.5) > 0.025
    assert abs(fixed - 0.5) < 0.005, (plain, fixed)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_oracle_with_no_shift_is_the_plain_sampler(sampler):
    g = GaussianDenoiser(shape=(1, 4, 4))
    a = sample(g, sampler=sampler, steps=10, n=8, schedule="karras").images
    b = sample(g, sampler=sampler, steps=10, n=8, schedule="karras",
               correction=OracleLevel(lambda x, s, i: s, normalize=False, max_sigma=None)).images
    torch.testing.assert_close(a, b)


def test_self_estimate_sees_extra_noise():
    case = ShiftedStart(extra=0.3, sigma_start=20.0, n=256)
    corr = SelfEstimate(max_sigma=None)
    r = corr.ratio(case.g, case.x, torch.full((case.n,), 20.0), None, 0)[0]
    # at sigma 20 >> s0, ||eps||/sqrt(n) ~ sigma_actual/sigma: r ~ 0.3
    assert abs(r.mean().item() - 0.3) < 0.03


@pytest.fixture(scope="module")
def tiny_with_nlc(tmp_path_factory):
    folder = save_tiny_model(tmp_path_factory.mktemp("nlc") / "m")
    model = load_model(folder, device="cpu")
    f = model.features(torch.zeros(1, 3, 8, 8), torch.tensor([1.0]))
    torch.manual_seed(0)
    net = LevelNet(f.shape[1], f.shape[-1])
    torch.nn.init.normal_(net.head[-1].weight, std=0.05)      # a non-zero r, as a trained one would give
    save_level_net(net, folder / "nlc", {"test": True})
    return model, load_level_net(folder / "nlc")


@pytest.mark.parametrize("sampler", list(SAMPLERS))
@pytest.mark.parametrize("mode,nfe", [("reuse", 1.0), ("official", 1.5)])
def test_nlc_runs_in_every_sampler_at_its_cost(tiny_with_nlc, sampler, mode, nfe):
    model, net = tiny_with_nlc
    steps = 6
    res = sample(model, sampler=sampler, steps=steps, n=2, correction=NLC(net, mode=mode, max_sigma=None))
    plain = sample(model, sampler=sampler, steps=steps, n=2)
    per_step = nfe * (2 if sampler == "edm" else 1)
    expected = per_step * steps - (nfe if sampler == "edm" else 0)
    assert res.nfe_per_image == pytest.approx(expected)
    assert torch.isfinite(res.images).all()
    used = torch.stack([r.sigma_used for r in res.records])
    sched = torch.tensor([r.sigma for r in res.records]).view(-1, 1)
    assert not torch.allclose(used, sched.expand_as(used))          # the level really was corrected
    assert not torch.equal(res.images, plain.images)


def test_nlc_features_match_between_passes(tiny_with_nlc):
    model, _ = tiny_with_nlc
    x, s = torch.randn(3, 3, 8, 8) * 5, torch.tensor([5.0, 5.0, 5.0])
    eps, f1 = model.eps_and_features(x, s)
    torch.testing.assert_close(f1, model.features(x, s))
    torch.testing.assert_close(eps, model.eps(x, s))


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_time_shift_runs_in_every_sampler_and_relabels(tiny_with_nlc, sampler):
    from noisecorr_app.sampling.corrections import TimeShift

    model, _ = tiny_with_nlc
    plain = sample(model, sampler=sampler, steps=5, n=2, seed=1)
    ts0 = sample(model, sampler=sampler, steps=5, n=2, seed=1, correction=TimeShift(window=0))
    ts = sample(model, sampler=sampler, steps=5, n=2, seed=1, correction=TimeShift(window=40, cutoff=0))
    torch.testing.assert_close(plain.images, ts0.images)          # an empty window is the plain sampler
    assert ts.nfe_per_image == plain.nfe_per_image
    shifted = [r for r in ts.records if not torch.allclose(r.sigma_used, torch.tensor(r.sigma))]
    assert shifted                                                # some steps were relabelled


def test_time_shift_picks_the_level_matching_the_variance(tiny_with_nlc):
    from noisecorr_app.sampling.corrections import TimeShift

    model, _ = tiny_with_nlc
    t_true, t_label = 200, 190          # where 1 - abar changes fast enough for the variance to resolve it
    s_true, s_label = model.sigma_of_timestep(t_true), model.sigma_of_timestep(t_label)
    # pure noise at t_true in VP coordinates, handed over labelled t_label
    z = (1 - model.alphas_cumprod[t_true]).sqrt().float() * torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    x = z * (1 + s_label ** 2).sqrt()
    p = TimeShift(window=40, cutoff=0).predict(model, x, s_label.expand(4), s_label.expand(4) / 2, None, 0)
    assert (model.timestep(p.sigma) - t_true).abs().max() <= 3
