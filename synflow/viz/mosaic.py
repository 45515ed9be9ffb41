"""Mosaic figure machinery shared by the QC figures of :mod:`synflow.viz.reportlets`.

Owns the layout (rows: sagittal, coronal, axial; ``n`` slices per row, spread over a
bounding box), input checks (:func:`_vol`), reorientation to RAS+ with true voxel aspect
(:func:`_reorient`), intensity limits, mask contours, and writing a figure (atomically).
All drawing uses matplotlib's Agg/SVG canvases: no display, no :mod:`matplotlib.pyplot`.
"""

from __future__ import annotations

import base64
import io
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import contourpy
import nibabel as nib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image as PILImage

from synflow._atomic import atomic_path, atomic_write_text
from synflow.align.affine_checks import check_affine
from synflow.segment.mask import bounding_box

__all__ = ["ORIENTATIONS", "cuts_from_bbox", "intensity_window"]

PathLike = str | os.PathLike[str]
ORIENTATIONS = ("sagittal", "coronal", "axial")
_BG = "#000000"
_FG = "#ffffff"


def _vol(x: Any, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 3:
        raise ValueError(f"{name} must be a 3-D array, got shape {x.shape}")
    if shape is not None and x.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {x.shape}")
    if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
        x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    return x


def _optional_vol(x: Any, name: str, shape: tuple[int, ...], as_bool: bool = False
                  ) -> np.ndarray | None:
    """:func:`_vol` for an optional input (``None`` stays ``None``); ``as_bool`` for masks."""
    if x is None:
        return None
    vol = _vol(x, name, shape)
    return vol.astype(bool) if as_bool else vol


def _reorient(
    arrays: Sequence[np.ndarray | None], grid2world: np.ndarray | None
) -> tuple[list[np.ndarray | None], np.ndarray, np.ndarray]:
    """Flip/permute arrays (first three axes) to the closest RAS+ orientation.

    Returns (arrays, new grid2world, zooms). Without ``grid2world`` nothing changes and the
    voxels are taken as 1 mm isotropic.
    """
    if grid2world is None:
        return list(arrays), np.eye(4), np.ones(3)
    aff = check_affine(grid2world, "grid2world", invertible=False)
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


def intensity_window(vol: Any, mask: Any = None) -> tuple[float, float]:
    """Display window ``(lo, hi)`` of ``vol``: its 0.5 and 99.5 percentiles in ``mask``.

    In the units of ``vol``. Without a mask (or with an empty one) the non-zero voxels are
    used. Compute it once per image and pass it to every figure of a series (the
    ``*_limits`` arguments of :mod:`synflow.viz.reportlets`) so that all panels show the
    image with the same brightness.
    """
    vol = _vol(vol, "vol")
    mask = _optional_vol(mask, "mask", vol.shape, as_bool=True)
    return _robust_limits(vol, mask)


def _limits_or(lims: Any, name: str, vol: np.ndarray, mask: np.ndarray | None
               ) -> tuple[float, float]:
    """``lims`` checked (two finite numbers, lo < hi), or :func:`_robust_limits` if None."""
    if lims is None:
        return _robust_limits(vol, mask)
    arr = np.asarray(lims, dtype=np.float64)
    if arr.shape != (2,) or not np.all(np.isfinite(arr)) or not arr[0] < arr[1]:
        raise ValueError(f"{name} must be two finite numbers (lo, hi) with lo < hi, "
                         f"got {lims!r}")
    return float(arr[0]), float(arr[1])


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
              clip: bool = True, rasterized: bool = False) -> None:
        """Polylines given in in-plane voxel coordinates (x = p axis, y = q axis).

        ``rasterized`` draws them as pixels (100 dpi, about the size shown) even in an SVG:
        far smaller for the thousands of segments of a deformation grid.
        """
        if not segs:
            return
        moved = [np.column_stack(self.to_panel(axis, col, sg[:, 0], sg[:, 1])) for sg in segs]
        lc = LineCollection(moved, colors=color, linewidths=lw, rasterized=rasterized)
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


_PNG_RE = re.compile(r'data:image/png;base64,([A-Za-z0-9+/=\s]+)')


def _compact_png(b64: str) -> str:
    """An embedded RGBA PNG re-encoded with as few channels as it needs (gray, RGB).

    matplotlib writes every image as 8-bit RGBA; the QC slices are gray or opaque, so this
    makes them 2-4x smaller with the same pixels.
    """
    im = PILImage.open(io.BytesIO(base64.b64decode(b64)))
    arr = np.asarray(im.convert("RGBA"))
    if np.all(arr[..., 3] == 255):
        rgb = arr[..., :3]
        gray = bool(np.all(rgb[..., 0] == rgb[..., 1]) and np.all(rgb[..., 1] == rgb[..., 2]))
        im = PILImage.fromarray(np.ascontiguousarray(rgb[..., 0]) if gray else rgb)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    out = base64.b64encode(buf.getvalue()).decode("ascii")
    return out if len(out) < len(b64) else b64


def _compact_svg(svg: str) -> str:
    """``svg`` with its embedded PNGs made smaller by :func:`_compact_png` (same pixels)."""
    return _PNG_RE.sub(lambda m: "data:image/png;base64," + _compact_png(m.group(1)), svg)


def _render_svg(fig: Figure) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", facecolor=fig.get_facecolor(), dpi=100)
    return _compact_svg(buf.getvalue())


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
    if fmt == "svg":
        return Path(atomic_write_text(out, _render_svg(fig)))
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format=fmt, facecolor=fig.get_facecolor(), dpi=150)
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
