"""How much of sampling time is the network, and how much is our loop (corrections, samplers, records)."""
from __future__ import annotations

import time

from ..models.denoiser import Wrapper
from ..sampling.run import sample
from ..sampling.samplers import SAMPLERS


class TimedDenoiser(Wrapper):
    """Adds up the wall time spent inside the network: the UNet's forward itself when there is
    one (so the sigma -> timestep and input scaling count as our overhead), else the eps call."""

    def __init__(self, model):
        super().__init__(model)
        self.seconds = 0.0
        self._unet = getattr(model, "unet", None)       # a diffusers UNet: timed by hooks
        self._hooks = []
        if self._unet is not None:
            self._hooks = [
                self._unet.register_forward_pre_hook(lambda *a: setattr(self, "_t0", time.perf_counter())),
                self._unet.register_forward_hook(
                    lambda *a: setattr(self, "seconds", self.seconds + time.perf_counter() - self._t0))]

    def close(self):
        for h in self._hooks:
            h.remove()

    def eps(self, x, sigma, cond=None):
        if self._unet is not None:
            return self.model.eps(x, sigma, cond)
        t0 = time.perf_counter()
        out = self.model.eps(x, sigma, cond)
        self.seconds += time.perf_counter() - t0
        return out


def loop_overhead(model, samplers=tuple(SAMPLERS), steps: int = 20, batch: int = 1, repeats: int = 3,
                  correction=None) -> list[dict]:
    """Per sampler: NFE per step, wall ms per step, and the share of wall time outside the network."""
    rows = []
    timed = TimedDenoiser(model)
    sample(timed, sampler="ddim", steps=2, n=batch)            # warm-up (allocations, kernels)
    for name in samplers:
        best = None
        for _ in range(repeats):
            timed.seconds = 0.0
            t0 = time.perf_counter()
            res = sample(timed, sampler=name, steps=steps, n=batch, seed=0, correction=correction)
            wall = time.perf_counter() - t0
            if best is None or wall < best[0]:
                best = (wall, timed.seconds, res.nfe_per_image)
        wall, net, nfe = best
        rows.append({"sampler": name, "steps": steps, "batch": batch, "nfe_per_step": nfe / steps,
                     "ms_per_step": 1000 * wall / steps, "network_ms_per_step": 1000 * net / steps,
                     "overhead_pct": 100 * (wall - net) / wall})
    timed.close()
    return rows
