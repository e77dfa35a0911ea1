"""PNG plots for evaluation reports.

Figures are drawn on ``matplotlib.figure.Figure`` objects rendered by the Agg canvas, never through
``pyplot``: nothing is shown, no global backend is switched (so importing this module inside a
notebook or a GUI session changes nothing), and no figure is left open in pyplot's registry.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["plot_attention_maps", "plot_confusion_matrix", "plot_leakage_bars", "plot_reconstructions",
           "plot_swap_grid"]


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)  # attach an Agg canvas explicitly, whatever backend pyplot uses
    fig.savefig(path, format="png", dpi=150, bbox_inches="tight")
    return path


def plot_confusion_matrix(
    matrix,
    class_names: Sequence[str],
    path: str | os.PathLike,
    *,
    normalize: bool = True,
    title: str | None = None,
) -> Path:
    """Write a confusion-matrix heat map as PNG.

    Args:
      matrix: ``(K, K)`` counts, rows = true class, columns = predicted class.
      class_names: ``K`` names, used for both axes.
      path: output ``.png`` path (parent folders are created).
      normalize: colour by row-normalised rate (per-class recall on the diagonal) and print
        ``rate %`` above ``(count)`` in each cell; otherwise colour and print raw counts. Rows
        with no examples show 0 %.
      title: optional figure title.

    Returns:
      ``path`` as a :class:`pathlib.Path`.
    """
    counts = np.asarray(matrix)
    k = len(class_names)
    if counts.shape != (k, k):
        raise ValueError(
            f"matrix has shape {counts.shape} but {k} class names were given; expected ({k}, {k})."
        )
    if normalize:
        support = counts.sum(axis=1, keepdims=True)
        values = np.divide(counts, support, out=np.zeros(counts.shape), where=support > 0)
    else:
        values = counts.astype(np.float64)

    size = max(4.0, 0.75 * k + 2.0)
    fig = Figure(figsize=(size + 1.0, size))
    ax = fig.add_subplot()
    vmax = 1.0 if normalize else max(float(values.max()), 1.0)
    image = ax.imshow(values, cmap="Blues", vmin=0.0, vmax=vmax)
    colorbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    colorbar.set_label("fraction of true class" if normalize else "count")

    fontsize = max(5.0, min(10.0, 80.0 / k))
    for t in range(k):
        for p in range(k):
            text = f"{100 * values[t, p]:.0f}%\n({counts[t, p]})" if normalize else f"{counts[t, p]}"
            # Dark cells get white text so every number stays readable.
            colour = "white" if values[t, p] > 0.5 * vmax else "black"
            ax.text(p, t, text, ha="center", va="center", color=colour, fontsize=fontsize)

    ax.set_xticks(range(k), labels=list(class_names), rotation=45, ha="right")
    ax.set_yticks(range(k), labels=list(class_names))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    return _save(fig, path)


def plot_leakage_bars(
    results: Mapping[str, Mapping[str, float]],
    path: str | os.PathLike,
    *,
    keys: Sequence[str] = ("linear_acc", "mlp_acc"),
    title: str = "Identity leakage (lower is better)",
) -> Path:
    """Bar chart of identity-probe accuracy per run, with each run's chance level marked.

    Args:
      results: ``{run name: identity_leakage(...) dict}``; each needs the ``keys`` and may have
        ``chance``, drawn as a dashed black line across the run's bars.
      path: output ``.png`` path.
      keys: which accuracies to draw side by side.
    """
    if not results:
        raise ValueError("plot_leakage_bars needs at least one run.")
    runs = list(results)
    width = 0.8 / len(keys)
    x = np.arange(len(runs))
    fig = Figure(figsize=(max(4.0, 1.2 * len(runs) + 2.0), 3.5))
    ax = fig.add_subplot()
    for i, key in enumerate(keys):
        ax.bar(x - 0.4 + (i + 0.5) * width, [results[r][key] for r in runs], width, label=key)
    chance_label = "chance"  # one legend entry however many runs carry a chance level
    for j, run in enumerate(runs):
        if "chance" in results[run]:
            ax.hlines(
                results[run]["chance"],
                j - 0.45,
                j + 0.45,
                colors="k",
                linestyles="--",
                label=chance_label,
            )
            chance_label = None
    rotate = len(runs) > 4
    ax.set_xticks(x, labels=runs, rotation=30 if rotate else 0, ha="right" if rotate else "center")
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("probe accuracy on held-out images")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_attention_maps(
    images: np.ndarray,
    maps: Sequence[np.ndarray],
    path: str | os.PathLike,
    *,
    scale_weights: np.ndarray | None = None,
    labels: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Write a grid of faces (rows) with each scale's attention map overlaid (columns) as PNG.

    Args:
      images: ``(N, H, W, C)`` float images in [-1, 1] (C = 1 or 3).
      maps: one ``(N, h, w)`` array per scale, values in [0, 1]; each is stretched to ``(H, W)``
        with nearest-neighbour blocks, so a coarse scale shows its real resolution.
      scale_weights: optional ``(N, S)`` weights, printed over each scale's column.
      labels: optional text per row (e.g. true / predicted expression).
    """
    images = np.clip((np.asarray(images, np.float32) + 1.0) / 2.0, 0.0, 1.0)
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    n, h, w = images.shape[:3]
    cols = 1 + len(maps)
    fig = Figure(figsize=(1.6 * cols, 1.6 * n + (0.4 if title else 0.0)), layout="constrained")
    axes = fig.subplots(n, cols, squeeze=False)
    for i in range(n):
        axes[i, 0].imshow(images[i])
        if labels is not None:
            axes[i, 0].set_ylabel(labels[i], fontsize=7)
        for s, scale_map in enumerate(maps):
            ax = axes[i, 1 + s]
            ax.imshow(images[i])
            ax.imshow(np.asarray(scale_map[i], np.float32), cmap="jet", alpha=0.5, vmin=0.0,
                      vmax=1.0, extent=(-0.5, w - 0.5, h - 0.5, -0.5), interpolation="nearest")
            if scale_weights is not None:
                ax.set_title(f"scale {s + 1}, w={float(scale_weights[i, s]):.2f}", fontsize=7)
            elif i == 0:
                ax.set_title(f"scale {s + 1}", fontsize=8)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_title("face", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def _to_rgb(x) -> np.ndarray:
    """Images in [-1, 1] as RGB in [0, 1] (grey images repeated over the 3 channels)."""
    x = np.clip((np.asarray(x, np.float32) + 1.0) / 2.0, 0.0, 1.0)
    return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x


def plot_reconstructions(
    images: np.ndarray,
    rows: Mapping[str, np.ndarray],
    path: str | os.PathLike,
    *,
    labels: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Write faces (columns) above their reconstructions (one row per entry of `rows`) as PNG.

    Args:
      images: ``(N, H, W, C)`` float images in [-1, 1] (C = 1 or 3).
      rows: row name -> ``(N, h, w, C)`` images in [-1, 1]; a smaller ``h, w`` (a decoder working at
        reduced resolution) is shown at the faces' size with visible pixels.
      labels: optional text per column (e.g. the expression).
    """
    faces = _to_rgb(images)
    n = faces.shape[0]
    named = [("face", faces)] + [(name, _to_rgb(r)) for name, r in rows.items()]
    fig = Figure(figsize=(1.3 * n + 0.6, 1.4 * len(named) + (0.4 if title else 0.0)), layout="constrained")
    axes = fig.subplots(len(named), n, squeeze=False)
    for r, (name, pictures) in enumerate(named):
        for i in range(n):
            ax = axes[r, i]
            ax.imshow(pictures[i], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0 and labels is not None:
                ax.set_title(labels[i], fontsize=7)
        axes[r, 0].set_ylabel(name, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def plot_swap_grid(
    row_faces: np.ndarray,
    column_faces: np.ndarray,
    grid: np.ndarray,
    path: str | os.PathLike,
    *,
    row_labels: Sequence[str] | None = None,
    column_labels: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Write a code-swap grid as PNG: cell (i, j) is drawn from a code of row face i and one of column face j.

    Args:
      row_faces: ``(R, H, W, C)`` images in [-1, 1], drawn down the left (the faces giving the first
        code, e.g. the expression).
      column_faces: ``(K, H, W, C)`` images in [-1, 1], drawn along the top (the faces giving the
        other code, e.g. identity and pose).
      grid: ``(R, K, h, w, C)`` decoded images in [-1, 1] (a smaller ``h, w`` is shown at full size).
      row_labels, column_labels: optional text per row / column.
    """
    rows, columns = _to_rgb(row_faces), _to_rgb(column_faces)
    cells = _to_rgb(grid)
    r, k = cells.shape[:2]
    if rows.shape[0] != r or columns.shape[0] != k:
        raise ValueError(f"grid is {r}x{k} but {rows.shape[0]} row and {columns.shape[0]} column faces "
                         "were given.")
    size = (1.2 * (k + 1) + 0.4, 1.25 * (r + 1) + (0.4 if title else 0.0))
    fig = Figure(figsize=size, layout="constrained")
    axes = fig.subplots(r + 1, k + 1, squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].axis("off")
    for j in range(k):
        axes[0, j + 1].imshow(columns[j], interpolation="nearest")
        axes[0, j + 1].set_title(column_labels[j] if column_labels is not None else f"column {j}", fontsize=7)
    for i in range(r):
        axes[i + 1, 0].imshow(rows[i], interpolation="nearest")
        axes[i + 1, 0].set_ylabel(row_labels[i] if row_labels is not None else f"row {i}", fontsize=7)
        for j in range(k):
            axes[i + 1, j + 1].imshow(cells[i, j], interpolation="nearest")
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)
