"""PNG figures of the generation benchmark's rows: FID-C10 against steps, and the per-step noise shift."""
from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")          # files only; no display on servers
    import matplotlib.pyplot as plt

    return plt


def plot_fid_vs_steps(rows: list[dict], path: str | Path) -> Path:
    """One panel per sampler: FID-C10 against the number of steps, one line per method."""
    plt = _pyplot()
    samplers = list(dict.fromkeys(r["sampler"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = plt.subplots(1, len(samplers), figsize=(max(6.0, 4.2 * len(samplers)), 3.8), squeeze=False,
                             sharey=True)
    for ax, s in zip(axes[0], samplers):
        for m in methods:
            pts = sorted((r["steps"], r["fid"]) for r in rows if r["sampler"] == s and r["method"] == m
                         and r["fid"] is not None)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=m)
        ax.set_title(s)
        ax.set_xlabel("steps")
        ax.set_xscale("log")
        ax.set_xticks(sorted({r["steps"] for r in rows}))
        ax.get_xaxis().set_major_formatter(plt.matplotlib.ticker.ScalarFormatter())
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("FID-C10 (lower is better)")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(f"FID-C10 against steps, n = {rows[0]['n']} per point\n(our classifier's features: "
                 f"not comparable with Inception FID)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_noise_shift(rows: list[dict], sampler: str, steps: int, path: str | Path) -> Path | None:
    """For one (sampler, steps): the estimator's sigma against the scheduled one per step, each method,
    and their log ratio. None when no row of that setting has estimator readings."""
    sel = [r for r in rows if r["sampler"] == sampler and r["steps"] == steps
           and any(v is not None for v in r["per_step"]["sigma_est"])]
    if not sel:
        return None
    plt = _pyplot()
    import math

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    sched = sel[0]["per_step"]["sigma_scheduled"]
    a.plot(range(len(sched)), sched, "k--", lw=2, label="scheduled")
    for r in sel:
        ps = r["per_step"]
        pts = [(i, e, s) for i, (e, s) in enumerate(zip(ps["sigma_est"], ps["sigma_scheduled"])) if e and s > 0]
        shift = f" ({r['noise_shift']:.3f})" if r.get("noise_shift") is not None else ""
        a.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=r["method"] + shift)
        b.plot([p[0] for p in pts], [math.log(p[1] / p[2]) for p in pts], marker=".", label=r["method"])
    a.set_yscale("log")
    a.set_xlabel("step")
    a.set_ylabel("sigma")
    a.set_title("estimated (median over images) vs scheduled sigma", fontsize=9)
    a.legend(fontsize=7, title="method (noise shift)", title_fontsize=7)
    b.axhline(0, color="k", lw=1)
    b.set_xlabel("step")
    b.set_ylabel("log(sigma_est / sigma_scheduled)")
    b.set_title("noise shift per step (> 0: more noise left than scheduled)", fontsize=9)
    for ax in (a, b):
        ax.grid(alpha=0.3)
    fig.suptitle(f"{sampler}, {steps} steps, n = {sel[0]['n']}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_generation_plots(rows: list[dict], folder: str | Path) -> list[Path]:
    """fid_vs_steps.png and one noise_shift_<sampler>_<steps>.png per setting with estimator readings."""
    folder = Path(folder)
    out = [plot_fid_vs_steps(rows, folder / "fid_vs_steps.png")] if any(r["fid"] is not None for r in rows) else []
    for s, k in dict.fromkeys((r["sampler"], r["steps"]) for r in rows):
        p = plot_noise_shift(rows, s, k, folder / f"noise_shift_{s}_{k}.png")
        if p:
            out.append(p)
    return out
