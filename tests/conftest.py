"""Shared fixtures: tiny diffusers models built and saved locally, and analytic denoisers."""
from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED_DATA = ROOT.parent / "shared" / "data"
# the CLI as one process, and under `accelerate launch` as 2 processes (on CPUs: gloo)
LAUNCHERS = {"one": [sys.executable, "-m", "noisecorr_app"],
             "two": [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                     "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "noisecorr_app"]}

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


# -- the app in its own process ------------------------------------------------------------------------
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak since start) of a process, bytes (Linux /proc)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used, seconds (Linux /proc)."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def serve_app(folder: Path, **env_extra):
    """``python app.py`` in its own process on a free loopback port, offline, its log in ``folder``;
    yields {"url", "pid", "log"}. Extra keyword arguments are environment variables."""
    import os
    import subprocess
    import time

    import httpx

    if not Path("/proc/self/status").exists():
        pytest.skip("the server's memory and CPU time are read from /proc (Linux)")
    log_path = folder / "server.log"
    port = free_port()
    env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port), "HF_HUB_OFFLINE": "1",
           "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1", **env_extra}
    env.pop("NOISECORR_MODEL", None)
    log = log_path.open("w")
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 240
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"the server exited ({proc.returncode}):\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(url + "gradio_api/info", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise AssertionError(f"the server did not start in 240 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield {"url": url, "pid": proc.pid, "log": log_path}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
