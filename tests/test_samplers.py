"""Samplers against diffusers (same tiny network) and against analytic denoisers."""
import pytest
import torch
from conftest import GaussianDenoiser, save_tiny_model

from noisecorr_app.models.loading import load_model
from noisecorr_app.sampling.corrections import Correction, EpsScaling
from noisecorr_app.sampling.noise import SeededNoise
from noisecorr_app.sampling.run import sample, sample_steps
from noisecorr_app.sampling.samplers import SAMPLERS
from noisecorr_app.sampling.schedules import Karras, ModelSpacing


def _diffusers_loop(unet, scheduler, z, timesteps, generators=None, **step_kw):
    states = []
    for t in timesteps:
        with torch.no_grad():
            out = unet(z, t).sample
        kw = {"generator": generators} if generators is not None else {}
        z = scheduler.step(out, t, z, **kw, **step_kw).prev_sample
        states.append(z)
    return states


@pytest.mark.parametrize("prediction_type,clip", [("epsilon", False), ("v_prediction", False), ("epsilon", True)])
def test_ddim_matches_diffusers_step_by_step(tmp_path, prediction_type, clip):
    """clip: diffusers' clip_sample (x0 clamped, the network's eps kept), which is what clip_x0 does."""
    from diffusers import DDIMScheduler

    folder = save_tiny_model(tmp_path / "m", prediction_type=prediction_type)
    model = load_model(folder, device="cpu")
    steps = 10
    ref = DDIMScheduler(beta_start=1e-4, beta_end=0.02, beta_schedule="linear", clip_sample=clip,
                        set_alpha_to_one=True, timestep_spacing="trailing", prediction_type=prediction_type)
    ref.set_timesteps(steps)
    sigmas = ModelSpacing(model.alphas_cumprod, "trailing").sigmas(steps)
    assert torch.equal(ModelSpacing(model.alphas_cumprod, "trailing").timesteps(steps), ref.timesteps)
    z = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    expected = _diffusers_loop(model.unet, ref, z, ref.timesteps)
    x = z * (1 + sigmas[0] ** 2).sqrt()
    recs = list(sample_steps(model, sampler="ddim", steps=steps, n=2, sigmas=sigmas, x=x, clip_x0=clip))
    for rec, z_ref in zip(recs, expected):
        z_ours = rec.x_next / (1 + rec.sigma_next ** 2) ** 0.5
        torch.testing.assert_close(z_ours, z_ref, atol=5e-5 if clip else 2e-5, rtol=1e-4)
    if clip:
        assert all(float(r.x0.abs().max()) <= 1 for r in recs)
        unclipped = list(sample_steps(model, sampler="ddim", steps=steps, n=2, sigmas=sigmas, x=x, clip_x0=False))
        assert max(float(r.x0.abs().max()) for r in unclipped) > 1.5      # the clamp had work to do


def test_clip_x0_follows_the_scheduler_config(tmp_path):
    """clip_sample in the model's scheduler config (diffusers' default: on) sets the default; a plain
    function is never clamped; clip_x0 overrides either way."""
    import json

    on = load_model(save_tiny_model(tmp_path / "on"), device="cpu")
    cfg_file = save_tiny_model(tmp_path / "off") / "scheduler" / "scheduler_config.json"
    cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()), "clip_sample": False}))
    off = load_model(tmp_path / "off", device="cpu")
    assert on.clip_sample and not off.clip_sample
    peak = lambda m, **kw: max(float(r.x0.abs().max()) for r in sample_steps(m, steps=6, n=2, **kw))
    assert peak(on) <= 1 < 1.5 < peak(on, clip_x0=False)
    assert peak(off) > 1.5 > 1 >= peak(off, clip_x0=True)
    assert sample(on, steps=3, n=1).settings["clip_x0"] is True
    g = GaussianDenoiser(mu=0.0, s0=3.0, shape=(1, 4, 4))       # data far outside [-1, 1]: left alone
    assert float(list(sample_steps(g, steps=20, n=64, seed=0, schedule="karras"))[-1].x0.abs().max()) > 2


