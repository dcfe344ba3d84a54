"""PNG charts of eval results: precision-recall curves and a workload threshold sweep.

matplotlib is a dev dependency: import this module lazily (only when a plot is asked for),
so the service never imports it. Figures are drawn on an explicit Agg canvas, never through
pyplot, so there is no display, no global backend switch and no figure registry to leak.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from app.eval.scoring import at_threshold, curve

DPI = 120
PRECISION_LINES = (0.90, 0.95)
OVERALL = "overall"

Scores = npt.NDArray[np.float64]
# (scores, 0/1 labels) of one set of pairs; labels may be any integer or bool array.
PairSet = tuple[npt.NDArray[np.floating[Any]], npt.NDArray[Any]]


def _checked(
    name: str, scores: npt.NDArray[np.floating[Any]], labels: npt.NDArray[Any]
) -> tuple[Scores, list[int]]:
    """The set's scores as floats and labels as a list of 0/1; ValueError if unusable."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels)
    if s.size == 0:
        raise ValueError(f"score set {name!r} is empty: nothing to plot")
    if s.ndim != 1 or s.shape != y.shape:
        raise ValueError(f"score set {name!r}: scores and labels must be 1-d and of equal length")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"score set {name!r}: labels must be 0 or 1")
    return s, [int(v) for v in y]


def _save(fig: Figure, out: Path) -> None:
    """Render on the Agg canvas and write a PNG, creating the parent folder."""
    out.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)  # attaches itself to the figure: render with Agg, no display
    fig.savefig(out, format="png", dpi=DPI)


def _pr_panel(ax: Axes, sets: dict[str, tuple[Scores, list[int]]], decision: float | None) -> None:
    for name, (s, y) in sets.items():
        points = curve(s, y)
        recall = [p.recall for p in points]
        precision = [p.precision for p in points]
        (line,) = ax.plot(recall, precision, label=f"{name} (n={len(y)}, pos={sum(y)})")
        if decision is not None:
            chosen = at_threshold(s, y, decision)
            ax.plot(
                chosen.recall,
                chosen.precision,
                marker="o",
                markersize=7,
                markeredgecolor="black",
                color=line.get_color(),
                linestyle="none",
            )
    for level in PRECISION_LINES:
        ax.axhline(level, color="grey", linestyle="--", linewidth=0.8)
        ax.annotate(
            f"P={level:.2f}",
            (0.0, level),
            xytext=(2, 2),
            textcoords="offset points",
            fontsize=7,
            color="grey",
        )
    if decision is not None:
        ax.plot(
            [],
            [],
            marker="o",
            color="white",
            markeredgecolor="black",
            linestyle="none",
            label=f"decision @ {decision:.2f}",
        )
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(max(0.0, ax.get_ylim()[0]), 1.01)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("precision-recall")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")


def _threshold_panel(ax: Axes, name: str, s: Scores, y: list[int], decision: float | None) -> None:
    points = curve(s, y)
    thresholds = [p.threshold for p in points]
    ax.plot(thresholds, [p.precision for p in points], label="precision")
    ax.plot(thresholds, [p.recall for p in points], label="recall")
    if decision is not None:
        ax.axvline(decision, color="black", linestyle=":", linewidth=1.0, label="decision")
    ax.set_ylim(0.0, 1.01)
    ax.set_xlabel("score threshold (duplicate if score >= threshold)")
    ax.set_ylabel("rate")
    ax.set_title(f"precision and recall vs threshold ({name})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")


def plot_pairs(
    scores_by_set: dict[str, PairSet],
    out: Path,
    *,
    title: str,
    decision: float | None = None,
) -> None:
    """Precision-recall curves per set, and precision/recall vs threshold for "overall".

    `scores_by_set` maps a set name ("qqp", "comqa", "overall", ...) to (scores, 0/1 labels).
    Without an "overall" set, the threshold panel pools every set.
    """
    if not scores_by_set:
        raise ValueError("no score sets to plot")
    sets = {name: _checked(name, s, y) for name, (s, y) in scores_by_set.items()}
    if OVERALL in sets:
        pooled_name, (pooled_s, pooled_y) = OVERALL, sets[OVERALL]
    else:
        pooled_name = "all sets"
        pooled_s = np.concatenate([s for s, _ in sets.values()])
        pooled_y = [v for _, y in sets.values() for v in y]

    fig = Figure(figsize=(13, 5.5), dpi=DPI, layout="constrained")
    pr_ax, th_ax = fig.subplots(1, 2)
    _pr_panel(pr_ax, sets, decision)
    _threshold_panel(th_ax, pooled_name, pooled_s, pooled_y, decision)
    fig.suptitle(title)
    _save(fig, out)


def plot_workload(
    rows: Sequence[tuple[float, int, int, float, float]],
    out: Path,
    *,
    title: str,
    default: float | None = None,
) -> None:
    """A workload sweep: served and true hits (left), precision and hit recall (right).

    Each row is (threshold, served, true_hits, precision, hit_recall).
    """
    if not rows:
        raise ValueError("no workload rows to plot")
    ordered = sorted(rows, key=lambda row: row[0])
    thresholds = [row[0] for row in ordered]

    fig = Figure(figsize=(13, 5.5), dpi=DPI, layout="constrained")
    hits_ax, rate_ax = fig.subplots(1, 2)
    hits_ax.plot(thresholds, [row[1] for row in ordered], marker=".", label="served hits")
    hits_ax.plot(thresholds, [row[2] for row in ordered], marker=".", label="true hits")
    hits_ax.set_ylim(bottom=0)
    hits_ax.set_ylabel("hits")
    hits_ax.set_title("hits vs threshold")
    rate_ax.plot(thresholds, [row[3] for row in ordered], marker=".", label="precision")
    rate_ax.plot(thresholds, [row[4] for row in ordered], marker=".", label="hit recall")
    rate_ax.set_ylim(0.0, 1.01)
    rate_ax.set_ylabel("rate")
    rate_ax.set_title("precision and hit recall vs threshold")
    for ax in (hits_ax, rate_ax):
        if default is not None:
            ax.axvline(default, color="black", linestyle=":", label=f"default {default:.2f}")
        ax.set_xlabel("similarity threshold")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    _save(fig, out)
