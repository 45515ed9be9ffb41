"""Reading and writing SyN mappings (DIPY's ``write_mapping`` / ``read_mapping``).

On-disk layout (identical to DIPY 1.12, so either library reads the other's files):

* a NIfTI image of shape ``(X, Y, Z, 3, 2)``, float32, on the displacement grid:
  ``[..., 0]`` is the raw ``mapping.forward`` field and ``[..., 1]`` the raw
  ``mapping.backward`` field, both in world (RAS) millimetres;
* the NIfTI affine is ``mapping.codomain_world2grid``, i.e. the **inverse** of the
  static (codomain) grid2world.  This is DIPY's convention, kept for compatibility;
  it means other tools (viewers, ANTs, nitransforms) misplace the grid.  Use
  :mod:`synflow.io.itk` to export a mapping for other tools.

synflow additionally stores a JSON header extension (NIfTI ``ecode`` 6, "comment",
ignored by DIPY) holding everything the map needs: the displacement, domain and
codomain grids (float64), ``prealign``, ``is_inverse`` and the synflow version.
``read_mapping(fname)`` alone therefore rebuilds a map that warps exactly like the
one written (``transform`` and ``transform_inverse``), which DIPY cannot do.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np

from synflow._atomic import atomic_path

if TYPE_CHECKING:
    from synflow.align.imwarp import DiffeomorphicMap

__all__ = ["read_mapping", "write_mapping"]

#: Key of the JSON object stored in the NIfTI header extension.
_META_KEY = "synflow_mapping"
_META_VERSION = 1
_ECODE = 6  # NIFTI_ECODE_COMMENT: free text, ignored by DIPY and most readers
# Tolerance (mm, or unitless for the linear part) when comparing a user-provided grid
# or prealign with the stored one; NIfTI headers store affines in float32.
_ATOL = 1e-4

PathOrImage = str | os.PathLike | nib.Nifti1Image


def _as_matrix(a: Any, argname: str = "prealign") -> np.ndarray | None:
    if a is None:
        return None
    m = np.array(a, dtype=np.float64)
    if m.shape != (4, 4):
        raise ValueError(f"{argname} must be a 4x4 matrix, got shape {m.shape}")
    return m


def _as_shape(s: Any) -> list[int] | None:
    return None if s is None else [int(v) for v in np.asarray(s).ravel()[:3]]


def _stored_matrix(meta: dict, key: str) -> np.ndarray | None:
    return _as_matrix(meta.get(key), f"disp: stored {key}")


def _mapping_metadata(mapping: Any) -> dict:
    """The JSON-serialisable description of ``mapping`` (grids, prealign, direction)."""
    from synflow import __version__

    def mat(a):
        return None if a is None else np.asarray(a, dtype=np.float64).tolist()  # exact

    return {
        "format": "synflow DiffeomorphicMap",
        "format_version": _META_VERSION,
        "synflow_version": __version__,
        "layout": "data (X,Y,Z,3,2): [...,0] = forward, [...,1] = backward, world RAS mm; "
        "NIfTI affine = codomain_world2grid (DIPY convention)",
        "dim": int(getattr(mapping, "dim", 3)),
        "is_inverse": bool(mapping.is_inverse),
        "disp_shape": _as_shape(mapping.disp_shape),
        "disp_grid2world": mat(mapping.disp_grid2world),
        "domain_shape": _as_shape(mapping.domain_shape),
        "domain_grid2world": mat(mapping.domain_grid2world),
        "codomain_shape": _as_shape(mapping.codomain_shape),
        "codomain_grid2world": mat(mapping.codomain_grid2world),
        "prealign": mat(mapping.prealign),
    }


def write_mapping(mapping: Any, fname: str | os.PathLike) -> None:
    """Write a SyN mapping to a NIfTI file, in DIPY's layout plus synflow metadata.

    Parameters
    ----------
    mapping : DiffeomorphicMap
        A synflow or DIPY ``DiffeomorphicMap`` (duck-typed: ``forward``,
        ``backward``, ``disp_shape``, grids, ``prealign``, ``is_inverse``).
    fname : str or PathLike
        Output path ending in ``.nii`` or ``.nii.gz``.

    Notes
    -----
    The data has shape ``(X, Y, Z, 3, 2)`` on the displacement grid:
    ``data[i, j, k, :, 0]`` is the raw ``mapping.forward`` field and
    ``data[i, j, k, :, 1]`` the raw ``mapping.backward`` field, in world RAS mm.
    The NIfTI affine is ``mapping.codomain_world2grid`` (the *inverse* of the static
    affine), exactly as DIPY writes it, so ``dipy.align.read_mapping`` reads the file
    with its usual meaning.  A JSON header extension (ecode 6) stores the grids,
    ``prealign`` and ``is_inverse`` so that :func:`read_mapping` needs nothing else.
    """
    fname = os.fspath(fname)
    if not (fname.endswith(".nii") or fname.endswith(".nii.gz")):
        raise ValueError(f"fname must end with '.nii' or '.nii.gz', got {fname!r}")
    shape = tuple(_as_shape(mapping.disp_shape))
    fields = []
    for name in ("forward", "backward"):
        field = getattr(mapping, name, None)
        if field is None or np.shape(field) != shape + (3,):
            raise ValueError(
                f"mapping.{name} must be an array of shape {shape + (3,)} (disp_shape + (3,)), "
                f"got {None if field is None else np.shape(field)}"
            )
        fields.append(np.asarray(field, dtype=np.float32))
    data = np.stack(fields, axis=-1)  # (X, Y, Z, 3, 2)

    if mapping.codomain_world2grid is not None:
        affine = np.asarray(mapping.codomain_world2grid, dtype=np.float64)
    elif mapping.disp_grid2world is not None:
        affine = np.linalg.inv(mapping.disp_grid2world)
    else:
        affine = np.eye(4)
    img = nib.Nifti1Image(data, affine)
    meta = json.dumps({_META_KEY: _mapping_metadata(mapping)}, indent=1)
    img.header.extensions.append(nib.nifti1.Nifti1Extension(_ECODE, meta.encode("utf-8")))
    with atomic_path(fname) as tmp:
        nib.save(img, str(tmp))


def _read_metadata(img: nib.Nifti1Image) -> dict | None:
    """The synflow metadata stored in ``img``'s header extensions, or None."""
    for ext in getattr(img.header, "extensions", ()):
        if ext.get_code() != _ECODE:
            continue
        raw = ext.get_content()
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        text = text.rstrip("\x00 \n\t")
        if _META_KEY not in text:
            continue
        try:
            return json.loads(text)[_META_KEY]
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"disp: corrupt synflow mapping metadata ({err})") from err
    return None


