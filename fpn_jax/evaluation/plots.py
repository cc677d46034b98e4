"""Figures for the experiments: image grids, reconstructions, 2-D embeddings, curves, bars.

Every function takes arrays and a path, writes one PNG there (creating missing parent
folders) and returns the path. Figures are drawn on matplotlib's Agg canvas directly
(``matplotlib.figure.Figure``, not ``pyplot``), so no window opens, no global backend is
switched and nothing leaks between calls. matplotlib (and, for t-SNE / PCA, scikit-learn)
is imported lazily: ``pip install "fpn-jax[experiments]"``.

Images are NHWC with values in [0, 1]; one channel is drawn in grey, three in colour.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

DPI = 120


def _figure(width: float, height: float):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError('fpn_jax.evaluation.plots needs matplotlib: pip install "fpn-jax[experiments]"') from error
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | os.PathLike) -> str:
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    return path


def _images(x: Any, *, name: str, where: str, ndim: tuple[int, ...]) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim not in ndim or x.shape[-1] not in (1, 3) or not np.issubdtype(x.dtype, np.number):
        shapes = " or ".join({4: "(N, H, W, C)", 5: "(R, K, H, W, C)"}[d] for d in ndim)
        hint = " Add a channel axis: images[..., None]." if x.ndim + 1 in ndim else ""
        raise ValueError(
            f"{where}: argument `{name}` must be a numeric image array of shape {shapes} with C = 1 "
            f"(grey) or 3 (RGB); got shape {x.shape} and dtype {x.dtype}.{hint}"
        )
    return np.clip(np.nan_to_num(x.astype(np.float32)), 0.0, 1.0)


def _mosaic(grid: np.ndarray, gap: int = 1) -> np.ndarray:
    """(R, K, H, W, C) → one (R(H+gap)−gap, K(W+gap)−gap, C) image with white gaps."""
    r, k, h, w, c = grid.shape
    canvas = np.ones((r * (h + gap) - gap, k * (w + gap) - gap, c), np.float32)
    for i in range(r):
        for j in range(k):
            canvas[i * (h + gap) : i * (h + gap) + h, j * (w + gap) : j * (w + gap) + w] = grid[i, j]
    return canvas


def _grid_figure(rows: int, cols: int, h: int, w: int, *, title: bool, label_width: float):
    """A figure for a rows × cols mosaic: at least 0.5 inch (and 1 pixel per image pixel) per image."""
    cell = max(0.5, max(h, w) / DPI) / max(h, w)  # inches per image pixel
    return _figure(max(2.5, cols * w * cell + label_width), rows * h * cell + (0.45 if title else 0.15))


def _draw_mosaic(ax, grid: np.ndarray, row_labels: Sequence[str] | None, gap: int = 1) -> None:
    r, _, h, _, c = grid.shape
    mosaic = _mosaic(grid, gap)
    ax.imshow(mosaic[..., 0] if c == 1 else mosaic, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ax.spines.values():
        side.set_visible(False)
    if row_labels is not None:
        ax.set_yticks([i * (h + gap) + (h - 1) / 2 for i in range(r)], labels=list(row_labels))
        ax.tick_params(axis="y", length=0)


def image_grid(
    images: Any,
    path: str | os.PathLike,
    *,
    row_labels: Sequence[str] | None = None,
    title: str | None = None,
    ncols: int | None = None,
    ylabel: str | None = None,
) -> str:
    """A grid of images, e.g. 10 classes × 10 conditional samples with row labels "0".."9".

    Args:
      images: (R, K, H, W, C) — R rows of K images — or (N, H, W, C), laid out in rows of
        ``ncols``; values in [0, 1] (clipped), C = 1 or 3.
      path: where to write the PNG.
      row_labels: R labels drawn left of the rows.
      title: figure title.
      ncols: images per row for (N, H, W, C) input (default min(N, 10)); a short last row is
        padded with white.
      ylabel: label of the row axis (e.g. "class").

    Returns:
      ``path``.
    """
    where = "image_grid"
    images = _images(images, name="images", where=where, ndim=(4, 5))
    if images.ndim == 4:
        n = images.shape[0]
        ncols = min(n, 10) if ncols is None else ncols
        if not isinstance(ncols, (int, np.integer)) or ncols < 1:
            raise ValueError(f"{where}: `ncols` must be an integer >= 1; got {ncols!r}.")
        rows = -(-n // ncols)
        padding = np.ones((rows * ncols - n, *images.shape[1:]), np.float32)
        images = np.concatenate([images, padding]).reshape(rows, ncols, *images.shape[1:])
    r, k, h, w, _ = images.shape
    if r * k == 0:
        raise ValueError(f"{where}: argument `images` is empty; got shape {images.shape}.")
    if row_labels is not None and len(row_labels) != r:
        raise ValueError(f"{where}: argument `row_labels` must have one label per row ({r}); got {len(row_labels)}.")
    longest = max((len(str(label)) for label in row_labels), default=0) if row_labels is not None else 0
    fig = _grid_figure(r, k, h, w, title=bool(title), label_width=max(0.6, 0.1 * longest + 0.4))
    ax = fig.add_subplot()
    _draw_mosaic(ax, images, row_labels)
    if ylabel:
        ax.set_ylabel(ylabel)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def reconstructions(
    originals: Any,
    reconstructions: Any,
    path: str | os.PathLike,
    *,
    title: str | None = None,
    ncols: int = 10,
) -> str:
    """Originals above their reconstructions ``D(E(x))``, in pairs of rows of ``ncols``.

    Args:
      originals: (N, H, W, C) images in [0, 1].
      reconstructions: (N, H, W, C) their reconstructions (clipped to [0, 1]).
      path: where to write the PNG.
      title: figure title.
      ncols: images per row.

    Returns:
      ``path``.
    """
    where = "reconstructions"
    x = _images(originals, name="originals", where=where, ndim=(4,))
    x_hat = _images(reconstructions, name="reconstructions", where=where, ndim=(4,))
    if x.shape != x_hat.shape:
        raise ValueError(
            f"{where}: arguments `originals` and `reconstructions` must have the same shape; "
            f"got {x.shape} and {x_hat.shape}."
        )
    if x.shape[0] == 0:
        raise ValueError(f"{where}: argument `originals` is empty.")
    if not isinstance(ncols, (int, np.integer)) or ncols < 1:
        raise ValueError(f"{where}: `ncols` must be an integer >= 1; got {ncols!r}.")
    n, ncols = x.shape[0], min(ncols, x.shape[0])
    blocks = -(-n // ncols)
    pad = np.ones((blocks * ncols - n, *x.shape[1:]), np.float32)
    x, x_hat = (np.concatenate([a, pad]).reshape(blocks, ncols, *x.shape[1:]) for a in (x, x_hat))
    grid = np.stack([x, x_hat], axis=1).reshape(2 * blocks, ncols, *x.shape[2:])
    fig = _grid_figure(2 * blocks, ncols, *x.shape[2:4], title=bool(title), label_width=1.3)
    ax = fig.add_subplot()
    _draw_mosaic(ax, grid, ["original", "reconstruction"] * blocks)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def _subsample(n: int, limit: int, rng: np.random.Generator) -> np.ndarray:
    return np.arange(n) if n <= limit else np.sort(rng.choice(n, size=limit, replace=False))


def embedding_2d(
    points_by_set: Mapping[str, Any],
    labels_by_set: Mapping[str, Any],
    path: str | os.PathLike,
    *,
    method: str = "tsne",
    seed: int = 0,
    max_points: int = 2000,
    title: str | None = None,
    class_names: Sequence[str] | None = None,
    threads: int | None = 1,
) -> str:
    """Embeds several point sets into 2-D with ONE fit and draws one panel per set.

    All sets (e.g. "test latents" and "C-MAF samples") are subsampled to at most
    ``max_points`` rows each, concatenated and embedded together, so the panels share
    coordinates and can be compared directly; points are coloured by class.

    ``method="tsne"``: scikit-learn's t-SNE (perplexity 30, PCA initialisation). The paper
    used UMAP; t-SNE serves the same purpose (a neighbourhood-preserving 2-D map) without
    umap-learn's numba / llvmlite dependencies. ``method="pca"``: the first two principal
    components of the pooled sets (linear, instant). On 2 × 2000 points of dimension 40,
    t-SNE takes about 18 s on 2 shared CPU cores (PCA: 0.2 s).

    Args:
      points_by_set: {set name: (N_i, D) points}, all with the same D.
      labels_by_set: {set name: (N_i,) integer class labels}, the same keys.
      path: where to write the PNG.
      method: "tsne" or "pca".
      seed: seed of the subsampling and of t-SNE.
      max_points: most points per set.
      title: figure title.
      class_names: names of the classes in the legend (default the label values).
      threads: OpenMP / BLAS threads of t-SNE (``threadpoolctl``; None: all cores). One is
        the fast choice on a few shared cores, where OpenMP's busy-waiting made two threads
        3× slower (at 4000 points) to 30× slower (at 130 points).

    Returns:
      ``path``.
    """
    where = "embedding_2d"
    if method not in ("tsne", "pca"):
        raise ValueError(f'{where}: `method` must be "tsne" or "pca"; got {method!r}.')
    if not isinstance(points_by_set, Mapping) or not points_by_set:
        raise ValueError(f"{where}: argument `points_by_set` must be a non-empty dict {{name: (N_i, D) array}}.")
    if not isinstance(labels_by_set, Mapping) or set(labels_by_set) != set(points_by_set):
        raise ValueError(
            f"{where}: argument `labels_by_set` must have the same keys as `points_by_set` "
            f"({sorted(points_by_set)}); got "
            f"{sorted(labels_by_set) if isinstance(labels_by_set, Mapping) else type(labels_by_set).__name__}."
        )
    if not isinstance(max_points, (int, np.integer)) or max_points < 2:
        raise ValueError(f"{where}: `max_points` must be an integer >= 2; got {max_points!r}.")
    if threads is not None and (not isinstance(threads, (int, np.integer)) or threads < 1):
        raise ValueError(f"{where}: `threads` must be None or an integer >= 1; got {threads!r}.")
    rng = np.random.default_rng(seed)
    names, points, labels = list(points_by_set), [], []
    for name in names:
        z, y = np.asarray(points_by_set[name]), np.asarray(labels_by_set[name])
        width = points[0].shape[1] if points else None
        if z.ndim != 2 or not np.issubdtype(z.dtype, np.number) or (width is not None and z.shape[1] != width):
            expected = "(N_i, D)" if width is None else f"(N_i, {width}) like the first set"
            raise ValueError(f"{where}: argument `points_by_set[{name!r}]` must have shape {expected}; got {z.shape}.")
        if y.shape != (z.shape[0],) or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(
                f"{where}: argument `labels_by_set[{name!r}]` must be integer labels of shape ({z.shape[0]},); "
                f"got shape {y.shape} and dtype {y.dtype}."
            )
        if z.shape[0] == 0 or not np.all(np.isfinite(z)):
            raise ValueError(f"{where}: argument `points_by_set[{name!r}]` is empty or not finite.")
        rows = _subsample(z.shape[0], max_points, rng)
        points.append(z[rows].astype(np.float64))
        labels.append(y[rows])
    pooled = np.concatenate(points)
    if pooled.shape[0] < 4:
        raise ValueError(f"{where}: need at least 4 points in all; got {pooled.shape[0]}.")

    if method == "pca":
        centred = pooled - pooled.mean(0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        xy = centred @ vt[:2].T
        if xy.shape[1] < 2:
            xy = np.pad(xy, ((0, 0), (0, 2 - xy.shape[1])))
        axis_names = ("PC 1", "PC 2")
    else:
        try:
            from sklearn.manifold import TSNE
        except ImportError as error:  # pragma: no cover - depends on the environment
            raise ImportError(
                'embedding_2d(method="tsne") needs scikit-learn: pip install "fpn-jax[experiments]"'
            ) from error
        from threadpoolctl import threadpool_limits  # a scikit-learn dependency

        perplexity = min(30.0, (pooled.shape[0] - 1) / 3)
        with threadpool_limits(threads):
            xy = TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(pooled)
        axis_names = ("t-SNE 1", "t-SNE 2")

    classes = np.unique(np.concatenate(labels))
    if class_names is not None and len(class_names) <= classes.max(initial=0):
        raise ValueError(
            f"{where}: argument `class_names` must name every label up to {classes.max()}; "
            f"got {len(class_names)} names."
        )
    cmap = _class_colours(classes.size)
    fig = _figure(4.2 * len(names) + 1.2, 4.8)
    axes = fig.subplots(1, len(names), sharex=True, sharey=True, squeeze=False)[0]
    offsets = np.cumsum([0] + [p.shape[0] for p in points])
    for i, (ax, name) in enumerate(zip(axes, names, strict=True)):
        part, y = xy[offsets[i] : offsets[i + 1]], labels[i]
        for j, k in enumerate(classes):
            mine = y == k
            label = str(class_names[k]) if class_names is not None else str(k)
            ax.scatter(part[mine, 0], part[mine, 1], s=4, color=cmap[j], label=label, alpha=0.8, linewidths=0)
        ax.set_title(f"{name} ({part.shape[0]} points)")
        ax.set_xlabel(axis_names[0])
        ax.set_aspect("equal", adjustable="box")
    axes[0].set_ylabel(axis_names[1])
    fig.legend(
        *axes[0].get_legend_handles_labels(), loc="outside right center", title="class", markerscale=3, frameon=False
    )
    fig.suptitle(title or f"{'t-SNE' if method == 'tsne' else 'PCA'} of {', '.join(names)} (one joint fit)")
    return _save(fig, path)


def _class_colours(k: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if k <= 10 else "tab20" if k <= 20 else "turbo"]
    return [cmap(i if k <= 20 else i / max(k - 1, 1)) for i in range(k)]


def _series(history: Any, key: str) -> list[float]:
    values = history.get(key) if isinstance(history, Mapping) else getattr(history, key, None)
    return [] if values is None else [float(v) for v in values]


def training_curves(
    histories: Mapping[str, Any],
    path: str | os.PathLike,
    *,
    title: str = "Training curves",
    ylabel: str = "NLL (nats per latent)",
) -> str:
    """Training (solid) and validation (dashed) curves per model, best validation epoch marked.

    Args:
      histories: {model name: {"train_nll": [...], "val_nll": [...]}} (or ``fpn_jax.History``
        objects); ``val_nll`` may be empty.
      path: where to write the PNG.
      title: figure title.
      ylabel: y-axis label.

    Returns:
      ``path``.
    """
    where = "training_curves"
    if not isinstance(histories, Mapping) or not histories:
        raise ValueError(f"{where}: argument `histories` must be a non-empty dict {{name: history}}.")
    for name, history in histories.items():
        if not _series(history, "train_nll"):
            raise ValueError(
                f"{where}: argument `histories[{name!r}]` must have a non-empty 'train_nll' list "
                f"(and optionally 'val_nll'); got {type(history).__name__}."
            )
    from matplotlib import colormaps

    colours = colormaps["tab10"]
    fig = _figure(7.0, 4.2)
    ax = fig.add_subplot()
    for i, (name, history) in enumerate(histories.items()):
        colour = colours(i % 10)
        train, val = _series(history, "train_nll"), _series(history, "val_nll")
        ax.plot(np.arange(1, len(train) + 1), train, color=colour, label=f"{name} train")
        if val:
            ax.plot(np.arange(1, len(val) + 1), val, color=colour, linestyle="--", label=f"{name} validation")
            best = int(np.nanargmin(val)) if np.any(np.isfinite(val)) else None
            if best is not None:
                ax.plot(best + 1, val[best], "o", color=colour, markersize=5)
    if any(_series(h, "val_nll") for h in histories.values()):
        ax.plot([], [], "o", color="0.3", markersize=5, label="best validation epoch")
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncols=2 if len(histories) > 3 else 1)
    return _save(fig, path)


def per_class_bars(
    values_by_name: Mapping[str, Any],
    path: str | os.PathLike,
    *,
    ylabel: str,
    title: str,
    class_names: Sequence[str] | None = None,
    ylim: tuple[float, float] | None = (0.0, 1.0),
) -> str:
    """Draws grouped bars: one group per class, one bar per name.

    For example the generation accuracy of each base autoencoder × flow plugin; each name's
    mean over classes is in the legend.

    Args:
      values_by_name: {name: (K,) values}, all of the same length K.
      path: where to write the PNG.
      ylabel: y-axis label.
      title: figure title.
      class_names: K group labels (default "0".."K-1").
      ylim: y-axis range (None: automatic).

    Returns:
      ``path``.
    """
    where = "per_class_bars"
    if not isinstance(values_by_name, Mapping) or not values_by_name:
        raise ValueError(f"{where}: argument `values_by_name` must be a non-empty dict {{name: (K,) array}}.")
    arrays = {}
    for name, values in values_by_name.items():
        values = np.asarray(values)
        k = next(iter(arrays.values())).shape[0] if arrays else None
        numeric = np.issubdtype(values.dtype, np.number)
        if values.ndim != 1 or values.size == 0 or not numeric or (k is not None and values.shape[0] != k):
            expected = "(K,)" if k is None else f"({k},) like the first entry"
            raise ValueError(
                f"{where}: argument `values_by_name[{name!r}]` must be numeric of shape {expected}; "
                f"got shape {values.shape} and dtype {values.dtype}."
            )
        arrays[name] = values.astype(np.float64)
    k = next(iter(arrays.values())).shape[0]
    if class_names is not None and len(class_names) != k:
        raise ValueError(f"{where}: argument `class_names` must have {k} entries; got {len(class_names)}.")
    from matplotlib import colormaps

    colours = colormaps["tab10"]
    m = len(arrays)
    width = 0.8 / m
    fig = _figure(min(10.0, max(6.0, 0.18 * k * m + 3.0)), 4.2)
    ax = fig.add_subplot()
    for i, (name, values) in enumerate(arrays.items()):
        x = np.arange(k) - 0.4 + width * (i + 0.5)
        ax.bar(x, values, width, color=colours(i % 10), label=f"{name} (mean {np.nanmean(values):.3f})")
    ax.set_xticks(np.arange(k), labels=list(class_names) if class_names is not None else [str(i) for i in range(k)])
    ax.set_xlabel("class")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.grid(axis="y", alpha=0.3)
    fig.legend(loc="outside lower center", ncols=min(m, 3), fontsize="small", frameon=False)
    return _save(fig, path)


def point_cloud_grid(
    clouds: Any,
    path: str | os.PathLike,
    *,
    row_labels: Sequence[str] | None = None,
    column_labels: Sequence[str] | None = None,
    title: str | None = None,
    max_points: int = 2048,
    elevation: float = 20.0,
    azimuth: float = -60.0,
    panel_size: float = 1.6,
) -> str:
    """A grid of 3-D point clouds (one scatter panel each), e.g. rows = classes, columns = samples.

    Every panel shares one cube of axis limits (the grid's overall extent), so sizes compare
    across panels; points are coloured by height (the second coordinate, ShapeNet's up axis)
    and drawn with ``y`` up. Missing panels (NaN-filled clouds) are left empty.

    Args:
      clouds: (R, K, P, 3) clouds, or (K, P, 3) for one row.
      path: where to write the PNG.
      row_labels: R labels, written left of each row.
      column_labels: K labels, written above the first row.
      title: figure title.
      max_points: at most this many points per panel (the first ones; clouds are unordered).
      elevation: the view's elevation, in degrees.
      azimuth: the view's azimuth, in degrees.
      panel_size: inches per panel.

    Returns:
      ``path``.
    """
    where = "point_cloud_grid"
    x = np.asarray(clouds, dtype=np.float32)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3 or 0 in x.shape[:3]:
        raise ValueError(f"{where}: argument `clouds` must have shape (R, K, P, 3) or (K, P, 3) with R, K, P >= 1; "
                         f"got {np.shape(clouds)}.")
    rows, cols = x.shape[:2]
    for name, labels, n in (("row_labels", row_labels, rows), ("column_labels", column_labels, cols)):
        if labels is not None and len(labels) != n:
            raise ValueError(f"{where}: argument `{name}` must have {n} labels; got {len(labels)}.")
    if not isinstance(max_points, (int, np.integer)) or max_points < 1:
        raise ValueError(f"{where}: `max_points` must be an integer >= 1; got {max_points!r}.")
    x = x[:, :, :max_points]
    finite = x[np.isfinite(x).all(-1)]
    centre = (finite.max(0) + finite.min(0)) / 2 if finite.size else np.zeros(3, np.float32)
    half = float((finite.max(0) - finite.min(0)).max() / 2) if finite.size else 1.0
    fig = _figure(panel_size * cols + (0.8 if row_labels is not None else 0), panel_size * rows + (0.5 if title else 0))
    grid = fig.add_gridspec(rows, cols, wspace=0, hspace=0)
    for i in range(rows):
        for j in range(cols):
            ax = fig.add_subplot(grid[i, j], projection="3d")
            cloud = x[i, j][np.isfinite(x[i, j]).all(-1)]
            if len(cloud):  # the data's (x, y, z) drawn as (x, z, y): y up
                ax.scatter(cloud[:, 0], cloud[:, 2], cloud[:, 1], c=cloud[:, 1], cmap="viridis",
                           s=float(np.clip(2000 / len(cloud), 0.5, 5.0)), linewidths=0, depthshade=False)
            for setter, k in ((ax.set_xlim, 0), (ax.set_ylim, 2), (ax.set_zlim, 1)):
                setter(centre[k] - half, centre[k] + half)
            ax.set_box_aspect((1, 1, 1), zoom=1.35)
            ax.view_init(elev=elevation, azim=azimuth)
            ax.set_axis_off()
            if i == 0 and column_labels is not None:
                ax.set_title(column_labels[j], fontsize=8)
            if j == 0 and row_labels is not None:
                ax.text2D(-0.05, 0.5, row_labels[i], transform=ax.transAxes, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)
