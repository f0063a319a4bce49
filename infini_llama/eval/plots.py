"""Figures of the report (matplotlib, drawn off-screen with the Agg canvas, written as PNG).

Accuracy heatmaps always use the fixed 0–100% colour scale, so two heatmaps can be compared by eye. Figures are
written with a palette of 256 colours: a third of the bytes of full colour for plots like these, which reports
commit by the dozen.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence

Series = dict[str, tuple[Sequence[float], Sequence[float]]]  # line label -> (x values, y values)


def _figure(width: float = 6.4, height: float = 4.0):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError("the report's figures need matplotlib: pip install matplotlib") from exc
    figure = Figure(figsize=(width, height), dpi=120)
    FigureCanvasAgg(figure)
    return figure


def save(figure, path: str | os.PathLike) -> None:
    """Write `figure` to `path` as a PNG of 256 colours (Pillow, which matplotlib needs, quantizes it)."""
    from PIL import Image

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    buffer.seek(0)
    with Image.open(buffer) as image:
        image.convert("RGB").quantize(colors=256).save(path, format="PNG", optimize=True)


def heatmap(
    values: Sequence[Sequence[float | None]],
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    path: str | os.PathLike,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    vmin: float = 0.0,
    vmax: float = 100.0,
    fmt: str = "{:.0f}",
    cmap: str = "viridis",
) -> None:
    """An annotated heatmap on a fixed colour scale [vmin, vmax]; None cells are left blank."""
    import numpy as np

    data = np.array([[np.nan if v is None else v for v in row] for row in values], dtype=float)
    figure = _figure(max(4.0, 1.0 + 0.8 * len(col_labels)), max(3.0, 1.2 + 0.45 * len(row_labels)))
    ax = figure.add_subplot()
    image = ax.imshow(data, vmin=vmin, vmax=vmax, cmap=cmap, aspect="auto")
    ax.set_xticks(range(len(col_labels)), col_labels)
    ax.set_yticks(range(len(row_labels)), row_labels)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    middle = (vmin + vmax) / 2
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            if not np.isnan(data[i, j]):
                colour = "black" if data[i, j] > middle else "white"
                ax.text(j, i, fmt.format(data[i, j]), ha="center", va="center", color=colour, fontsize=8)
    figure.colorbar(image, ax=ax)
    figure.tight_layout()
    save(figure, path)


def lines(
    series: Series,
    path: str | os.PathLike,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    ylim: tuple[float, float] | None = (0.0, 100.0),
    xlog: bool = False,
    ylog: bool = False,
    vline: float | None = None,
    vline_label: str | None = None,
    categorical_x: Sequence[str] | None = None,
) -> None:
    """One line per entry of `series`; `categorical_x` names equally spaced x positions 0, 1, …"""
    figure = _figure()
    ax = figure.add_subplot()
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", label=label)
    if xlog:
        ax.set_xscale("log", base=2)
        ticks = sorted({x for xs, _ in series.values() for x in xs})
        ax.set_xticks(ticks, [str(int(t)) for t in ticks])
    if ylog:
        ax.set_yscale("log")
    if categorical_x is not None:
        ax.set_xticks(range(len(categorical_x)), categorical_x)
    if vline is not None:
        ax.axvline(vline, color="grey", linestyle="--", label=vline_label)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    figure.tight_layout()
    save(figure, path)


def panels(
    series: dict[str, Series],
    path: str | os.PathLike,
    *,
    xlabel: str,
    ylabel: str,
    ylog: bool = False,
    vline: float | None = None,
    hlines: dict[str, float] | None = None,
    ylim: tuple[float, float] | None = None,
) -> None:
    """One panel per entry of `series` (its title), side by side with a shared y axis, a line per label in each;
    `hlines` draws a labelled horizontal reference line at each of its values in every panel."""
    figure = _figure(width=3.6 * len(series), height=3.4)
    axes = figure.subplots(1, len(series), sharey=True, squeeze=False)[0]
    for ax, (title, lines_) in zip(axes, series.items(), strict=True):
        for label, (xs, ys) in lines_.items():
            ax.plot(xs, ys, label=label)
        if vline is not None:
            ax.axvline(vline, color="grey", linestyle="--", linewidth=0.8)
        for style, (label, value) in zip((":", "-."), (hlines or {}).items(), strict=False):
            ax.axhline(value, color="black", linestyle=style, linewidth=0.8, label=label)
        if ylog:
            ax.set_yscale("log")
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(ylabel)
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    save(figure, path)


def histogram(values: Sequence[float], path: str | os.PathLike, *, title: str, xlabel: str, bins: int = 20) -> None:
    figure = _figure(5.0, 3.5)
    ax = figure.add_subplot()
    ax.hist(values, bins=bins, range=(0.0, 1.0))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("heads")
    ax.set_title(title)
    figure.tight_layout()
    save(figure, path)
