"""Shared fixtures: tiny diffusers models built and saved locally, and analytic denoisers."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED_DATA = ROOT.parent / "shared" / "data"

torch.set_num_threads(2)


def tiny_unet(num_class_embeds=None, prediction_type="epsilon"):
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, norm_num_groups=4,
                       block_out_channels=(8, 16), attention_head_dim=8, num_class_embeds=num_class_embeds,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"))


def save_tiny_model(folder: Path, layout="pipeline", prediction_type="epsilon", num_class_embeds=None, extra=None):
    """A randomly initialised UNet2DModel + DDPMScheduler saved as diffusers does (safetensors)."""
    import json

    from diffusers import DDPMScheduler

    unet = tiny_unet(num_class_embeds)
    sched = DDPMScheduler(beta_start=1e-4, beta_end=0.02, beta_schedule="linear", prediction_type=prediction_type)
    if layout == "pipeline":
        unet.save_pretrained(folder / "unet")
        sched.save_pretrained(folder / "scheduler")
    else:  # flat, as the google/ddpm repos are
        unet.save_pretrained(folder)
        sched.save_pretrained(folder)
    if extra:
        (folder / "noisecorr.json").write_text(json.dumps(extra))
    return folder


@pytest.fixture(scope="module")
def one_thread():
    """For modules of small matmuls and SVDs: a second thread only fights other jobs for a shared core."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


class GaussianDenoiser:
    """Exact eps(x, sigma) for data ~ N(mu, s0^2 I): eps = (x - mu) sigma / (s0^2 + sigma^2)."""

    def __init__(self, mu=0.3, s0=0.5, shape=(1, 4, 4)):
        self.mu, self.s0, self.sample_shape = mu, s0, shape
        self.sigma_min, self.sigma_max = 0.002, 80.0

    def eps(self, x, sigma, cond=None):
        s = sigma.view(-1, 1, 1, 1)
        return (x - self.mu) * s / (self.s0 ** 2 + s ** 2)

    def ode_solution(self, x_start, sigma_start, sigma_end):
        """The probability-flow ODE has the closed form x - mu ∝ sqrt(s0^2 + sigma^2)."""
        return self.mu + (x_start - self.mu) * ((self.s0 ** 2 + sigma_end ** 2) / (self.s0 ** 2 + sigma_start ** 2)) ** 0.5


class MixtureDenoiser:
    """Exact eps for an equal-weight mixture of two isotropic Gaussians N(+-m, s0^2 I) in 2-D."""

    def __init__(self, m=(1.0, 0.5), s0=0.3):
        self.means = torch.tensor([m, [-v for v in m]], dtype=torch.float64)
        self.s0, self.sample_shape = s0, (2, 1, 1)
        self.sigma_min, self.sigma_max = 0.002, 80.0

    def eps(self, x, sigma, cond=None):
        xf = x.reshape(x.shape[0], -1).double()
        s2 = sigma.double().view(-1, 1) ** 2
        var = self.s0 ** 2 + s2                                              # (B, 1)
        d2 = ((xf[:, None, :] - self.means[None]) ** 2).sum(-1)              # (B, 2)
        w = torch.softmax(-d2 / (2 * var), dim=1)                            # posterior over components
        x0 = (w[:, :, None] * (self.means[None] + (self.s0 ** 2 / var)[:, :, None] * (xf[:, None] - self.means[None]))).sum(1)
        return ((xf - x0) / sigma.double().view(-1, 1)).reshape(x.shape).to(x.dtype)

    def covariance(self):
        return self.s0 ** 2 * torch.eye(2, dtype=torch.float64) + self.means[0][:, None] @ self.means[0][None, :]


@pytest.fixture
def gaussian():
    return GaussianDenoiser()


@pytest.fixture
def mixture():
    return MixtureDenoiser()
