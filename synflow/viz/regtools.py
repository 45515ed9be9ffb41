"""DIPY-compatible registration figures (``dipy.viz.regtools``).

The functions keep DIPY 1.12's names, arguments, defaults and image data. They draw on
:class:`matplotlib.figure.Figure` objects with an Agg canvas, so they never need a display
and never register figures with :mod:`matplotlib.pyplot` (nothing to close, nothing leaks).

Differences from DIPY, all on bad or degenerate input:

* an invalid ``slice_type`` raises :class:`ValueError` (DIPY logs and returns ``None``);
* a constant volume is scaled to zeros (DIPY divides by zero and casts NaN to ``uint8``);
* arrays of the wrong dimensionality or mismatched shapes raise :class:`ValueError`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib import rcParams
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from synflow._atomic import atomic_path

__all__ = ["draw_lattice_2d", "overlay_images", "overlay_slices", "plot_2d_diffeomorphic_map",
           "plot_slices"]


def _new_figure(**kwargs: Any) -> Figure:
    """Return a pyplot-free figure attached to an Agg canvas."""
    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def _tile_plot(imgs: Sequence[np.ndarray], titles: Sequence[str], **kwargs: Any) -> Figure:
    """Draw ``imgs`` side by side (one row), axes hidden, like DIPY's ``_tile_plot``."""
    fig = _new_figure()
    axes = fig.subplots(1, len(imgs))
    for ax, img, title in zip(np.atleast_1d(axes), imgs, titles, strict=True):
        ax.set_axis_off()
        ax.imshow(img, **kwargs)
        ax.set_title(title)
    return fig


def _to_uint8_range(v: np.ndarray) -> np.ndarray:
    """Min-max scale ``v`` (float64) to [0, 255] over the whole array (zeros if constant)."""
    v = np.asarray(v, dtype=np.float64)
    lo = float(v.min())
    hi = float(v.max())
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise ValueError("image must contain only finite values")
    if hi == lo:
        return np.zeros_like(v)
    return 255 * (v - lo) / (hi - lo)


def _save(fig: Figure, fname: str | os.PathLike[str] | None, fig_kwargs: dict[str, Any]) -> None:
    """``fig.savefig(fname, bbox_inches="tight", **fig_kwargs)``, written through atomic_path.

    The format is matplotlib's choice: ``format=`` if given, else ``fname``'s extension,
    else ``rcParams["savefig.format"]`` with that extension appended (as matplotlib does).
    A file-like ``fname`` is handed to matplotlib unchanged.
    """
    if fname is None:
        return
    if not isinstance(fname, (str, os.PathLike)):
        fig.savefig(fname, bbox_inches="tight", **fig_kwargs)
        return
    kwargs = dict(fig_kwargs)
    fmt = kwargs.pop("format", None)
    dest = os.fspath(fname)
    ext = os.path.splitext(dest)[1][1:]
    if fmt is None and ext:
        fmt = ext.lower()
    elif fmt is None:
        fmt = rcParams["savefig.format"]
        dest = f"{dest}.{fmt}"
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format=fmt, bbox_inches="tight", **kwargs)