def _load_image(img: PathOrImage, argname: str) -> nib.spatialimages.SpatialImage:
    if isinstance(img, (str, os.PathLike)):
        path = os.fspath(img)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{argname}: no such file {path!r}")
        return nib.load(path)
    if hasattr(img, "affine") and hasattr(img, "shape"):
        return img
    raise ValueError(
        f"{argname} must be a path or a nibabel image, got {type(img).__name__}"
    )


def _on_grid(img, shape, grid2world) -> bool:
    """Whether image ``img`` (its first three axes) lies on the grid ``(shape, grid2world)``."""
    gaff = np.eye(4) if grid2world is None else np.asarray(grid2world)
    if shape is not None and tuple(img.shape[:3]) != tuple(shape):
        return False
    return bool(np.allclose(img.affine, gaff, rtol=0, atol=_ATOL))


def _grid_text(shape, grid2world) -> str:
    gaff = np.eye(4) if grid2world is None else np.asarray(grid2world)
    return f"shape {None if shape is None else tuple(shape)}, affine\n{np.round(gaff, 4)}"


def _check_images(meta: dict, domain_img: PathOrImage | None,
                  codomain_img: PathOrImage | None) -> None:
    """Check the given images against the stored grids, in either order.

    DIPY's documented order is ``(domain_img=moving, codomain_img=static)``; images
    given the other way round (as DIPY's own 3-D SyN tutorial does) are recognised by
    their grids, with one UserWarning.  A 4-D image is matched by its first three axes.
    """
    grids = {key: (meta.get(f"{key}_shape"), meta.get(f"{key}_grid2world"))
             for key in ("domain", "codomain")}
    given = {key: _load_image(arg, f"{key}_img")
             for key, arg in (("domain", domain_img), ("codomain", codomain_img))
             if arg is not None}
    if not given:
        return
    if all(_on_grid(img, *grids[key]) for key, img in given.items()):
        return
    other = {"domain": "codomain", "codomain": "domain"}
    if all(_on_grid(img, *grids[other[key]]) for key, img in given.items()):
        warnings.warn(
            "read_mapping: the images are in the order (static, moving); DIPY documents "
            "(domain_img=moving, codomain_img=static). They were recognised by their grids "
            "and the stored map is returned unchanged.",
            UserWarning, stacklevel=3,
        )
        return
    got = "\n".join(f"{key}_img: {_grid_text(img.shape[:3], img.affine)}"
                    for key, img in given.items())
    raise ValueError(
        "domain_img / codomain_img lie on neither grid stored in the mapping file "
        "(in either order). Stored domain (moving) grid: "
        f"{_grid_text(*grids['domain'])}\nstored codomain (static) grid: "
        f"{_grid_text(*grids['codomain'])}\ngiven:\n{got}"
    )


def _check_prealign(prealign, stored) -> None:
    given = np.eye(4) if prealign is None else _as_matrix(prealign)
    ref = np.eye(4) if stored is None else np.asarray(stored)
    if np.allclose(given, ref, rtol=0, atol=_ATOL):
        return
    hint = ""
    if np.allclose(given, np.linalg.inv(ref), rtol=0, atol=_ATOL):
        hint = (
            " You passed its inverse: DIPY's read_mapping(prealign=...) expects the map's "
            "`.prealign` attribute, which is the INVERSE of the matrix given to optimize()."
        )
    raise ValueError(
        f"prealign disagrees with the prealign stored in the mapping file.{hint} "
        f"Stored:\n{ref}\ngiven:\n{given}\n(omit prealign to use the stored one)"
    )


