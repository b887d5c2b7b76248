"""Per-image seeded noise: image i of a batch draws from its own generator seeded ``seeds[i]``.

So an image is the same whether it is sampled alone or in a batch, the baseline and the
corrected run of a comparison start from the same noise, and concurrent users cannot disturb
each other's random streams. Generators live on the CPU so results do not depend on the device.
"""
from __future__ import annotations

import torch


class SeededNoise:
    def __init__(self, seeds: list[int]):
        self.seeds = [int(s) for s in seeds]
        self.generators = [torch.Generator("cpu").manual_seed(s) for s in self.seeds]

    def __call__(self, like: torch.Tensor) -> torch.Tensor:
        if like.shape[0] != len(self.generators):
            raise ValueError(f"noise for {like.shape[0]} images but {len(self.generators)} seeds")
        z = torch.stack([torch.randn(like.shape[1:], generator=g) for g in self.generators])
        return z.to(device=like.device, dtype=like.dtype)
