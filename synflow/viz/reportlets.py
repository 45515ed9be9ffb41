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

Flicker figures (:func:`plot_registration`, :func:`plot_before_after`) follow nireports'
``compose_view``: one SVG holding two identical mosaics in ``<g class="background-svg">`` and
``<g class="foreground-svg">``; a CSS animation fades the foreground in and out while the
mouse is over it. The report adds buttons and a slider on top.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import contourpy
import nibabel as nib
import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.colors import ListedColormap, TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from synflow._atomic import atomic_path, atomic_write_text
from synflow.segment.mask import bounding_box

__all__ = [
    "compose_flicker_svg",
    "cuts_from_bbox",
    "plot_before_after",
    "plot_deformation_grid",
    "plot_jacobian",
    "plot_mask_contour",
    "plot_overlay",
    "plot_registration",
    "prefix_svg_ids",
]

PathLike = str | os.PathLike[str]
ORIENTATIONS = ("sagittal", "coronal", "axial")
_BG = "#000000"
_FG = "#ffffff"
FLICKER_CSS = (
    "@keyframes synflowFlicker { 0% {opacity: 1;} 100% {opacity: 0;} }\n"
    ".foreground-svg { animation: 1s ease-in-out 0s alternate none infinite paused "
    "synflowFlicker; }\n"
    ".foreground-svg:hover { animation-play-state: running; }\n"
)