def read_mapping(
    disp: PathOrImage,
    domain_img: PathOrImage | None = None,
    codomain_img: PathOrImage | None = None,
    prealign: np.ndarray | None = None,
) -> DiffeomorphicMap:
    """Read a SyN mapping written by :func:`write_mapping` or by DIPY.

    Parameters
    ----------
    disp : str, PathLike or Nifti1Image
        The mapping file (or image), data of shape ``(X, Y, Z, 3, 2)``
        (see :func:`write_mapping`).
    domain_img : str, PathLike or image, optional
        Image on the **moving** (domain) grid.  Only its shape and affine are used
        (of a 4-D image, the first three axes).
    codomain_img : str, PathLike or image, optional
        Image on the **static** (codomain) grid.  Only its shape and affine are used.
    prealign : (4, 4) array, optional
        DIPY's meaning: the map's ``.prealign`` attribute.  **Trap:** for a map
        returned by ``SymmetricDiffeomorphicRegistration.optimize(..., prealign=P)``
        this is ``inv(P)``, the INVERSE of the static-world -> moving-world matrix
        given to ``optimize``.

    Returns
    -------
    synflow.align.imwarp.DiffeomorphicMap

    Notes
    -----
    * **File written by synflow** (JSON metadata present): every grid, ``prealign``
      and ``is_inverse`` come from the file, so ``read_mapping(fname)`` alone returns a
      map that warps exactly like the one written.  Arguments that are given are
      checked against the stored values.  The two images are recognised by their
      grids in either order: ``read_mapping(f, static, moving)`` (as DIPY's 3-D SyN
      tutorial calls it) returns the same map, with one ``UserWarning``.  Images on
      neither stored grid, or a ``prealign`` that disagrees (including the trap
      above), raise ``ValueError``.
    * **File without metadata** (written by DIPY): DIPY's meaning.  ``domain_img`` and
      ``codomain_img`` are required; ``disp_grid2world`` is the inverse of the file's
      affine, ``is_inverse`` is forced to True (as DIPY does; a map saved with
      ``is_inverse=False`` comes back flipped) and ``prealign`` must be passed again.
    * Unlike DIPY 1.12, a ``Nifti1Image`` is accepted for ``disp``.
    """
    from synflow.align.imwarp import DiffeomorphicMap  # noqa: F811 (lazy import)

    img = _load_image(disp, "disp")
    shape = tuple(img.shape)
    if len(shape) != 5 or shape[3:] != (3, 2):
        raise ValueError(
            f"disp must hold a (X, Y, Z, 3, 2) mapping (forward and backward fields), "
            f"got shape {shape}"
        )
    data = np.asanyarray(img.dataobj).astype(np.float32, copy=False)
    meta = _read_metadata(img)

    if meta is None:
        if domain_img is None or codomain_img is None:
            raise ValueError(
                "disp has no synflow metadata (e.g. written by DIPY): pass domain_img "
                "(moving grid) and codomain_img (static grid), and prealign (the map's "
                "`.prealign`, i.e. the inverse of the matrix given to optimize) if any"
            )
        dom = _load_image(domain_img, "domain_img")
        cod = _load_image(codomain_img, "codomain_img")
        mapping = DiffeomorphicMap(
            3,
            shape[:3],
            disp_grid2world=np.linalg.inv(img.affine),
            domain_shape=dom.shape[:3],
            domain_grid2world=np.asarray(dom.affine, dtype=np.float64),
            codomain_shape=cod.shape[:3],
            codomain_grid2world=np.asarray(cod.affine, dtype=np.float64),
            prealign=_as_matrix(prealign),
        )
        is_inverse = True
    else:
        if meta.get("disp_shape") is not None and tuple(meta["disp_shape"]) != shape[:3]:
            raise ValueError(
                f"disp: data grid {shape[:3]} disagrees with the stored disp_shape "
                f"{tuple(meta['disp_shape'])}"
            )
        _check_images(meta, domain_img, codomain_img)
        if prealign is not None:
            _check_prealign(prealign, meta.get("prealign"))
        mapping = DiffeomorphicMap(
            int(meta.get("dim", 3)),
            shape[:3],
            disp_grid2world=_stored_matrix(meta, "disp_grid2world"),
            domain_shape=meta.get("domain_shape"),
            domain_grid2world=_stored_matrix(meta, "domain_grid2world"),
            codomain_shape=meta.get("codomain_shape"),
            codomain_grid2world=_stored_matrix(meta, "codomain_grid2world"),
            prealign=_stored_matrix(meta, "prealign"),
        )
        is_inverse = bool(meta.get("is_inverse", True))

    mapping.forward = np.ascontiguousarray(data[..., 0])
    mapping.backward = np.ascontiguousarray(data[..., 1])
    mapping.is_inverse = is_inverse
    return mapping