def overlay_slices(
    L: np.ndarray,
    R: np.ndarray,
    slice_index: int | None = None,
    slice_type: int = 1,
    ltitle: str = "Left",
    rtitle: str = "Right",
    fname: str | os.PathLike[str] | None = None,
    **fig_kwargs: Any,
) -> Figure:
    """Plot one slice of two volumes side by side and overlaid in red (L) / green (R).

    Same arguments, image data and layout as ``dipy.viz.regtools.overlay_slices``.

    Parameters
    ----------
    L, R : ndarray, shape (S, R, C)
        Volumes on the same voxel grid. Each is min-max scaled to [0, 255] over the whole
        volume and cast to ``uint8``.
    slice_index : int, optional
        Index along the axis given by ``slice_type``; default: the middle slice.
    slice_type : {0, 1, 2}
        0 = sagittal ``V[i, :, :]``, 1 = coronal ``V[:, i, :]`` (default),
        2 = axial ``V[:, :, i]``. Slices are transposed and drawn with ``origin='lower'``.
    ltitle, rtitle : str
        Titles of the left and right panels (the middle one is "Overlay").
    fname : path, optional
        Where to save the figure (``bbox_inches='tight'``); not saved if None.
    **fig_kwargs
        Passed to ``Figure.savefig`` (e.g. ``dpi=300``).

    Returns
    -------
    matplotlib.figure.Figure
        Three panels [L gray, overlay RGB, R gray]. The overlay's red channel is
        ``l * (l > l[0, 0])`` and green ``r * (r > r[0, 0])`` (the corner pixel stands in for
        the background).
    """
    L = np.asarray(L)
    R = np.asarray(R)
    if L.ndim != 3 or R.ndim != 3:
        raise ValueError(f"L and R must be 3-D volumes, got shapes {L.shape} and {R.shape}")
    if L.shape != R.shape:
        raise ValueError(f"L and R must have the same shape, got {L.shape} and {R.shape}")
    if slice_type not in (0, 1, 2):
        raise ValueError(f"slice_type must be 0, 1 or 2, got {slice_type!r}")
    sh = L.shape
    if slice_index is None:
        slice_index = sh[slice_type] // 2
    if not -sh[slice_type] <= int(slice_index) < sh[slice_type]:
        raise ValueError(
            f"slice_index must be in [0, {sh[slice_type]}) for slice_type {slice_type}, "
            f"got {slice_index}"
        )
    Ls = _to_uint8_range(L)
    Rs = _to_uint8_range(R)
    index: list[Any] = [slice(None)] * 3
    index[slice_type] = int(slice_index)
    ll = np.asarray(Ls[tuple(index)]).astype(np.uint8).T
    rr = np.asarray(Rs[tuple(index)]).astype(np.uint8).T
    color = np.zeros(ll.shape + (3,), dtype=np.uint8)
    color[..., 0] = ll * (ll > ll[0, 0])
    color[..., 1] = rr * (rr > rr[0, 0])

    fig = _tile_plot([ll, color, rr], [ltitle, "Overlay", rtitle], cmap="gray", origin="lower")
    _save(fig, fname, fig_kwargs)
    return fig


def overlay_images(
    img0: np.ndarray,
    img1: np.ndarray,
    title0: str = "",
    title_mid: str = "",
    title1: str = "",
    fname: str | os.PathLike[str] | None = None,
    **fig_kwargs: Any,
) -> Figure:
    """Plot two 2-D images in red (``img0``) and green (``img1``) and overlaid.

    Same as ``dipy.viz.regtools.overlay_images``: each image is min-max scaled to [0, 255]
    and cast to ``uint8`` (no background suppression). Panels: [img0 red, overlay,
    img1 green], ``origin='upper'`` (DIPY's default for this function).
    """
    img0 = np.asarray(img0)
    img1 = np.asarray(img1)
    if img0.ndim != 2 or img0.shape != img1.shape:
        raise ValueError(
            f"img0 and img1 must be 2-D images of the same shape, got {img0.shape} and "
            f"{img1.shape}"
        )
    a = _to_uint8_range(img0)
    b = _to_uint8_range(img1)
    red = np.zeros(a.shape + (3,), dtype=np.uint8)
    green = np.zeros(a.shape + (3,), dtype=np.uint8)
    overlay = np.zeros(a.shape + (3,), dtype=np.uint8)
    red[..., 0] = a
    green[..., 1] = b
    overlay[..., 0] = a
    overlay[..., 1] = b
    fig = _tile_plot([red, overlay, green], [title0, title_mid, title1])
    _save(fig, fname, fig_kwargs)
    return fig


def plot_slices(
    V: np.ndarray,
    slice_indices: Sequence[int] | None = None,
    fname: str | os.PathLike[str] | None = None,
    **fig_kwargs: Any,
) -> Figure:
    """Plot the axial, coronal and sagittal slices of a volume (``dipy.viz.regtools``).

    ``slice_indices`` = (sagittal, coronal, axial) indices, default the middle slices. The
    volume is min-max scaled to [0, 255] and cast to ``uint8``; slices are transposed and drawn
    with ``origin='lower'`` in a gray colormap.
    """
    V = np.asarray(V)
    if V.ndim != 3:
        raise ValueError(f"V must be a 3-D volume, got shape {V.shape}")
    if slice_indices is None:
        idx = np.array(V.shape) // 2
    else:
        idx = np.asarray(slice_indices, dtype=int)
        if idx.shape != (3,):
            raise ValueError(f"slice_indices must have 3 entries, got {slice_indices!r}")
    Vs = _to_uint8_range(V)
    axial = np.asarray(Vs[:, :, idx[2]]).astype(np.uint8).T
    coronal = np.asarray(Vs[:, idx[1], :]).astype(np.uint8).T
    sagittal = np.asarray(Vs[idx[0], :, :]).astype(np.uint8).T
    fig = _tile_plot(
        [axial, coronal, sagittal], ["Axial", "Coronal", "Sagittal"], cmap="gray", origin="lower"
    )
    _save(fig, fname, fig_kwargs)
    return fig


