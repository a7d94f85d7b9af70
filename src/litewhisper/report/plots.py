"""Report figures from plain data (no models): each function writes one self-explanatory PNG (matplotlib, Agg)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "LINEAR_COLUMNS",
    "Point",
    "SweepPoint",
    "pareto_frontier",
    "plot_pareto",
    "plot_rank_heatmap",
    "plot_theta_sweep",
]

LINEAR_COLUMNS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


@dataclass(frozen=True)
class Point:
    """One model on the accuracy/size plane: encoder parameters (millions) and corpus WER (%)."""

    label: str
    params_m: float
    wer: float
    group: str = "compressed"  # "original", "preset", "attention θ", "MLP θ"...


@dataclass(frozen=True)
class SweepPoint:
    theta: float
    wer: float
    params_m: float


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def pareto_frontier(points: Sequence[Point]) -> list[Point]:
    """Points not beaten on both size and WER, by increasing size."""
    front, best = [], math.inf
    for p in sorted(points, key=lambda p: (p.params_m, p.wer)):
        if p.wer < best:
            front.append(p)
            best = p.wer
    return front


def plot_pareto(points: Sequence[Point], path: str | os.PathLike, title: str = "") -> Path:
    """Figure 1: corpus WER against encoder size; the Pareto frontier drawn as a line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4), layout="constrained")
    markers = {"original": ("*", 160), "LiteASR preset": ("o", 60), "litewhisper budget": ("s", 60)}
    for group in dict.fromkeys(p.group for p in points):
        pts = [p for p in points if p.group == group]
        marker, size = markers.get(group, ("^", 36))
        ax.scatter([p.params_m for p in pts], [p.wer for p in pts], marker=marker, s=size, label=group, zorder=3)
        if group in markers:
            for p in pts:
                ax.annotate(p.label, (p.params_m, p.wer), textcoords="offset points", xytext=(5, 4), fontsize=8)
    front = pareto_frontier([p for p in points if math.isfinite(p.wer)])
    ax.plot([p.params_m for p in front], [p.wer for p in front], "k--", lw=1, alpha=0.6, label="Pareto frontier")
    wers = [p.wer for p in points if math.isfinite(p.wer) and p.wer > 0]
    if wers and max(wers) > 10 * min(wers):  # runaway variants would flatten the rest
        from matplotlib.ticker import FuncFormatter

        ax.set_yscale("log")
        plain = FuncFormatter(lambda v, _: f"{v:g}")  # 20, 50, 100 rather than 2×10¹
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
    ax.set_xlabel("encoder parameters (millions)")
    ax.set_ylabel("corpus WER (%)" + (", log scale" if ax.get_yscale() == "log" else ""))
    ax.set_title(title or "Figure 1: accuracy vs encoder size (lower left is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_rank_heatmap(
    ratios: dict[str, list[list[float]]],
    path: str | os.PathLike,
    columns: Sequence[str] = LINEAR_COLUMNS,
    title: str = "",
) -> Path:
    """Figure 6: per-layer k / D (rank over the smaller side; 1 = kept dense), one panel per variant.

    ratios[variant][layer][column], NaN where a layer has no such linear."""
    import numpy as np

    plt = _pyplot()
    names = list(ratios)
    n_layers = max(len(r) for r in ratios.values())
    fig, axes = plt.subplots(
        1, len(names), figsize=(2.2 + 2.6 * len(names), 2.2 + 0.35 * n_layers), squeeze=False, layout="constrained"
    )
    image = None
    for ax, name in zip(axes[0], names, strict=False):
        data = np.array(ratios[name], dtype=float)  # (layers, columns)
        image = ax.imshow(data, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
        for (i, j), v in np.ndenumerate(data):
            if np.isfinite(v):
                ax.text(
                    j,
                    i,
                    "D" if v >= 1 else f"{v:.2f}",
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="black" if v > 0.6 else "white",
                )
        ax.set_xticks(range(len(columns)), [c.replace("_proj", "") for c in columns], fontsize=8)
        ax.set_yticks(range(data.shape[0]), [str(i) for i in range(data.shape[0])], fontsize=7)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("linear")
    axes[0][0].set_ylabel("encoder layer")
    fig.colorbar(image, ax=axes[0].tolist(), fraction=0.03, label="k / D (D = dense)")
    fig.suptitle(title or "Figure 6: per-layer rank ratio k / min(D_in, D_out)", fontsize=10)
    return _save(fig, path)


def plot_theta_sweep(
    sweeps: dict[str, list[SweepPoint]],
    path: str | os.PathLike,
    reference: tuple[float, float] | None = None,
    title: str = "",
) -> Path:
    """Figure 7: WER (left) and encoder size (right) as θ varies, one line per swept group.

    `reference` = (WER, params M) of the uncompressed model, drawn as dotted lines."""
    plt = _pyplot()
    fig, (ax_w, ax_p) = plt.subplots(1, 2, figsize=(9.6, 3.8), layout="constrained")
    thetas = sorted({p.theta for pts in sweeps.values() for p in pts})  # evenly spaced: θ crowds near 1
    for label, pts in sweeps.items():
        pts = sorted(pts, key=lambda p: p.theta)
        xs = [thetas.index(p.theta) for p in pts]
        ax_w.plot(xs, [p.wer for p in pts], "o-", label=label)
        ax_p.plot(xs, [p.params_m for p in pts], "o-", label=label)
    if reference is not None:
        ax_w.axhline(reference[0], color="gray", ls=":", label="original")
        ax_p.axhline(reference[1], color="gray", ls=":", label="original")
    for ax, ylabel in ((ax_w, "corpus WER (%)"), (ax_p, "encoder parameters (millions)")):
        ax.set_xticks(range(len(thetas)), [f"{t:g}" for t in thetas])
        ax.set_xlabel("θ (explained variance kept)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title or "Figure 7: sensitivity to θ (the other group kept dense)", fontsize=10)
    return _save(fig, path)