@pytest.mark.parametrize("clip", [False, True])
def test_ddpm_matches_diffusers_with_the_same_noise(tiny_model_dir, clip):
    from diffusers import DDPMScheduler

    model = load_model(tiny_model_dir, device="cpu")
    steps = 10
    ref = DDPMScheduler(beta_start=1e-4, beta_end=0.02, beta_schedule="linear", clip_sample=clip,
                        variance_type="fixed_small", timestep_spacing="trailing")
    ref.set_timesteps(steps)
    seeds = [5, 6]
    z = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    expected = _diffusers_loop(model.unet, ref, z, ref.timesteps,
                               generators=[torch.Generator().manual_seed(s) for s in seeds])
    sigmas = ModelSpacing(model.alphas_cumprod, "trailing").sigmas(steps)
    x = z * (1 + sigmas[0] ** 2).sqrt()
    recs = list(sample_steps(model, sampler="ddpm", steps=steps, seeds=seeds, n=2, sigmas=sigmas, x=x, clip_x0=clip))
    assert len(recs) == steps
    for rec, z_ref in zip(recs, expected):
        z_ours = rec.x_next / (1 + rec.sigma_next ** 2) ** 0.5
        torch.testing.assert_close(z_ours, z_ref, atol=5e-5, rtol=1e-4)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_gaussian_data_moments(sampler):
    g = GaussianDenoiser(mu=0.3, s0=0.5, shape=(1, 8, 8))
    # Ancestral DDPM ('fixed small' variance) under-disperses by O(step): 0.47 at 100 steps, 0.50 at 1000.
    steps = 1000 if sampler == "ddpm" else 100
    recs = list(sample_steps(g, sampler=sampler, steps=steps, n=256, seed=1, schedule="karras"))
    x = recs[-1].x_next.double()
    assert abs(x.mean().item() - 0.3) < 0.01
    assert abs(x.std().item() - 0.5) / 0.5 < 0.03


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpmpp"])
def test_gaussian_mixture_moments(mixture, sampler):
    recs = list(sample_steps(mixture, sampler=sampler, steps=100, n=4000, seed=2, schedule="karras"))
    x = recs[-1].x_next.reshape(4000, 2).double()
    assert x.mean(0).abs().max() < 0.06                  # the two modes are equally weighted
    cov = torch.cov(x.T)
    assert (cov - mixture.covariance()).abs().max() < 0.06
    # both modes are populated: the sign of the projection on the mode axis splits about 50/50
    frac = (x @ mixture.means[0] > 0).double().mean().item()
    assert 0.45 < frac < 0.55