def draw_lattice_2d(nrows: int, ncols: int, delta: int) -> np.ndarray:
    """A regular lattice of ``nrows x ncols`` squares (DIPY's ``draw_lattice_2d``).

    Squares of ``delta x delta`` pixels filled with 127, separated by one-pixel lines of 0;
    the image has shape ``(1 + (delta + 1) * nrows, 1 + (delta + 1) * ncols)``, float64.
    """
    for name, value in (("nrows", nrows), ("ncols", ncols), ("delta", delta)):
        if int(value) != value or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    step = int(delta) + 1
    lattice = np.full((1 + step * int(nrows), 1 + step * int(ncols)), 127.0)
    lattice[::step, :] = 0
    lattice[:, ::step] = 0
    return lattice


def _lattice(shape: Sequence[int], delta: int) -> np.ndarray:
    """A lattice image cut to ``shape`` (pixels)."""
    rows, cols = int(shape[0]), int(shape[1])
    lattice = draw_lattice_2d((rows + delta) // (delta + 1), (cols + delta) // (delta + 1), delta)
    return lattice[:rows, :cols]


def _inverse_or_none(grid2world: Any) -> np.ndarray | None:
    return None if grid2world is None else np.linalg.inv(np.asarray(grid2world, dtype=float))


def plot_2d_diffeomorphic_map(mapping: Any, *, delta: int = 10,
                              fname: str | os.PathLike[str] | None = None,
                              direct_grid_shape: Sequence[int] | None = None,
                              direct_grid2world: Any = -1,
                              inverse_grid_shape: Sequence[int] | None = None,
                              inverse_grid2world: Any = -1, show_figure: bool = True,
                              **fig_kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
    """Draw the effect of a 2-D diffeomorphic map on a regular lattice (DIPY's function).

    Returns ``(warped_forward, warped_backward)``: a lattice drawn on the inverse grid (by
    default the moving grid) pulled onto the direct grid (by default the static grid) with
    ``mapping.transform``, and a lattice on the direct grid pulled onto the inverse grid
    with ``mapping.transform_inverse``.  ``-1`` for a grid2world means "the mapping's own"
    (``None`` means identity), as in DIPY.  With ``show_figure`` the two images are drawn
    side by side (without pyplot) and saved to ``fname`` if given.
    """
    if int(delta) != delta or delta < 1:
        raise ValueError(f"delta must be a positive integer (pixels), got {delta!r}")
    delta = int(delta)
    # DIPY: a map returned by SyN (is_inverse) pulls onto its codomain grid
    direct = ("codomain" if mapping.is_inverse else "domain")
    inverse = ("domain" if mapping.is_inverse else "codomain")
    if direct_grid_shape is None:
        direct_grid_shape = getattr(mapping, f"{direct}_shape")
    if isinstance(direct_grid2world, int) and direct_grid2world == -1:
        direct_grid2world = getattr(mapping, f"{direct}_grid2world")
    if inverse_grid_shape is None:
        inverse_grid_shape = getattr(mapping, f"{inverse}_shape")
    if isinstance(inverse_grid2world, int) and inverse_grid2world == -1:
        inverse_grid2world = getattr(mapping, f"{inverse}_grid2world")
    warped_forward = mapping.transform(
        _lattice(inverse_grid_shape, delta), interpolation="linear",
        image_world2grid=_inverse_or_none(inverse_grid2world),
        out_shape=direct_grid_shape, out_grid2world=direct_grid2world)
    warped_backward = mapping.transform_inverse(
        _lattice(direct_grid_shape, delta), interpolation="linear",
        image_world2grid=_inverse_or_none(direct_grid2world),
        out_shape=inverse_grid_shape, out_grid2world=inverse_grid2world)
    if show_figure:
        fig = _tile_plot([warped_forward, warped_backward],
                         ["Direct transform", "Inverse transform"], cmap="gray")
        _save(fig, fname, fig_kwargs)
    return warped_forward, warped_backward