# --------------------------------------------------------------------------- helpers
def _vol(x: Any, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 3:
        raise ValueError(f"{name} must be a 3-D array, got shape {x.shape}")
    if shape is not None and x.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {x.shape}")
    if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
        x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    return x


def _reorient(
    arrays: Sequence[np.ndarray | None], grid2world: np.ndarray | None
) -> tuple[list[np.ndarray | None], np.ndarray, np.ndarray]:
    """Flip/permute arrays (first three axes) to the closest RAS+ orientation.

    Returns (arrays, new grid2world, zooms). Without ``grid2world`` nothing changes and the
    voxels are taken as 1 mm isotropic.
    """
    if grid2world is None:
        return list(arrays), np.eye(4), np.ones(3)
    aff = np.asarray(grid2world, dtype=np.float64)
    if aff.shape != (4, 4):
        raise ValueError(f"grid2world must be a 4x4 affine, got shape {aff.shape}")
    first = next(a for a in arrays if a is not None)
    ornt = nib.orientations.io_orientation(aff)
    out = [None if a is None else nib.orientations.apply_orientation(a, ornt) for a in arrays]
    new_aff = aff @ nib.orientations.inv_ornt_aff(ornt, first.shape[:3])
    zooms = np.sqrt((new_aff[:3, :3] ** 2).sum(axis=0))
    return out, new_aff, zooms


def _bbox(mask: np.ndarray | None, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """``(lo, hi)`` voxel indices of the non-zero voxels of ``mask``, ``hi`` *inclusive*.

    :func:`synflow.segment.mask.bounding_box` (DIPY's, exclusive ``maxs``) minus one at the
    top; the whole grid of ``shape`` if ``mask`` is None or empty.
    """
    if mask is not None and np.any(mask):
        mins, maxs = bounding_box(mask)
        return np.array(mins), np.array(maxs) - 1
    return np.zeros(3, dtype=int), np.array(shape[:3]) - 1


def cuts_from_bbox(
    mask: np.ndarray | None, shape: Sequence[int], n_cuts: int = 6
) -> dict[int, list[int]]:
    """Slice indices per axis (0 sagittal, 1 coronal, 2 axial) evenly inside the bbox.

    ``n_cuts`` slices per axis, spread over the bounding box of ``mask`` (whole grid if the
    mask is None or empty), excluding its first and last planes; duplicates removed.
    """
    if n_cuts < 1:
        raise ValueError(f"n_cuts must be >= 1, got {n_cuts}")
    lo, hi = _bbox(mask, tuple(shape))
    cuts: dict[int, list[int]] = {}
    for ax in range(3):
        pos = lo[ax] + (hi[ax] - lo[ax]) * (np.arange(1, n_cuts + 1) / (n_cuts + 1))
        cuts[ax] = sorted({int(round(p)) for p in pos})
    return cuts


def _robust_limits(vol: np.ndarray, mask: np.ndarray | None) -> tuple[float, float]:
    sel = vol[mask.astype(bool)] if mask is not None and np.any(mask) else vol[vol != 0]
    if sel.size == 0:
        sel = vol.ravel()
    lo, hi = np.percentile(sel.astype(np.float64), [0.5, 99.5])
    if hi <= lo:
        lo, hi = float(vol.min()), float(vol.max())
    if hi <= lo:
        hi = lo + 1.0
    return float(lo), float(hi)


def _slice(vol: np.ndarray, axis: int, index: int) -> np.ndarray:
    """In-plane slice, transposed so that it is drawn with ``origin='lower'``."""
    sl: list[Any] = [slice(None)] * 3
    sl[axis] = index
    return np.asarray(vol[tuple(sl)]).T


def _plane_axes(axis: int) -> tuple[int, int]:
    return {0: (1, 2), 1: (0, 2), 2: (0, 1)}[axis]


class _Mosaic:
    """Deterministic figure layout: one axes per orientation row, ``n`` slices per row.

    Each row is a single axes in voxel units where the slices are placed side by side (one
    axes per row rather than per slice keeps matplotlib fast). The same inputs always give
    the same geometry, so two mosaics can be stacked exactly (flicker). Slices are cropped
    to the bounding box ``crop`` plus a 2-voxel margin.
    """

    def __init__(
        self,
        shape: tuple[int, ...],
        zooms: np.ndarray,
        cuts: dict[int, list[int]],
        *,
        title: str | None,
        crop: tuple[np.ndarray, np.ndarray] | None = None,
        aff: np.ndarray | None = None,
        width_in: float = 10.0,
        footer_in: float = 0.0,
    ) -> None:
        self.cuts = cuts
        self.aff = aff
        if crop is None:
            crop = (np.zeros(3, dtype=int), np.array(shape[:3]) - 1)
        self.lo = np.maximum(np.asarray(crop[0]) - 2, 0)
        self.hi = np.minimum(np.asarray(crop[1]) + 2, np.array(shape[:3]) - 1)
        ext = self.hi - self.lo + 1
        self.ext = ext
        ncol = max(len(v) for v in cuts.values())
        gap_in = 0.06
        label_w = 0.35
        avail = width_in - label_w - 0.1
        sizes = {}
        for ax in range(3):
            p, q = _plane_axes(ax)
            sizes[ax] = (ext[p] * zooms[p], ext[q] * zooms[q])  # mm
        scale = min((avail - (ncol - 1) * gap_in) / (ncol * w) for w, _ in sizes.values())
        scale = min(scale, 2.2 / max(h for _, h in sizes.values()))  # inch per mm
        title_h = 0.35 if title else 0.1
        row_h = {ax: sizes[ax][1] * scale for ax in range(3)}
        vgap = 0.08
        height = title_h + sum(row_h.values()) + 3 * vgap + footer_in + 0.05
        self.fig = Figure(figsize=(width_in, height), facecolor=_BG)
        FigureCanvasAgg(self.fig)
        self.width, self.height = width_in, height
        self.rows: dict[int, Axes] = {}
        self.step: dict[int, float] = {}
        if title:
            self.fig.text(0.5, 1 - 0.2 / height, title, ha="center", va="center",
                          color=_FG, fontsize=11)
        top = height - title_h
        for ax in range(3):
            p, q = _plane_axes(ax)
            n = len(cuts[ax])
            w_in, h_in = sizes[ax][0] * scale, row_h[ax]
            gap_vox = gap_in / (scale * zooms[p])
            self.step[ax] = float(ext[p] + gap_vox)
            total_in = n * w_in + (n - 1) * gap_in
            x0 = label_w + max(0.0, (avail - total_in) / 2)
            top -= vgap
            y0 = top - h_in
            self.fig.text(label_w / 2 / width_in, (y0 + h_in / 2) / height, ORIENTATIONS[ax],
                          rotation=90, ha="center", va="center", color=_FG, fontsize=9)
            a = self.fig.add_axes((x0 / width_in, y0 / height, total_in / width_in,
                                   h_in / height))
            a.set_axis_off()
            a.set_facecolor(_BG)
            a.set_xlim(-0.5, (n - 1) * self.step[ax] + ext[p] - 0.5)
            a.set_ylim(-0.5, ext[q] - 0.5)
            self.rows[ax] = a
            top = y0

    def panels(self) -> list[tuple[int, int, int]]:
        """(axis, column, slice index) for every panel."""
        return [(ax, c, idx) for ax in range(3) for c, idx in enumerate(self.cuts[ax])]

    def crop2d(self, axis: int, sl2d: np.ndarray) -> np.ndarray:
        """Crop a transposed slice (shape (nq, np, ...)) to the bounding box."""
        p, q = _plane_axes(axis)
        return sl2d[self.lo[q]:self.hi[q] + 1, self.lo[p]:self.hi[p] + 1]

    def x0(self, axis: int, col: int) -> float:
        return col * self.step[axis]

    def image(self, axis: int, col: int, sl2d: np.ndarray, **kw: Any) -> Any:
        """Draw a (transposed, uncropped) slice in its panel."""
        p, q = _plane_axes(axis)
        x0 = self.x0(axis, col)
        kw.setdefault("interpolation", "none")
        a = self.rows[axis]
        im = a.imshow(self.crop2d(axis, sl2d), origin="lower", aspect="auto",
                      extent=(x0 - 0.5, x0 + self.ext[p] - 0.5, -0.5, self.ext[q] - 0.5), **kw)
        return im

    def lines(self, axis: int, col: int, segs: list[np.ndarray], color: str, lw: float,
              clip: bool = True) -> None:
        """Polylines given in in-plane voxel coordinates (x = p axis, y = q axis)."""
        if not segs:
            return
        moved = [np.column_stack(self.to_panel(axis, col, sg[:, 0], sg[:, 1])) for sg in segs]
        lc = LineCollection(moved, colors=color, linewidths=lw)
        if clip:
            lc.set_clip_path(self.clip_rect(axis, col))
        self.rows[axis].add_collection(lc)

    def to_panel(self, axis: int, col: int, xp: np.ndarray, yq: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Voxel coordinates (in-plane) -> row data coordinates of panel ``col``."""
        p, q = _plane_axes(axis)
        return xp - self.lo[p] + self.x0(axis, col), yq - self.lo[q]

    def clip_rect(self, axis: int, col: int) -> Rectangle:
        p, q = _plane_axes(axis)
        return Rectangle((self.x0(axis, col) - 0.5, -0.5), float(self.ext[p]),
                         float(self.ext[q]), transform=self.rows[axis].transData)

    def finish(self) -> None:
        """Slice positions (mm if an affine is known) and orientation letters."""
        for ax, col, idx in self.panels():
            p, q = _plane_axes(ax)
            a = self.rows[ax]
            x0 = self.x0(ax, col)
            if self.aff is not None:
                pt = np.ones(4)
                pt[:3] = (self.lo + self.hi) / 2  # centre of the panel, for oblique grids
                pt[ax] = idx
                label = f"{'xyz'[ax]}={(self.aff @ pt)[ax]:.0f}mm"
            else:
                label = f"{'ijk'[ax]}={idx}"
            a.text(x0, 0.0, label, color=_FG, fontsize=6, ha="left", va="bottom")
            if col == 0:
                left, right = ("P", "A") if ax == 0 else ("L", "R")
                top = self.ext[q] - 1.0
                a.text(x0, top, left, color=_FG, fontsize=7, va="top")
                a.text(x0 + self.ext[p] - 1.0, top, right, color=_FG, fontsize=7, va="top",
                       ha="right")
        for ax, a in self.rows.items():
            p, q = _plane_axes(ax)
            n = len(self.cuts[ax])
            a.set_xlim(-0.5, (n - 1) * self.step[ax] + self.ext[p] - 0.5)
            a.set_ylim(-0.5, self.ext[q] - 0.5)


def _render_svg(fig: Figure) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", facecolor=fig.get_facecolor())
    return buf.getvalue()


def _out_path(out: PathLike, allowed: tuple[str, ...] = (".svg", ".png")) -> Path:
    """Validate the output file name before any work is done."""
    path = Path(out)
    if path.suffix.lower() not in allowed:
        raise ValueError(f"out must end in {' or '.join(allowed)}, got {path.name!r}")
    return path


def _save(fig: Figure, out: Path) -> Path:
    """Render ``fig`` to ``out`` (``.svg``, or ``.png`` at 150 dpi) atomically."""
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in ("svg", "png"):
        raise ValueError(f"out must end in .svg or .png, got {out.name!r}")
    kw: dict[str, Any] = {"dpi": 150} if fmt == "png" else {}
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format=fmt, facecolor=fig.get_facecolor(), **kw)
    return out


def _gray_mosaic(
    vol: np.ndarray, lims: tuple[float, float], shape: tuple[int, ...], zooms: np.ndarray,
    cuts: dict[int, list[int]], aff: np.ndarray | None, title: str | None,
    crop: tuple[np.ndarray, np.ndarray],
    contour_segs: dict[tuple[int, int], list[np.ndarray]] | None = None,
) -> Figure:
    mos = _Mosaic(shape, zooms, cuts, title=title, crop=crop, aff=aff)
    for ax, col, idx in mos.panels():
        mos.image(ax, col, _slice(vol, ax, idx), cmap="gray", vmin=lims[0], vmax=lims[1])
        if contour_segs is not None:
            mos.lines(ax, col, contour_segs[(ax, col)], "#ff3030", 0.9, clip=False)
    mos.finish()
    return mos.fig


def _contour_segs(
    mask: np.ndarray | None, cuts: dict[int, list[int]]
) -> dict[tuple[int, int], list[np.ndarray]] | None:
    """Outline (level 0.5) of ``mask`` on every slice, as (x=p, y=q) voxel polylines."""
    if mask is None:
        return None
    out: dict[tuple[int, int], list[np.ndarray]] = {}
    for ax in range(3):
        for col, idx in enumerate(cuts[ax]):
            m2 = _slice(mask, ax, idx).astype(np.float64)  # shape (nq, np)
            if m2.any() and not m2.all():
                gen = contourpy.contour_generator(z=m2, line_type="Separate")
                out[(ax, col)] = [np.asarray(seg, dtype=np.float64)
                                  for seg in gen.lines(0.5)]
            else:
                out[(ax, col)] = []
    return out


_ID_RE = re.compile(r'id="([^"]+)"')


def prefix_svg_ids(svg: str, prefix: str) -> str:
    """The root ``<svg>`` element of an SVG document (prolog dropped), every ``id`` and
    ``#id`` reference prefixed with ``prefix`` so several SVGs can share one HTML page."""
    start = svg.find("<svg")
    if start < 0:
        raise ValueError("not an SVG document (no <svg> element)")
    body = svg[start:]
    ids = set(_ID_RE.findall(body))
    if ids:
        pattern = re.compile(r'(id="|#)(' + "|".join(re.escape(i) for i in
                                                    sorted(ids, key=len, reverse=True))
                             + r')(?=["\)])')
        body = pattern.sub(lambda m: f"{m.group(1)}{prefix}{m.group(2)}", body)
    return body


def _svg_element(svg: str, prefix: str) -> str:
    """The ``<svg>`` element of a matplotlib SVG document, ids prefixed, sized 100%."""
    body = prefix_svg_ids(svg, prefix)
    head_end = body.index(">")
    head = body[:head_end]
    head = re.sub(r'\swidth="[^"]*"', ' width="100%"', head, count=1)
    head = re.sub(r'\sheight="[^"]*"', ' height="100%"', head, count=1)
    return head + body[head_end:]


def compose_flicker_svg(background: Figure, foreground: Figure, prefix: str = "fl") -> str:
    """Stack two same-size figures into one SVG (nireports ``compose_view`` style)."""
    w_pt = background.get_figwidth() * 72
    h_pt = background.get_figheight() * 72
    bg = _svg_element(_render_svg(background), f"{prefix}bg-")
    fg = _svg_element(_render_svg(foreground), f"{prefix}fg-")
    return (
        '<?xml version="1.0" encoding="utf-8" standalone="no"?>\n'
        '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
        f'version="1.1" width="{w_pt:.2f}pt" height="{h_pt:.2f}pt" '
        f'viewBox="0 0 {w_pt:.2f} {h_pt:.2f}" class="synflow-flicker" '
        'preserveAspectRatio="xMidYMid meet">\n'
        f"<style type=\"text/css\">\n{FLICKER_CSS}</style>\n"
        f'<g class="background-svg">\n{bg}\n</g>\n'
        f'<g class="foreground-svg">\n{fg}\n</g>\n'
        "</svg>\n"
    )


def _prefix_from(out: Path) -> str:
    return "s" + re.sub(r"[^A-Za-z0-9]", "", out.stem)[-24:] + "-"


# --------------------------------------------------------------------------- figures
def plot_mask_contour(
    b0: np.ndarray,
    mask: np.ndarray,
    out: PathLike,
    *,
    grid2world: np.ndarray | None = None,
    n_cuts: int = 6,
    title: str | None = None,
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
    """
    out = _out_path(out)
    b0 = _vol(b0, "b0")
    mask = _vol(mask, "mask", b0.shape).astype(bool)
    (b0r, mr), aff, zooms = _reorient([b0, mask], grid2world)
    cuts = cuts_from_bbox(mr, b0r.shape, n_cuts)
    fig = _gray_mosaic(b0r, _robust_limits(b0r, mr), b0r.shape, zooms, cuts,
                       aff if grid2world is not None else None, title,
                       _bbox(mr, b0r.shape), _contour_segs(mr, cuts))
    return _save(fig, Path(out))


def _flicker_pair(
    back: np.ndarray, front: np.ndarray, out: Path, *, mask: np.ndarray | None,
    grid2world: np.ndarray | None, n_cuts: int, back_label: str, front_label: str,
    contour: np.ndarray | None, title: str | None,
) -> Path:
    if out.suffix.lower() != ".svg":
        raise ValueError(f"flicker figures must be written as .svg, got {out.name!r}")
    back = _vol(back, "fixed")
    front = _vol(front, "moving", back.shape)
    if mask is not None:
        mask = _vol(mask, "mask", back.shape).astype(bool)
    if contour is not None:
        contour = _vol(contour, "contour", back.shape).astype(bool)
    (br, fr, mr, cr), aff, zooms = _reorient([back, front, mask, contour], grid2world)
    roi = mr if mr is not None else br != 0
    cuts = cuts_from_bbox(roi, br.shape, n_cuts)
    crop = _bbox(roi, br.shape)
    affn = aff if grid2world is not None else None
    base = f"{title}: " if title else ""
    segs = _contour_segs(cr, cuts)  # shared by both layers
    fig_b = _gray_mosaic(br, _robust_limits(br, mr), br.shape, zooms, cuts, affn,
                         f"{base}{back_label}", crop, segs)
    fig_f = _gray_mosaic(fr, _robust_limits(fr, mr), br.shape, zooms, cuts, affn,
                         f"{base}{front_label}", crop, segs)
    return atomic_write_text(out, compose_flicker_svg(fig_b, fig_f, _prefix_from(out)))


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
) -> Path:
    """Flicker SVG: ``fixed`` (background layer) and ``moving`` (foreground layer).

    Both layers are the same mosaic (sagittal/coronal/axial rows), each scaled to its own
    0.5-99.5 percentile range in ``mask``; ``contour`` (e.g. the reference brain mask) is
    outlined in red on both so misalignment stands out. Hovering the foreground fades it in
    and out (CSS animation); the report adds controls. ``out`` must end in ``.svg``.
    """
    out = _out_path(out, (".svg",))
    return _flicker_pair(fixed, moving, Path(out), mask=mask, grid2world=grid2world,
                         n_cuts=n_cuts, back_label=fixed_label, front_label=moving_label,
                         contour=contour, title=title)


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
) -> Path:
    """Flicker SVG between ``moving_before`` and ``moving_after``, reference outline on both.

    The outline is ``mask`` if given, else the reference's non-zero voxels; ``fixed`` sets
    it and, without a mask, the slice positions.
    """
    out = _out_path(out, (".svg",))
    fixed = _vol(fixed, "fixed")
    contour = mask if mask is not None else fixed > 0
    return _flicker_pair(moving_before, moving_after, Path(out),
                         mask=mask if mask is not None else fixed > 0,
                         grid2world=grid2world, n_cuts=n_cuts, back_label=labels[0],
                         front_label=labels[1], contour=contour, title=title)


def plot_overlay(
    fixed: np.ndarray,
    moving: np.ndarray,
    out: PathLike,
    *,
    mask: np.ndarray | None = None,
    grid2world: np.ndarray | None = None,
    n_cuts: int = 6,
    title: str | None = None,
) -> Path:
    """Red/green overlay: ``fixed`` in red, ``moving`` in green (yellow where both are bright).

    Each image is scaled to its own 0.5-99.5 percentile range in ``mask`` and clipped to
    [0, 1]. Good alignment looks yellow with thin red/green fringes; a shift shows a red
    edge on one side and a green edge on the other.
    """
    out = _out_path(out)
    fixed = _vol(fixed, "fixed")
    moving = _vol(moving, "moving", fixed.shape)
    if mask is not None:
        mask = _vol(mask, "mask", fixed.shape).astype(bool)
    (fr, mvr, mr), aff, zooms = _reorient([fixed, moving, mask], grid2world)
    roi = mr if mr is not None else fr != 0
    cuts = cuts_from_bbox(roi, fr.shape, n_cuts)
    lf, hf = _robust_limits(fr, mr)
    lm, hm = _robust_limits(mvr, mr)
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
    if mask is not None:
        mask = _vol(mask, "mask", shape).astype(bool)
    if background is not None:
        background = _vol(background, "background", shape)
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
        mos.lines(ax, col, segs, "#ffd21f", 0.5)
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
    if mask is not None:
        mask = _vol(mask, "mask", jac.shape).astype(bool)
    if background is not None:
        background = _vol(background, "background", jac.shape)
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
