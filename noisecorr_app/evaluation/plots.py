"""Figures: the noise left in the images per step and per final image (the app's Generate tab and the
generation benchmark draw the same two), FID-C10 against steps, and the benchmark's per-step shift."""
from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")          # files only; no display on servers
    import matplotlib.pyplot as plt

    return plt


def _figure_grid(n: int, size):
    """A figure of n panels in a row, outside pyplot's registry: the app makes two per request, and pyplot
    would keep them all."""
    from matplotlib.figure import Figure

    _pyplot()        # selects the Agg backend once
    fig = Figure(figsize=size)
    axes = fig.subplots(1, n, sharey=True, squeeze=False)[0]
    return fig, list(axes)


def _figure(size):
    fig, (ax,) = _figure_grid(1, size)
    return fig, ax


RUN_COLOURS = ("#d95f02", "#1b6ec2", "#7570b3", "#66a61e", "#e7298a", "#a6761d")   # baseline first
REAL = "#999999"


def level_band_figure(runs: dict, title: str | None = None):
    """runs: label -> ``trace.level_bands`` dict, the baseline first. Per step, the median and the 10-90%
    band over images of the estimated noise level divided by the scheduled one, on a log axis where
    1 = as scheduled. Two runs share one panel; more get one panel each beside the baseline (overlaid
    bands cannot be told apart)."""
    from matplotlib import ticker

    drawn = {k: v for k, v in runs.items() if v.get("ratio_median")}
    (base_label, base), *others = list(drawn.items()) or [(None, None)]
    panels = [others] if len(others) <= 1 else [[o] for o in others]
    fig, axes = _figure_grid(len(panels), (7.0, 3.6) if len(panels) == 1 else (3.2 * len(panels), 3.4))
    for ax, group in zip(axes, panels):
        ax.axhline(1.0, color="k", lw=1.2, ls="--", label="as scheduled")
        pairs = ([(base_label, base)] if base is not None else []) + group
        for (label, b), colour in zip(pairs, RUN_COLOURS if len(panels) == 1 else (RUN_COLOURS[0], RUN_COLOURS[1])):
            x = [k + 1 for k in b["step"]]
            ax.fill_between(x, b["ratio_p10"], b["ratio_p90"], color=colour, alpha=0.2, lw=0)
            ax.plot(x, b["ratio_median"], color=colour, marker=".",
                    label=f"{label}: median (band: 80% of images)" if len(panels) == 1 else label)
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(ticker.FixedLocator([0.25, 0.5, 0.7, 0.85, 1, 1.2, 1.5, 2, 3, 4]))
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel("sampling step (from noise to image)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="upper left")
    axes[0].set_ylabel("noise in the image / scheduled")
    fig.suptitle(title or "Noise at each step relative to the schedule (1x = as scheduled, above: noise left over)",
                 fontsize=9)
    fig.tight_layout()
    return fig


def leftover_figure(runs: dict, reference: dict | None, title: str | None = None):
    """runs: label -> the estimator's reading of each final image. Few images: one point per image in
    the order of the grids (so a number can be matched to a picture); many: each run's readings sorted,
    against the share of images. The real photos' 10-90% range is shaded, their median dashed."""
    from matplotlib import ticker

    fig, ax = _figure((8.0, 3.2))
    n = max((len(v) for v in runs.values()), default=0)
    if reference:
        ax.axhspan(reference["p10"], reference["p90"], color=REAL, alpha=0.25, lw=0,
                   label="real photos (80% lie in the band)")
        ax.axhline(reference["median"], color=REAL, ls="--", lw=1)
    few = n <= 32
    for i, ((label, values), colour) in enumerate(zip(runs.items(), RUN_COLOURS)):
        if few:
            offset = (i - (len(runs) - 1) / 2) * 0.15
            ax.plot([k + 1 + offset for k in range(len(values))], values, "o", color=colour, label=label)
        else:
            ys = sorted(values)
            ax.plot([100 * (k + 0.5) / len(ys) for k in range(len(ys))], ys, color=colour, lw=2, label=label)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%.3g"))
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    if few:
        ax.set_xticks(range(1, n + 1))
        ax.set_xlabel("image (in the order of the grids)")
    else:
        ax.set_xlabel(f"% of the {n} images (sorted)")
    ax.set_ylabel("noise left (estimated sigma)")
    ax.margins(y=0.15)
    ax.set_title(title or "Noise left in each final image (lower is better; clean photos read about "
                 + (f"{reference['median']:.3f})" if reference else "0.01)"), fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    return fig


def save_figure(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


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
    path = save_figure(fig, path)
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
    path = save_figure(fig, path)
    plt.close(fig)
    return path


def write_generation_plots(rows: list[dict], folder: str | Path, reference: dict | None = None) -> list[Path]:
    """fid_vs_steps.png and, per setting with estimator readings, noise_shift_<sampler>_<steps>.png (batch
    medians), noise_levels_<...>.png (per-step band over images) and leftover_<...>.png (final images)."""
    folder = Path(folder)
    out = [plot_fid_vs_steps(rows, folder / "fid_vs_steps.png")] if any(r["fid"] is not None for r in rows) else []
    for s, k in dict.fromkeys((r["sampler"], r["steps"]) for r in rows):
        p = plot_noise_shift(rows, s, k, folder / f"noise_shift_{s}_{k}.png")
        if p:
            out.append(p)
        sel = [r for r in rows if r["sampler"] == s and r["steps"] == k]
        where = f"{s}, {k} steps, n = {sel[0]['n']}"
        bands = {r["method"]: r["per_step"] for r in sel if r["per_step"].get("ratio_median")}
        if bands:
            out.append(save_figure(level_band_figure(bands, f"Noise at each step relative to the schedule ({where})"),
                                   folder / f"noise_levels_{s}_{k}.png"))
        left = {r["method"]: r["leftover_per_image"] for r in sel if r.get("leftover_per_image")}
        if left:
            out.append(save_figure(leftover_figure(left, reference, f"Noise left in the final images ({where}; "
                                                   "lower is better)"), folder / f"leftover_{s}_{k}.png"))
    return out
