"""Charts for people, drawn with matplotlib: curves, sweep summaries, confusion matrices, robustness.

Every function returns a matplotlib ``Figure`` built with the object API (no pyplot state, so a
process can draw many and shows none) and rendered by the Agg backend. TensorBoard
(``add_figure``), the report pages and ``evaluate`` take the same figures. They are ``WIDTH``
inches wide with 9-11 pt text, so printed at A4 width the text keeps about its size; legends sit
below the axes, never over the lines.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import matplotlib

matplotlib.use("Agg")  # files only: no window, no display needed

from matplotlib.axes import Axes  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

WIDTH = 7.5  # inches: about the printable width of an A4 page
DPI = 150
STYLE = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
}
LINESTYLES = ("-", "--", "-.", ":")
Series = Mapping[str, Sequence[tuple[float, float]]]
F = TypeVar("F", bound=Callable[..., Figure])


def styled(draw: F) -> F:
    """Draw under the package's text sizes (matplotlib resolves them as the artists are made)."""

    @wraps(draw)
    def wrapper(*args: Any, **kwargs: Any) -> Figure:
        with matplotlib.rc_context(STYLE):
            return draw(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def png(fig: Figure, dpi: int = DPI) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png(fig))
    return path


def line_style(i: int) -> dict[str, Any]:
    """The i-th series' colour and dash: ten colours, then the same ten dashed, and so on."""
    return {"color": f"C{i % 10}", "linestyle": LINESTYLES[i // 10 % len(LINESTYLES)]}


def legend_columns(labels: Sequence[str]) -> int:
    longest = max((len(label) for label in labels), default=0)
    return 1 if longest > 45 else 2 if longest > 25 else 3 if longest > 15 else 4


def new_figure(height: float, legend: Sequence[str] = (), ncols: int = 1, width: float = WIDTH):
    """A figure with ``ncols`` axes in a row, taller by the rows its legend (below the axes) needs."""
    rows = -(-len(legend) // legend_columns(legend)) if legend else 0
    fig = Figure(figsize=(width, height + 0.2 * rows), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0].tolist()
    return fig, axes


def legend_below(fig: Figure, ax: Axes) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if labels:
        fig.legend(handles, labels, loc="outside lower center", ncols=legend_columns(labels), frameon=False)


def smoothed(points: Sequence[tuple[float, float]], span: int) -> list[tuple[float, float]]:
    """An exponential moving average over about ``span`` points, debiased at the start as
    TensorBoard's smoothing is (the first points are not pulled towards zero)."""
    weight = 1 - 2 / (span + 1)
    out, avg = [], 0.0
    for n, (x, y) in enumerate(points, start=1):
        avg = weight * avg + (1 - weight) * y
        out.append((x, avg / (1 - weight**n)))
    return out


def finite(points: Sequence[tuple[float, float]], positive: bool = False) -> list[tuple[float, float]]:
    return sorted((x, y) for x, y in points if math.isfinite(y) and (y > 0 or not positive))


def wide_range(series: Series, factor: float = 30.0) -> bool:
    """Whether the positive values span more than ``factor`` (then a log axis reads better)."""
    ys = [y for pts in series.values() for _, y in pts if math.isfinite(y) and y > 0]
    return bool(ys) and max(ys) > factor * min(ys)


@styled
def curves(
    series: Series,
    title: str,
    xlabel: str,
    ylabel: str,
    logy: bool = False,
    faint: Series | None = None,
    legend: bool | None = None,
    whole_x: bool = False,
    height: float = 3.6,
) -> Figure:
    """One line per series (markers when it has few points), legend below when there are several
    (or ``legend``); ``faint`` adds thin lines in the same colours (the unsmoothed values under a
    smoothed curve); ``whole_x``: ticks on whole numbers only (epochs)."""
    drawn = {label: finite(pts, logy) for label, pts in series.items()}
    drawn = {label: pts for label, pts in drawn.items() if pts}
    legend = len(drawn) > 1 if legend is None else legend
    fig, (ax,) = new_figure(height, list(drawn) if legend else ())
    for i, (label, pts) in enumerate(drawn.items()):
        xs, ys = zip(*pts, strict=True)
        if faint and faint.get(label):
            fx, fy = zip(*finite(faint[label], logy), strict=True)
            ax.plot(fx, fy, linewidth=0.7, alpha=0.35, **line_style(i))
        marker = "o" if len(pts) <= 30 else None
        ax.plot(xs, ys, label=label, marker=marker, markersize=4, linewidth=1.6, **line_style(i))
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if logy:
        ax.set_yscale("log")
    if whole_x:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if legend:
        legend_below(fig, ax)
    return fig


def log_key(key: str) -> bool:
    """Keys read on a log axis: learning rates and weight decay."""
    name = key.lstrip("+").rsplit(".", 1)[-1]
    return name == "lr" or name.endswith("_lr") or "weight_decay" in name


@styled
def against(key: str, series: Mapping[str, Sequence[tuple[Any, float]]], title: str, ylabel: str) -> Figure:
    """Each series' values against the values of one swept key (numbers: a line through the mean
    at each value, with every job as a dot; anything else: one position per value)."""
    fig, (ax,) = new_figure(3.4, list(series))
    xs_all = [x for pts in series.values() for x, _ in pts]
    numeric = all(isinstance(x, (int, float)) for x in xs_all)
    for i, (label, pts) in enumerate(series.items()):
        by_x: dict[Any, list[float]] = {}
        for x, y in pts:
            by_x.setdefault(x, []).append(y)
        xs = sorted(by_x) if numeric else list(by_x)
        means = [sum(by_x[x]) / len(by_x[x]) for x in xs]
        ax.plot(xs, means, marker="o", label=label, **line_style(i))
        if any(len(v) > 1 for v in by_x.values()):
            ax.scatter(
                [x for x, _ in pts], [y for _, y in pts], s=12, alpha=0.6, color=line_style(i)["color"]
            )
    if numeric and log_key(key) and all(x > 0 for x in xs_all):
        ax.set_xscale("log")
    ax.set(title=title, xlabel=key.lstrip("+"), ylabel=ylabel)
    legend_below(fig, ax)
    return fig


def text_colour(rgba: Sequence[float]) -> str:
    r, g, b = rgba[:3]
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"


@styled
def heatmap(
    grid: Sequence[Sequence[float]],
    rows: Sequence[str],
    cols: Sequence[str],
    row_key: str,
    col_key: str,
    title: str,
    unit: str,
    notes: Sequence[Sequence[str]] | None = None,
) -> Figure:
    """A table of numbers as coloured cells, each with its value; a cell without one shows its
    ``notes`` entry (why it has none)."""
    import numpy as np

    data = np.ma.masked_invalid(np.array(grid, dtype=float))
    fig, (ax,) = new_figure(1.8 + 0.55 * len(rows))
    ax.grid(False)
    image = ax.imshow(data, cmap="viridis", aspect="auto")
    if data.count():
        lo, hi = float(data.min()), float(data.max())
        image.set_clim((lo - 0.5, hi + 0.5) if lo == hi else (lo, hi))
    for i in range(len(rows)):
        for j in range(len(cols)):
            value = data[i, j]
            if np.ma.is_masked(value):
                note = notes[i][j] if notes else "n/a"
                ax.text(j, i, note, ha="center", va="center", color="0.35", fontsize=9)
            else:
                colour = text_colour(image.cmap(image.norm(float(value))))
                ax.text(j, i, f"{float(value):.2f}", ha="center", va="center", color=colour, fontsize=10)
    ax.set_xticks(range(len(cols)), labels=cols)
    ax.set_yticks(range(len(rows)), labels=rows)
    ax.set(title=title, xlabel=col_key.lstrip("+"), ylabel=row_key.lstrip("+"))
    fig.colorbar(image, ax=ax, label=unit)
    return fig


@styled
def confusion(cm: Any, title: str) -> Figure:
    """torchmetrics' confusion-matrix plot (rows true, columns predicted, every count written),
    coloured on a log scale so that the few mistakes show beside the large diagonal."""
    import torch
    from torchmetrics.classification import MulticlassConfusionMatrix

    cm = torch.as_tensor(cm).long()
    fig = Figure(figsize=(WIDTH * 0.8, WIDTH * 0.68), layout="constrained")
    ax = fig.subplots()
    with warnings.catch_warnings():  # matplotlib asks torch's Tensor.__array__ for numpy 2's copy=
        warnings.filterwarnings(
            "ignore", "__array__ implementation doesn't accept a copy", DeprecationWarning
        )
        MulticlassConfusionMatrix(num_classes=len(cm)).plot(val=cm, ax=ax, cmap="Blues")
    (image,) = ax.images
    image.set_norm(LogNorm(vmin=0.8, vmax=max(1.0, float(cm.max()))))
    for text in ax.texts:  # torchmetrics writes 15 pt: too big for ten columns of counts
        text.set_fontsize(8)
        value = float(text.get_text() or 0)
        text.set_color(text_colour(image.cmap(image.norm(value))) if value else "0.6")
    ax.set_xlabel("predicted digit", fontsize=10)
    ax.set_ylabel("true digit", fontsize=10)
    ax.tick_params(labelsize=9, labelrotation=0)
    ax.grid(False)
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="digits (log scale)", shrink=0.8)
    return fig


def per_class_accuracy(cm: Any) -> list[float]:
    """Accuracy of each true class (the share of its digits predicted right), from a confusion matrix."""
    rows = [list(map(float, r)) for r in cm]
    return [row[d] / sum(row) if sum(row) else math.nan for d, row in enumerate(rows)]


@styled
def per_class(cm: Any, title: str) -> Figure:
    """Accuracy of each digit as a dot, with the overall accuracy as a dashed line."""
    acc = [100 * a for a in per_class_accuracy(cm)]
    total = sum(sum(map(float, r)) for r in cm)
    overall = 100 * sum(float(cm[d][d]) for d in range(len(acc))) / total if total else math.nan
    fig, (ax,) = new_figure(3.0)
    ax.plot(range(len(acc)), acc, "o", markersize=7, color="C0", label="accuracy of the digit")
    for d, a in enumerate(acc):
        if math.isfinite(a):
            ax.annotate(
                f"{a:.1f}", (d, a), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8
            )
    if math.isfinite(overall):
        ax.axhline(overall, linestyle="--", color="0.5", linewidth=1, label=f"all digits: {overall:.2f}%")
    shown = [a for a in acc if math.isfinite(a)]
    if shown:
        bottom = max(0.0, min(shown) - 2.5)
        ax.set_ylim(bottom, 100 + 0.12 * (100 - bottom))  # room above 100% for the values written there
    ax.set_xticks(range(len(acc)))
    ax.set(title=title, xlabel="true digit", ylabel="accuracy (%)")
    legend_below(fig, ax)
    return fig


@styled
def robustness(rows: Sequence[Mapping[str, Any]]) -> Figure:
    """Two panels: accuracy against the shift in each direction, and against the rotation angle."""
    clean = 100 * next(r["acc"] for r in rows if r["transform"] == "none")
    directions = [
        t.removeprefix("shift ")
        for t in dict.fromkeys(r["transform"] for r in rows)
        if t.startswith("shift ")
    ]
    fig, (left, right) = new_figure(3.4, directions, ncols=2)
    for i, d in enumerate(directions):
        pts = [(0, clean)] + [(r["amount"], 100 * r["acc"]) for r in rows if r["transform"] == f"shift {d}"]
        left.plot(
            *zip(*sorted(pts), strict=True), marker="o", markersize=4, label=f"shifted {d}", **line_style(i)
        )
    turns = sorted([(0, clean)] + [(r["amount"], 100 * r["acc"]) for r in rows if r["transform"] == "rotate"])
    right.plot(*zip(*turns, strict=True), marker="o", markersize=4, color="C4")
    left.set(title="shifted test digits", xlabel="shift (pixels)", ylabel="accuracy (%)")
    left.xaxis.set_major_locator(MaxNLocator(integer=True))
    right.set(title="rotated test digits", xlabel="rotation (degrees, counter-clockwise > 0)")
    right.sharey(left)
    legend_below(fig, left)
    return fig
