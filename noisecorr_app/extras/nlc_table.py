"""The NLC lookup table: r_theta's average correction, recorded once, looked up at sampling time.

Our design (the paper publishes none): run a sampler on M images for a few step counts, record
r_theta at every step, and average r in bins of log sigma. The runs are either the *baseline*
sampler's (r evaluated, not applied) or NLC's own (the r it applied, closed loop).
The shift a trajectory accumulates depends on the sampler and on the step count as much as on
sigma, so the table keeps one row per (sampler, step count) and interpolates between step counts
in log steps. Stored as safetensors + JSON beside the NLC network.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


@dataclass
class NLCLookupTable:
    log_sigma: torch.Tensor            # (G,) bin centres
    steps: list[int]                   # step counts, increasing
    r: dict[str, torch.Tensor]         # sampler -> (len(steps), G) mean r (NaN where a bin saw nothing)

    def row(self, sampler: str, steps: int) -> torch.Tensor:
        if sampler not in self.r:
            raise ValueError(f"the NLC table has no rows for sampler '{sampler}' (it has {', '.join(self.r)})")
        tab = self.r[sampler]
        ls = torch.tensor([math.log(s) for s in self.steps])
        q = min(max(math.log(steps), float(ls[0])), float(ls[-1]))
        j = int(torch.searchsorted(ls, torch.tensor(q)).clamp(1, len(ls) - 1)) if len(ls) > 1 else 0
        if len(ls) == 1:
            return _fill(tab[0])
        w = (q - float(ls[j - 1])) / float(ls[j] - ls[j - 1])
        return (1 - w) * _fill(tab[j - 1]) + w * _fill(tab[j])

    def lookup(self, row: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        q = sigma.float().clamp_min(1e-8).log().cpu()
        g = self.log_sigma
        i = torch.searchsorted(g, q).clamp(1, len(g) - 1)
        w = ((q - g[i - 1]) / (g[i] - g[i - 1])).clamp(0, 1)
        return (1 - w) * row[i - 1] + w * row[i]

    def save(self, folder: Path, info: dict):
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({"log_sigma": self.log_sigma.contiguous(), **{f"r.{k}": v.contiguous() for k, v in self.r.items()}},
                  folder / "table.safetensors")
        (folder / "table.json").write_text(json.dumps({"steps": self.steps, "samplers": list(self.r), **info}, indent=2))

    @staticmethod
    def load(folder: Path) -> "NLCLookupTable":
        folder = Path(folder)
        if not (folder / "table.safetensors").exists():
            raise FileNotFoundError(f"no NLC lookup table in {folder}: build it with `python -m noisecorr_app build-lut`")
        t = load_file(folder / "table.safetensors")
        meta = json.loads((folder / "table.json").read_text())
        return NLCLookupTable(t["log_sigma"], meta["steps"], {k[2:]: v for k, v in t.items() if k.startswith("r.")})


def _fill(v: torch.Tensor) -> torch.Tensor:
    """Empty bins take the nearest filled value (the table's ends), so lookups never return NaN."""
    v = v.clone()
    ok = ~torch.isnan(v)
    if not ok.any():
        return torch.zeros_like(v)
    idx = torch.arange(len(v))
    good = idx[ok]
    nearest = good[(idx.view(-1, 1) - good.view(1, -1)).abs().argmin(1)]
    return v[nearest]


def build_table(model, net, samplers=("ddim", "ddpm", "edm", "dpmpp"), steps=(10, 20, 50), n=256, seed=0,
                bins=64, batch_size=64, labels=None, progress=None, trajectory: str = "nlc") -> NLCLookupTable:
    """Average r_theta per (sampler, steps, log-sigma bin), recorded on ``trajectory``:
    'baseline' runs (r evaluated, not applied), or 'nlc' runs (the r the network applied along its
    own corrected trajectories: the table then replays NLC's average correction, closed loop)."""
    from ..sampling.corrections import NLC, Correction, Prediction, rms
    from ..sampling.run import sample

    if trajectory not in ("baseline", "nlc"):
        raise ValueError(f"trajectory must be 'baseline' or 'nlc', got '{trajectory}'")

    class Recorder(Correction):
        """The identity correction that also writes down what r_theta would have said."""
        def __init__(self):
            self.seen = []

        def predict(self, m, x, sigma, sigma_next, cond, step):
            eps, feats = m.eps_and_features(x, sigma, cond)
            self.seen.append((sigma.cpu(), net(feats.to(next(net.parameters()).device), sigma).cpu()))
            return Prediction(x, eps, sigma, sigma_next, rms(eps))

    class AppliedRecorder(NLC):
        """NLC itself, writing down the r it applies (after its clip; none above its max sigma)."""
        def __init__(self):
            super().__init__(net)
            self.seen = []

        def ratio(self, m, x, sigma, cond, step):
            r, eps = super().ratio(m, x, sigma, cond, step)
            self.seen.append((sigma.cpu(), r.clamp(-self.r_clip, self.r_clip).cpu()))
            return r, eps

    lo, hi = math.log(model.sigma_min), math.log(model.sigma_max)
    edges = torch.linspace(lo, hi, bins + 1)
    centres = (edges[1:] + edges[:-1]) / 2
    table = {}
    for sampler in samplers:
        rows = []
        for S in steps:
            total, count = torch.zeros(bins), torch.zeros(bins)
            for start in range(0, n, batch_size):
                k = min(batch_size, n - start)
                rec = Recorder() if trajectory == "baseline" else AppliedRecorder()
                lab = None if labels is None else [labels[(start + i) % len(labels)] for i in range(k)]
                sample(model, sampler=sampler, steps=S, n=k, seed=seed + start, labels=lab, correction=rec)
                for sigma, r in rec.seen:
                    b = torch.bucketize(sigma.float().log(), edges).sub(1).clamp(0, bins - 1)
                    total.index_add_(0, b, r.float())
                    count.index_add_(0, b, torch.ones_like(r.float()))
                if progress:
                    progress(k * S)
            rows.append(torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan"))))
        table[sampler] = torch.stack(rows)
    return NLCLookupTable(centres, list(steps), table)
