"""QC figures ("reportlets") for the participant report.

Every function takes NumPy arrays that already live on one voxel grid (the caller resamples),
draws with matplotlib's Agg/SVG canvases (no display, no :mod:`matplotlib.pyplot`, so no
figure is left open), writes one file and returns its path. SVG is preferred (vector
contours, crisp voxels); ``.png`` also works for everything except the flicker figures.

Layout: a mosaic of slices in three orientations (rows: sagittal, coronal, axial). Slices are
spread over the bounding box of ``mask`` (or of the non-zero voxels). If ``grid2world`` is
given, volumes are first flipped/permuted to the closest RAS+ orientation and drawn with their
true voxel aspect ratio, so left is on the left (neurological view) and up is superior;
without it the arrays are assumed to be RAS+ already with isotropic voxels.

The mosaic machinery lives in :mod:`synflow.viz.mosaic`, the SVG composition in
:mod:`synflow.viz.flicker`; every name this module exported before is still importable here.

Flicker figures (:func:`plot_registration`, :func:`plot_before_after`) follow nireports'
``compose_view``: one SVG holding two identical mosaics in ``<g class="background-svg">`` and
``<g class="foreground-svg">``; a CSS animation fades the foreground in and out while the
mouse is over it. The report adds buttons and a slider on top.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import ListedColormap, TwoSlopeNorm

from synflow._atomic import atomic_write_text
from synflow.viz.flicker import FLICKER_CSS, _prefix_from, compose_flicker_svg, prefix_svg_ids
from synflow.viz.mosaic import (
    _FG,
    ORIENTATIONS,
    PathLike,
    _bbox,
    _contour_segs,
    _gray_mosaic,
    _limits_or,
    _Mosaic,
    _optional_vol,
    _out_path,
    _plane_axes,
    _reorient,
    _robust_limits,
    _save,
    _slice,
    _vol,
    cuts_from_bbox,
    intensity_window,
)

__all__ = [
    "FLICKER_CSS",
    "ORIENTATIONS",
    "compose_flicker_svg",
    "cuts_from_bbox",
    "intensity_window",
    "plot_before_after",
    "plot_deformation_grid",
    "plot_jacobian",
    "plot_mask_contour",
    "plot_overlay",
    "plot_registration",
    "prefix_svg_ids",
]


def plot_mask_contour(
    b0: np.ndarray,
    mask: np.ndarray,
    out: PathLike,
    *,
    grid2world: np.ndarray | None = None,
    n_cuts: int = 6,
    title: str | None = None,
    limits: tuple[float, float] | None = None,
) -> Path:
    """b0 in gray with the outline of the brain ``mask`` (red), three orientations.

    Parameters
    ----------
    b0 : ndarray (X, Y, Z)
        Background image (any units; displayed between its 0.5 and 99.5 percentiles in the
        mask).
    mask : ndarray (X, Y, Z)
        Brain mask (non-zero = brain).
    out : path
        ``.svg`` or ``.png`` file to write.
    grid2world : (4, 4) array, optional
        Voxel -> world affine, for orientation, aspect ratio and mm slice positions.
    n_cuts : int
        Slices per orientation, spread over the mask's bounding box.
    title : str, optional
        Figure title.
    limits : (lo, hi), optional
        Gray window in the units of ``b0`` (default: :func:`intensity_window` of ``b0`` in
        ``mask``); give it when ``mask`` is not the brain, e.g. a grey-matter outline.
    """
    out = _out_path(out)
    b0 = _vol(b0, "b0")
    mask = _vol(mask, "mask", b0.shape).astype(bool)
    (b0r, mr), aff, zooms = _reorient([b0, mask], grid2world)
    cuts = cuts_from_bbox(mr, b0r.shape, n_cuts)
    fig = _gray_mosaic(b0r, _limits_or(limits, "limits", b0r, mr), b0r.shape, zooms, cuts,
                       aff if grid2world is not None else None, title,
                       _bbox(mr, b0r.shape), _contour_segs(mr, cuts))
    return _save(fig, Path(out))


def _flicker_pair(
    back: np.ndarray, front: np.ndarray, out: Path, *, mask: np.ndarray | None,
    grid2world: np.ndarray | None, n_cuts: int, back_label: str, front_label: str,
    contour: np.ndarray | None, title: str | None,
    back_limits: tuple[float, float] | None = None,
    front_limits: tuple[float, float] | None = None,
) -> Path:
    if out.suffix.lower() != ".svg":
        raise ValueError(f"flicker figures must be written as .svg, got {out.name!r}")
    back = _vol(back, "fixed")
    front = _vol(front, "moving", back.shape)
    mask = _optional_vol(mask, "mask", back.shape, as_bool=True)
    contour = _optional_vol(contour, "contour", back.shape, as_bool=True)
    (br, fr, mr, cr), aff, zooms = _reorient([back, front, mask, contour], grid2world)
    roi = mr if mr is not None else br != 0
    cuts = cuts_from_bbox(roi, br.shape, n_cuts)
    crop = _bbox(roi, br.shape)
    affn = aff if grid2world is not None else None
    base = f"{title}: " if title else ""
    segs = _contour_segs(cr, cuts)  # shared by both layers
    fig_b = _gray_mosaic(br, _limits_or(back_limits, "limits", br, mr), br.shape, zooms,
                         cuts, affn, f"{base}{back_label}", crop, segs)
    fig_f = _gray_mosaic(fr, _limits_or(front_limits, "limits", fr, mr), br.shape, zooms,
                         cuts, affn, f"{base}{front_label}", crop, segs)
    svg = compose_flicker_svg(fig_b, fig_f, _prefix_from(out),
                              labels=(back_label, front_label))
    return atomic_write_text(out, svg)


def plot_registration(
    fixed: np.ndarray,
    moving: np.ndarray,
    out: PathLike,
    *,
    mask: np.ndarray | None = None,
    grid2world: np.ndarray | None = None,
    n_cuts: int = 6,
    fixed_label: str = "reference",
    moving_label: str = "moving",
    contour: np.ndarray | None = None,
    title: str | None = None,
    fixed_limits: tuple[float, float] | None = None,
    moving_limits: tuple[float, float] | None = None,
) -> Path:
    """Flicker SVG: ``fixed`` (background layer) and ``moving`` (foreground layer).

    Both layers are the same mosaic (sagittal/coronal/axial rows). Each is shown in gray
    between its ``*_limits`` (image units; default: its own 0.5-99.5 percentile range in
    ``mask``, see :func:`intensity_window`); ``contour`` (e.g. the reference brain mask) is
    outlined in red on both so misalignment stands out. Hovering the foreground fades it in
    and out (CSS animation); the report adds controls named ``fixed_label`` and
    ``moving_label`` (stored in the SVG's ``data-bg-label``/``data-fg-label``). ``out``
    must end in ``.svg``.
    """
    out = _out_path(out, (".svg",))
    return _flicker_pair(fixed, moving, Path(out), mask=mask, grid2world=grid2world,
                         n_cuts=n_cuts, back_label=fixed_label, front_label=moving_label,
                         contour=contour, title=title, back_limits=fixed_limits,
                         front_limits=moving_limits)


def plot_before_after(
    fixed: np.ndarray,
    moving_before: np.ndarray,
    moving_after: np.ndarray,
    out: PathLike,
    labels: tuple[str, str] = ("before", "after"),
    *,
    mask: np.ndarray | None = None,
    grid2world: np.ndarray | None = None,
    n_cuts: int = 6,
    title: str | None = None,
    limits: tuple[float, float] | None = None,
) -> Path:
    """Flicker SVG between ``moving_before`` and ``moving_after``, reference outline on both.

    The outline is ``mask`` if given, else the reference's non-zero voxels; ``fixed`` sets
    it and, without a mask, the slice positions. Both layers show the moving image with the
    same gray window ``limits`` (image units; default: the 0.5-99.5 percentiles of
    ``moving_after`` in the mask), so only the alignment changes between them.
    """
    out = _out_path(out, (".svg",))
    fixed = _vol(fixed, "fixed")
    contour = mask if mask is not None else fixed > 0
    window = limits
    if window is None:
        window = intensity_window(_vol(moving_after, "moving_after", fixed.shape), contour)
    return _flicker_pair(moving_before, moving_after, Path(out),
                         mask=mask if mask is not None else fixed > 0,
                         grid2world=grid2world, n_cuts=n_cuts, back_label=labels[0],
                         front_label=labels[1], contour=contour, title=title,
                         back_limits=window, front_limits=window)


def plot_overlay(
    fixed: np.ndarray,
    moving: np.ndarray,
    out: PathLike,
    *,
    mask: np.ndarray | None = None,
    grid2world: np.ndarray | None = None,
    n_cuts: int = 6,
    title: str | None = None,
    fixed_limits: tuple[float, float] | None = None,
    moving_limits: tuple[float, float] | None = None,
) -> Path:
    """Red/green overlay: ``fixed`` in red, ``moving`` in green (yellow where both are bright).

    Each image is scaled from its ``*_limits`` window (image units) to [0, 1] and clipped.
    By default the window is the image's own 0.5-99.5 percentile range in ``mask``; pass
    the same windows (:func:`intensity_window`, once per series) to every overlay of a
    series so before/after panels are comparable. Good alignment looks yellow with thin
    red/green fringes; a shift shows a red edge on one side and a green edge on the other.
    """
    out = _out_path(out)
    fixed = _vol(fixed, "fixed")
    moving = _vol(moving, "moving", fixed.shape)
    mask = _optional_vol(mask, "mask", fixed.shape, as_bool=True)
    (fr, mvr, mr), aff, zooms = _reorient([fixed, moving, mask], grid2world)
    roi = mr if mr is not None else fr != 0
    cuts = cuts_from_bbox(roi, fr.shape, n_cuts)
    lf, hf = _limits_or(fixed_limits, "fixed_limits", fr, mr)
    lm, hm = _limits_or(moving_limits, "moving_limits", mvr, mr)
    red = np.clip((fr.astype(np.float32) - lf) / (hf - lf), 0, 1)
    green = np.clip((mvr.astype(np.float32) - lm) / (hm - lm), 0, 1)
    mos = _Mosaic(fr.shape, zooms, cuts, title=title or "overlay: reference red, moving green",
                  crop=_bbox(roi, fr.shape), aff=aff if grid2world is not None else None)
    for ax, col, idx in mos.panels():
        r2 = _slice(red, ax, idx)
        rgb = np.zeros(r2.shape + (3,), dtype=np.float32)
        rgb[..., 0] = r2
        rgb[..., 1] = _slice(green, ax, idx)
        mos.image(ax, col, rgb)
    mos.finish()
    return _save(mos.fig, Path(out))


def plot_deformation_grid(
    disp_mm: np.ndarray,
    grid2world: np.ndarray | None,
    out: PathLike,
    *,
    mask: np.ndarray | None = None,
    background: np.ndarray | None = None,
    spacing: int = 4,
    n_cuts: int = 3,
    title: str | None = None,
) -> Path:
    """A regular grid (every ``spacing`` voxels) deformed by ``disp_mm``, three orientations.

    Each grid node at voxel ``x`` is drawn at ``x + u(x)`` (``u`` converted from mm to voxels
    with ``grid2world``; None = 1 mm isotropic voxels), using the in-plane components only:
    straight evenly spaced lines = no deformation, bunched lines = compression, crossing lines
    = folding. Drawn over ``background`` (gray) if given, within the mask's bounding box.
    """
    out = _out_path(out)
    disp = np.asarray(disp_mm)
    if disp.ndim != 4 or disp.shape[-1] != 3:
        raise ValueError(f"disp_mm must have shape (X, Y, Z, 3), got {disp.shape}")
    if int(spacing) != spacing or spacing < 1:
        raise ValueError(f"spacing must be a positive integer, got {spacing!r}")
    spacing = int(spacing)
    shape = disp.shape[:3]
    mask = _optional_vol(mask, "mask", shape, as_bool=True)
    background = _optional_vol(background, "background", shape)
    (dr, mr, bgr), aff, zooms = _reorient([disp, mask, background], grid2world)
    lin_inv = np.linalg.inv(aff[:3, :3])
    rshape = dr.shape[:3]
    cuts = cuts_from_bbox(mr, rshape, n_cuts)
    lo, hi = _bbox(mr, rshape)
    mag = np.sqrt((dr.astype(np.float64) ** 2).sum(-1))
    mmax = float(mag[mr].max()) if mr is not None and mr.any() else float(mag.max())
    mos = _Mosaic(rshape, zooms, cuts,
                  title=title or f"deformation grid (max |u| = {mmax:.1f} mm)",
                  crop=(lo, hi), aff=aff if grid2world is not None else None)
    lims = _robust_limits(bgr, mr) if bgr is not None else (0.0, 1.0)
    for ax, col, idx in mos.panels():
        p, q = _plane_axes(ax)
        if bgr is not None:
            mos.image(ax, col, _slice(bgr, ax, idx), cmap="gray", vmin=lims[0], vmax=lims[1],
                      alpha=0.8)
        sl: list[Any] = [slice(None)] * 3
        sl[ax] = idx
        v = np.einsum("ab,...b->...a", lin_inv, dr[tuple(sl)].astype(np.float64))  # voxels
        pp, qq = np.meshgrid(np.arange(rshape[p]), np.arange(rshape[q]), indexing="ij")
        p_rng = np.arange(lo[p], hi[p] + 1)
        q_rng = np.arange(lo[q], hi[q] + 1)
        xs = pp + v[..., p]
        ys = qq + v[..., q]
        segs = [np.column_stack([xs[p_rng, q0], ys[p_rng, q0]])
                for q0 in range(int(lo[q]), int(hi[q]) + 1, spacing)]
        segs += [np.column_stack([xs[p0, q_rng], ys[p0, q_rng]])
                 for p0 in range(int(lo[p]), int(hi[p]) + 1, spacing)]
        mos.lines(ax, col, segs, "#ffd21f", 0.5, rasterized=True)
    mos.finish()
    return _save(mos.fig, Path(out))


def plot_jacobian(
    jac: np.ndarray,
    out: PathLike,
    background: np.ndarray | None = None,
    *,
    mask: np.ndarray | None = None,
    grid2world: np.ndarray | None = None,
    n_cuts: int = 6,
    vmin: float = 0.5,
    vmax: float = 2.0,
    title: str | None = None,
) -> Path:
    """Jacobian determinant map, diverging colormap centred on 1, folding in green.

    Blue = local shrinkage (det < 1), white = volume preserved, red = expansion (det > 1);
    the colour scale is linear on each side of 1 between ``vmin`` and ``vmax`` (clipped).
    Voxels with det <= 0 (folding) are painted bright green. Only voxels in ``mask`` (if
    given) are coloured, over the gray ``background``.
    """
    out = _out_path(out)
    jac = _vol(jac, "jac")
    if not vmin < 1.0 < vmax:
        raise ValueError(f"need vmin < 1 < vmax, got vmin={vmin}, vmax={vmax}")
    mask = _optional_vol(mask, "mask", jac.shape, as_bool=True)
    background = _optional_vol(background, "background", jac.shape)
    (jr, mr, bgr), aff, zooms = _reorient([jac, mask, background], grid2world)
    cuts = cuts_from_bbox(mr, jr.shape, n_cuts)
    inside = mr if mr is not None else np.ones(jr.shape, dtype=bool)
    sel = jr[inside] if inside.any() else jr.ravel()
    nfold = int(np.count_nonzero(sel <= 0))
    ttl = title or (f"Jacobian determinant (min {sel.min():.2f}, max {sel.max():.2f}, "
                    f"{nfold} folded voxels)")
    mos = _Mosaic(jr.shape, zooms, cuts, title=ttl, footer_in=0.6, crop=_bbox(mr, jr.shape),
                  aff=aff if grid2world is not None else None)
    norm = TwoSlopeNorm(vcenter=1.0, vmin=vmin, vmax=vmax)
    cmap = colormaps["RdBu_r"]
    fold_cmap = ListedColormap(["#00ff40"])
    lims = _robust_limits(bgr, mr) if bgr is not None else (0.0, 1.0)
    im = None
    for ax, col, idx in mos.panels():
        if bgr is not None:
            mos.image(ax, col, _slice(bgr, ax, idx), cmap="gray", vmin=lims[0], vmax=lims[1])
        js = _slice(jr, ax, idx)
        ins = _slice(inside, ax, idx)
        im = mos.image(ax, col, np.ma.masked_where(~ins, js), cmap=cmap, norm=norm,
                       alpha=0.85 if bgr is not None else 1.0)
        fold = ins & (js <= 0)
        if fold.any():
            mos.image(ax, col, np.ma.masked_where(~fold, np.ones_like(js)), cmap=fold_cmap)
    mos.finish()
    if im is not None:
        cax = mos.fig.add_axes((0.3, 0.3 / mos.height, 0.4, 0.1 / mos.height))
        cb = mos.fig.colorbar(im, cax=cax, orientation="horizontal", extend="both")
        cb.set_ticks([vmin, (vmin + 1) / 2, 1.0, (1 + vmax) / 2, vmax])
        cb.ax.tick_params(colors=_FG, labelsize=7)
        cb.outline.set_edgecolor(_FG)
        cb.solids.set_alpha(1.0)
        mos.fig.text(0.72, 0.35 / mos.height, "green = folding (det <= 0)", color="#00ff40",
                     fontsize=7, va="center")
    return _save(mos.fig, Path(out))