@pytest.mark.parametrize("sampler,order", [("ddim", 1), ("edm", 2), ("dpmpp", 2)])
def test_convergence_order(gaussian, sampler, order):
    """Against the closed-form probability-flow solution: halving the step size divides the error by ~2^order."""
    x = 80 * torch.randn(64, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    errors = []
    for steps in (16, 32, 64):
        sigmas = Karras(0.01, 80.0).sigmas(steps)
        recs = list(sample_steps(gaussian, sampler=sampler, steps=steps, n=64, sigmas=sigmas, x=x))
        exact = gaussian.ode_solution(x.double(), 80.0, float(sigmas[-2]))
        errors.append((recs[-2].x_next.double() - exact).abs().max().item())
    ratios = [errors[i] / errors[i + 1] for i in range(2)]
    assert all(0.75 * 2 ** order < r < 1.4 * 2 ** order for r in ratios), ratios


def test_nfe_per_step():
    g = GaussianDenoiser()
    for sampler, nfe in [("ddim", 10), ("ddpm", 10), ("dpmpp", 10), ("edm", 19)]:
        res = sample(g, sampler=sampler, steps=10, n=3, schedule="karras")
        assert res.nfe_per_image == nfe


def test_identity_correction_and_unit_eps_scaling_change_nothing(gaussian):
    for sampler in SAMPLERS:
        base = sample(gaussian, sampler=sampler, steps=12, n=4, seed=3, schedule="karras").images
        same = sample(gaussian, sampler=sampler, steps=12, n=4, seed=3, schedule="karras", correction=Correction()).images
        es1 = sample(gaussian, sampler=sampler, steps=12, n=4, seed=3, schedule="karras", correction=EpsScaling(1.0)).images
        es = sample(gaussian, sampler=sampler, steps=12, n=4, seed=3, schedule="karras", correction=EpsScaling(1.02)).images
        assert torch.equal(base, same) and torch.equal(base, es1)
        assert not torch.allclose(base, es)


def test_eps_scaling_shrinks_the_sample_spread(gaussian):
    """Dividing eps by lambda > 1 removes less noise per step... and x0 = x - sigma eps/lambda keeps more of x."""
    a = list(sample_steps(gaussian, sampler="ddim", steps=20, n=512, seed=0, schedule="karras"))[-1].x_next
    b = list(sample_steps(gaussian, sampler="ddim", steps=20, n=512, seed=0, schedule="karras",
                          correction=EpsScaling(1.01)))[-1].x_next
    assert b.std() > a.std()


def test_seeded_noise_is_per_image():
    n1 = SeededNoise([7])(torch.empty(1, 3, 4, 4))
    n3 = SeededNoise([1, 7, 2])(torch.empty(3, 3, 4, 4))
    assert torch.equal(n1[0], n3[1])


def test_batch_independence(tiny_model_dir):
    model = load_model(tiny_model_dir, device="cpu")
    alone = sample(model, sampler="ddpm", steps=5, seeds=[11]).images
    batch = sample(model, sampler="ddpm", steps=5, seeds=[10, 11, 12]).images
    torch.testing.assert_close(alone[0], batch[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kw,msg", [({"sampler": "euler"}, "unknown sampler"), ({"steps": 0}, "Steps must"),
                                    ({"steps": 1001}, "Steps must"), ({"steps": 2.5}, "Steps must")])
def test_bad_settings_are_clear(gaussian, kw, msg):
    with pytest.raises(ValueError, match=msg):
        sample(gaussian, **{"steps": 5, **kw})


@pytest.mark.parametrize("steps", [1, 2, 1000])
def test_step_count_extremes(gaussian, steps):
    res = sample(gaussian, sampler="ddim", steps=steps, n=2, schedule="loglinear")
    assert len(res.records) == steps and torch.isfinite(res.images).all()


def test_ddim_eta_matches_diffusers_with_the_same_noise(tiny_model_dir):
    """Standard DDIM eta (Song et al.): the same update as diffusers' DDIMScheduler with eta."""
    from diffusers import DDIMScheduler

    model = load_model(tiny_model_dir, device="cpu")
    steps, eta, seeds = 8, 0.6, [3, 4]
    ref = DDIMScheduler(beta_start=1e-4, beta_end=0.02, beta_schedule="linear", clip_sample=False,
                        set_alpha_to_one=True, timestep_spacing="trailing")
    ref.set_timesteps(steps)
    z = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    expected = []
    zz = z
    for t in ref.timesteps:
        with torch.no_grad():
            out = model.unet(zz, t).sample
        zz = ref.step(out, t, zz, eta=eta, generator=gens).prev_sample
        expected.append(zz)
    sigmas = ModelSpacing(model.alphas_cumprod, "trailing").sigmas(steps)
    x = z * (1 + sigmas[0] ** 2).sqrt()
    recs = list(sample_steps(model, sampler="ddim", steps=steps, n=2, seeds=seeds, sigmas=sigmas, x=x, eta=eta,
                             clip_x0=False))
    for rec, z_ref in zip(recs[:-1], expected[:-1]):
        torch.testing.assert_close(rec.x_next / (1 + rec.sigma_next ** 2) ** 0.5, z_ref, atol=5e-5, rtol=1e-4)


def test_ddim_eta_styles_on_gaussian_data():
    """Standard eta keeps the data spread; the DDNM form under-disperses (it is meant for restoration)."""
    g = GaussianDenoiser(mu=0.0, s0=0.5, shape=(1, 8, 8))
    std = lambda style: list(sample_steps(g, sampler="ddim", steps=100, n=256, seed=1, schedule="karras",
                                          eta=0.85, eta_style=style))[-1].x_next.std().item()
    assert abs(std("ddim") - 0.5) < 0.03
    assert std("ddnm") < 0.45


def test_an_option_of_another_sampler_is_a_clear_error(gaussian):
    with pytest.raises(ValueError, match="the dpmpp sampler has no option eta"):
        sample(gaussian, sampler="dpmpp", steps=4, n=2, eta=0.5)
