"""r_theta: the small network NLC trains on a frozen denoiser's bottleneck features.

It predicts one scalar per image, ``r``, such that the noise actually in x is ``sigma (1 + r)``
(docs/methods.md section 3). Shape follows the official code: residual blocks with stride-2
downsampling on the mid-block features, then an MLP head. Our one addition: the head also reads
log sigma, which costs nothing and tells the head the level the features were computed at.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from .storage import load_net, save_net


class ResBlock(nn.Module):
    def __init__(self, ch: int, groups: int = 16, dropout: float = 0.1):
        super().__init__()
        self.body = nn.Sequential(nn.GroupNorm(groups, ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1),
                                  nn.GroupNorm(groups, ch), nn.SiLU(), nn.Dropout(dropout), nn.Conv2d(ch, ch, 3, padding=1))

    def forward(self, x):
        return x + self.body(x)


class LevelNet(nn.Module):
    """features (B, C, h, w) + sigma (B,) -> r (B,)."""

    def __init__(self, channels: int, spatial: int, blocks: int = 2, hidden: int = 128):
        super().__init__()
        self.config = dict(channels=channels, spatial=spatial, blocks=blocks, hidden=hidden)
        layers, s = [], spatial
        for _ in range(blocks):
            layers += [ResBlock(channels), nn.Conv2d(channels, channels, 3, stride=2, padding=1)]
            s = math.ceil(s / 2)
        self.body = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(channels * s * s + 1, hidden), nn.LayerNorm(hidden), nn.GELU(),
                                  nn.Linear(hidden, 1))
        nn.init.zeros_(self.head[-1].weight)      # start at r = 0: "the schedule is right"
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, features: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        h = self.body(features).flatten(1)
        return self.head(torch.cat([h, sigma.float().clamp_min(1e-4).log().view(-1, 1) / 4], 1)).view(-1)


def save_level_net(net: LevelNet, folder: Path, info: dict):
    save_net(net, folder, "nlc", info)


def load_level_net(folder: Path, device="cpu") -> LevelNet:
    build = lambda c: LevelNet(c["channels"], c["spatial"], c["blocks"], c["hidden"])
    return load_net(folder, build, "NLC network", "train nlc", device).requires_grad_(False)
