"""The generation benchmark: every sampler x step count x method -> FID-C10, KID-C10, the noise figures
(leftover noise of the final images, per-image and systematic noise shift: ``sampling.trace``), NFE and
seconds per image, written cell by cell to a resumable JSON file (``results.ResultsFile``).

Comparability: every cell draws image i from seed + i with the same labels, so methods differ only
in what they do, not in their starting noise. The figures are taken over all n images of the cell,
not per batch (records merged across batches). The estimator readings behind them
are a measurement, not part of a method, so their time is taken out of ``seconds_per_image`` (nag-est's
guidance, which follows a reading's gradient, is part of its method and stays in).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..images import to_uint8
from ..methods import available, level_reader_for, setup
from ..sampling.run import merge_results, sample
from ..sampling.trace import level_bands
from .. import parallel
from .metrics import extract_features, fid, kid
from .results import ResultsFile, finite_or_none

KEY = ("sampler", "steps", "method")


class TimedEstimator:
    """The estimator, adding up the time its ``estimate`` (the trace's readings: a measurement) takes."""

    def __init__(self, estimator):
        self.estimator, self.seconds, self.last = estimator, 0.0, 0.0
        self.reference = estimator.reference

    def estimate(self, x):
        t = time.perf_counter()
        out = self.estimator.estimate(x)
        self.last = time.perf_counter() - t
        self.seconds += self.last
        return out


@dataclass
class Reference:
    """What samples are scored against: train-split statistics and features (KID) of one class or all."""
    stats: object
    features: np.ndarray


def per_step(records) -> dict:
    """Plain lists for the per-step plots: scheduled sigma, the estimator's median reading, the level used,
    ||eps||/sqrt(n) (batch means) and the 10/50/90% band of the estimated level over the scheduled one."""
    est = [float(r.extras["sigma_est"].float().median()) if "sigma_est" in r.extras else None for r in records]
    return {"sigma_scheduled": [r.sigma for r in records], "sigma_est": est,
            "sigma_used": [float(r.sigma_used.float().mean()) for r in records],
            "eps_norm": [float(r.eps_norm.float().mean()) for r in records], **level_bands(records)}


def run_cell(model, method: str, params: dict, *, sampler: str, steps: int, n: int, seed: int, batch_size: int,
             labels: list[int] | None, schedule: str = "model", eta: float = 0.0, clip_x0: bool | None = None,
             progress=None) -> dict:
    """Sample one cell in batches; returns uint8 images, the merged result, NFE and seconds per image."""
    ms = setup(method, model, steps=steps, **params)
    options = dict(ms.options)
    found = level_reader_for(model)      # the measurement: the same reader whatever the method reads or follows
    est = options["estimator"] = TimedEstimator(found) if found is not None else None
    results = []
    for start in parallel.share(list(range(0, n, batch_size))):     # all of them in one process
        k = min(batch_size, n - start)
        reading = est.seconds if est is not None else 0.0
        res = sample(model, sampler=sampler, steps=steps, n=k, seeds=[seed + start + i for i in range(k)],
                     labels=None if labels is None else labels[start:start + k], schedule=schedule,
                     correction=ms.correction, progress=(lambda r: progress(k)) if progress else None,
                     clip_x0=clip_x0, **options, **({"eta": eta} if sampler == "ddim" else {}))
        if est is not None:       # sample() reads its final images after its clock stops: not in est's total
            est.seconds -= est.last
        results.append((start, on_cpu(res), (est.seconds if est is not None else 0.0) - reading))
    results = sorted(parallel.gather(results), key=lambda r: r[0])
    res = merge_results([r for _, r, _ in results])
    seconds = res.seconds - sum(reading for _, _, reading in results)
    return {"images": to_uint8(res.images), "result": res, "records": res.records, "nfe": res.nfe_per_image,
            "seconds_per_image": seconds / n}


def on_cpu(res):
    """A batch's result with its images on the CPU, to travel between processes."""
    res.images = res.images.cpu()
    res.leftover = None if res.leftover is None else res.leftover.cpu()
    return res


def score(classifier, images: np.ndarray, ref: Reference, kid_subsets: int, kid_subset_size: int, seed: int,
          feature_batch_size: int = 500) -> dict:
    feats = extract_features(classifier, images, feature_batch_size, progress=False)
    mean, std = kid(feats, ref.features, subsets=kid_subsets, subset_size=kid_subset_size, seed=seed)
    return {"fid": fid(feats, ref.stats), "kid": mean, "kid_std": std}


def evaluate_generation(model, classifier, ref: Reference, table: ResultsFile, *, samplers: list[str],
                        steps: list[int], methods: list[str], n: int, seed: int = 0, batch_size: int = 50,
                        labels: list[int] | None = None, schedule: str = "model", eta: float = 0.0,
                        params: dict | None = None, kid_subsets: int = 100, kid_subset_size: int = 1000,
                        clip_x0: bool | None = None, log=print) -> list[dict]:
    """Fill ``table`` with every (sampler, steps, method) cell not already in it; returns this grid's rows.
    Methods the model cannot run are recorded in ``table.doc['skipped']`` and reported through ``log``."""
    from tqdm import tqdm

    params = params or {}
    can = available(model)
    for m in methods:
        if not can[m]:
            reason = f"{model.name} has no trained weights or support for '{m}'"
            table.skip(m, reason)
            log(f"skipping {m}: {reason}")
    runnable = [m for m in methods if can[m]]
    cells = [(s, k, m) for s in samplers for k in steps for m in runnable]
    todo = table.todo(cells, log)
    with tqdm(total=len(todo), desc="cells", unit="cell", disable=not parallel.is_main()) as outer:
        for sampler, k, method in todo:
            outer.set_postfix_str(f"{sampler} {k} steps {method}")
            with tqdm(total=n * k, desc=f"  {sampler} {k} {method}", unit="img-step", leave=False,
                      disable=not parallel.is_main()) as bar:
                cell = run_cell(model, method, params, sampler=sampler, steps=k, n=n, seed=seed,
                                batch_size=batch_size, labels=labels, schedule=schedule, eta=eta, clip_x0=clip_x0,
                                progress=bar.update)
            outer.update(1)
            if not parallel.is_main():        # the main process scores and writes
                continue
            scores = score(classifier, cell["images"], ref, kid_subsets, kid_subset_size, seed)
            res = cell["result"]
            figures = {k_: finite_or_none(v) for k_, v in res.figures.items()}
            table.add({"sampler": sampler, "steps": k, "method": method, "n": n,
                       "fid": finite_or_none(scores["fid"]), "kid": finite_or_none(scores["kid"]),
                       "kid_std": finite_or_none(scores["kid_std"]),
                       "noise_shift": figures.pop("systematic_shift"), **figures,
                       "leftover_per_image": None if res.leftover is None else [round(float(v), 5) for v in res.leftover],
                       "nfe": cell["nfe"], "seconds_per_image": round(cell["seconds_per_image"], 5),
                       "per_step": per_step(cell["records"]), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return table.rows_for(cells)
