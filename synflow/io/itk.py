"""Export SyN mappings as ITK/ANTs transforms (antsApplyTransforms, nitransforms, fMRIPrep).

Spaces and conventions
----------------------
* synflow (like DIPY and NIfTI) uses world **RAS** millimetres.  ITK uses **LPS**
  millimetres.  With ``F = diag(-1, -1, 1)``, a point/vector converts as
  ``p_lps = F p_ras`` and a matrix as ``M_lps = F M_ras F``.
* An ITK transform maps points of the **output** space (the reference / "fixed" image,
  the grid being filled) to points of the **input** space (the image being resampled).
  This is the pull convention of resampling, the same as DIPY's ``prealign`` (static
  world -> moving world) and ``transform``.
* A displacement-field transform maps ``x -> x + d(x)``, ``d`` sampled (trilinearly) on
  its own grid at the output point ``x``.
* Order.  antsApplyTransforms applies its ``-t`` arguments to the output point in the
  order given: ``-t A -t B`` maps ``x`` to ``B(A(x))`` (so the usual ``-t Warp -t
  Affine`` means ``Affine(x + d(x))``).  An ITK composite (``.h5``) stores the same
  chain **reversed** (``/TransformGroup/1`` is applied last), as antsRegistration
  writes it.  :func:`itk_transform_chain` and :func:`write_itk_transforms` use the
  ``-t`` (point) order; nitransforms' ``TransformChain`` uses the same order.

A DIPY/synflow ``DiffeomorphicMap`` ``m`` returned by SyN (``is_inverse=True``,
``m.prealign == inv(P)`` where ``P`` is the static->moving prealign given to
``optimize``) resamples as

* ``m.transform(moving)[x] = moving(P (x + b(x)))``, ``b = m.get_forward_field()`` on
  the static grid: ``-t field_b -t affine_P``;
* ``m.transform_inverse(static)[y] = static(z + f(z))``, ``z = inv(P) y``,
  ``f = m.get_backward_field()`` on the static grid: ``-t affine_inv(P) -t field_f``.

Both are exact: no field is resampled or inverted on export, and antsApplyTransforms
(trilinear field interpolation, like DIPY) reproduces DIPY to float precision away from
the field-of-view borders.  nitransforms is exact where the field is sampled at its own
nodes ("forward" onto the static grid) but interpolates fields with cubic B-splines
between nodes ("inverse"); ``write_itk_composite(..., bake=True)`` stores one field on the
reference grid instead, exact at its nodes in every tool.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import h5py
import nibabel as nib
import numpy as np
from scipy.io import savemat
from scipy.ndimage import map_coordinates

from synflow._atomic import atomic_path
from synflow.align.affine_checks import check_affine

__all__ = [
    "bake_displacement",
    "itk_transform_chain",
    "write_itk_affine",
    "write_itk_composite",
    "write_itk_displacement",
    "write_itk_transforms",
]

Direction = Literal["forward", "inverse"]
_F = np.diag([-1.0, -1.0, 1.0])
_F4 = np.diag([-1.0, -1.0, 1.0, 1.0])


def _affine(matrix: Any, argname: str) -> np.ndarray:
    return check_affine(matrix, argname, 3)


def _itk_affine_parameters(matrix_ras: np.ndarray) -> np.ndarray:
    """ITK ``AffineTransform`` parameters (LPS): 9 matrix entries row-major + translation.

    The center (fixed parameters) is 0, so the translation is the ITK offset.
    """
    lps = _F4 @ matrix_ras @ _F4
    return np.concatenate([lps[:3, :3].ravel(), lps[:3, 3]])


def write_itk_affine(matrix_ras: Any, fname: str | os.PathLike) -> Path:
    """Write a 4x4 affine as an ITK ``AffineTransform_double_3_3`` file.

    Parameters
    ----------
    matrix_ras : (4, 4) array
        Point mapping in world RAS mm from the **output/reference** space to the
        **input/moving** space (ITK's convention; e.g. DIPY's ``prealign``,
        static -> moving).
    fname : str or PathLike
        ``.txt`` or ``.tfm``: ITK text (``#Insight Transform File V1.0``);
        ``.mat``: ITK/ANTs binary (MATLAB v4 with variables
        ``AffineTransform_double_3_3`` and ``fixed``).

    Returns
    -------
    Path of the written file.  The matrix is stored in LPS: ``F M F``.
    """
    matrix = _affine(matrix_ras, "matrix_ras")
    path = Path(fname)
    params = _itk_affine_parameters(matrix)
    if path.suffix not in (".mat", ".txt", ".tfm"):
        raise ValueError(f"fname must end with .txt, .tfm or .mat, got {os.fspath(fname)!r}")
    with atomic_path(path) as tmp:
        if path.suffix == ".mat":
            savemat(
                tmp,
                {
                    "AffineTransform_double_3_3": params.reshape(12, 1),
                    "fixed": np.zeros((3, 1)),
                },
                format="4",
            )
        else:
            tmp.write_text(
                "#Insight Transform File V1.0\n"
                "#Transform 0\n"
                "Transform: AffineTransform_double_3_3\n"
                f"Parameters: {' '.join(repr(float(p)) for p in params)}\n"
                "FixedParameters: 0 0 0\n"
            )
    return path


def _field(field_mm_ras: Any, argname: str) -> np.ndarray:
    field = np.asarray(field_mm_ras)
    if field.ndim != 4 or field.shape[-1] != 3:
        raise ValueError(f"{argname} must have shape (X, Y, Z, 3), got {field.shape}")
    return field


def write_itk_displacement(
    field_mm_ras: Any, grid2world: Any, fname: str | os.PathLike
) -> Path:
    """Write a displacement field as an ITK/ANTs displacement NIfTI.

    Parameters
    ----------
    field_mm_ras : (X, Y, Z, 3) array
        Displacements in world RAS mm, sampled on the grid ``grid2world``: the field
        maps an output-space point ``x`` to ``x + d(x)`` (input space).
    grid2world : (4, 4) array
        NIfTI affine (voxel -> RAS mm) of the field's grid.
    fname : str or PathLike
        ``.nii`` or ``.nii.gz``.

    Returns
    -------
    Path of the written file: float32, shape ``(X, Y, Z, 1, 3)``, vectors in LPS mm
    (x and y negated), NIfTI intent 1007 ``vector``, affine ``grid2world``.
    """
    field = _field(field_mm_ras, "field_mm_ras")
    affine = _affine(grid2world, "grid2world")
    name = os.fspath(fname)
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        raise ValueError(f"fname must end with .nii or .nii.gz, got {name!r}")
    data = field.astype(np.float32, copy=True)
    data[..., :2] *= -1.0
    img = nib.Nifti1Image(data[:, :, :, np.newaxis, :], affine)
    img.header.set_intent("vector")
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    with atomic_path(name) as tmp:
        nib.save(img, str(tmp))
    return Path(name)


def itk_transform_chain(
    mapping: Any, direction: Direction = "forward"
) -> tuple[list[tuple], tuple[tuple[int, ...], np.ndarray], tuple[tuple[int, ...], np.ndarray]]:
    """The point chain of ``mapping.transform`` (or ``transform_inverse``).

    Parameters
    ----------
    mapping : DiffeomorphicMap
        synflow or DIPY map (duck-typed).
    direction : {"forward", "inverse"}
        ``"forward"`` describes ``mapping.transform``; ``"inverse"`` describes
        ``mapping.transform_inverse``.

    Returns
    -------
    chain : list
        Transforms in the order they are applied to an output point (antsApplyTransforms
        ``-t`` order, nitransforms ``TransformChain`` order; an ITK composite stores it
        reversed): ``("affine", M)`` with ``M`` a 4x4 RAS point mapping, or
        ``("field", d, grid2world)`` with ``d`` a (X, Y, Z, 3) float32 displacement in
        RAS mm on the grid ``grid2world`` (``x -> x + d(x)``).
    reference : (shape, grid2world)
        The output grid of the warp (where ``transform`` writes).
    moving : (shape, grid2world)
        The grid of the image being resampled.
    """
    if direction not in ("forward", "inverse"):
        raise ValueError(f"direction must be 'forward' or 'inverse', got {direction!r}")

    def g2w(a):
        return np.eye(4) if a is None else np.asarray(a, dtype=np.float64)

    def shape(s):
        return tuple(int(v) for v in np.asarray(s).ravel()[:3])

    q = g2w(mapping.prealign)
    q_inv = getattr(mapping, "prealign_inv", None)
    q_inv = np.linalg.inv(q) if q_inv is None else np.asarray(q_inv, dtype=np.float64)
    disp = g2w(mapping.disp_grid2world)
    domain = (shape(mapping.domain_shape), g2w(mapping.domain_grid2world))
    codomain = (shape(mapping.codomain_shape), g2w(mapping.codomain_grid2world))
    use_backward = (direction == "forward") == bool(mapping.is_inverse)
    for name in ("forward", "backward"):
        if getattr(mapping, name, None) is None:
            raise ValueError(f"mapping.{name} is None: the map holds no displacement field")
    if use_backward:
        # DIPY _warp_backward: out[x] = img(inv(Q) (x + b(x))), x on the codomain grid
        field = _field(mapping.backward, "mapping.backward").astype(np.float32)
        return [("field", field, disp), ("affine", q_inv)], codomain, domain
    # DIPY _warp_forward: out[x] = img(Q x + f(Q x)), x on the domain grid
    field = _field(mapping.forward, "mapping.forward").astype(np.float32)
    return [("affine", q), ("field", field, disp)], domain, codomain


def _h5_string(group: h5py.Group, name: str, value: str) -> None:
    group.create_dataset(name, data=[value.encode("ascii")], dtype=h5py.string_dtype("ascii"),
                         track_times=False)


def _pull_points(chain: list[tuple], x: np.ndarray) -> np.ndarray:
    """Map world RAS points ``x`` (..., 3) through ``chain`` as DIPY does (fields
    sampled trilinearly with zero padding, ``map_coordinates(mode='grid-constant')``)."""
    for item in chain:
        if item[0] == "affine":
            x = x @ item[1][:3, :3].T + item[1][:3, 3]
            continue
        field, w2g = item[1], np.linalg.inv(item[2])
        ijk = np.moveaxis(x @ w2g[:3, :3].T + w2g[:3, 3], -1, 0)
        x = x + np.stack(
            [
                map_coordinates(field[..., c], ijk, order=1, mode="grid-constant")
                for c in range(3)
            ],
            axis=-1,
        )
    return x


def bake_displacement(
    mapping: Any, direction: Direction = "forward"
) -> tuple[np.ndarray, np.ndarray]:
    """The whole pull chain (prealign included) as one displacement on the output grid.

    Returns ``(field, grid2world)``: ``field`` (X, Y, Z, 3) float32 in RAS mm on the
    reference grid of ``direction`` (static grid for ``"forward"``, moving grid for
    ``"inverse"`` on a SyN result), such that ``x + field(x)`` is exactly where
    ``mapping.transform`` (or ``transform_inverse``) samples at each grid node ``x``.
    """
    chain, (shape, grid2world), _ = itk_transform_chain(mapping, direction)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    x = ijk @ grid2world[:3, :3].T + grid2world[:3, 3]
    return (_pull_points(chain, x) - x).astype(np.float32), grid2world


def write_itk_composite(
    mapping: Any,
    fname: str | os.PathLike,
    direction: Direction = "forward",
    bake: bool = False,
) -> Path:
    """Write ``mapping`` (prealign included) as one ANTs/ITK composite ``.h5`` file.

    Parameters
    ----------
    mapping : DiffeomorphicMap
        synflow or DIPY map.
    fname : str or PathLike
        Output ``.h5`` path, e.g. BIDS ``..._from-dwiref_to-<space>_mode-image_xfm.h5``.
    direction : {"forward", "inverse"}
        ``"forward"`` reproduces ``mapping.transform``: resample an image of the moving
        (domain) space onto the static (codomain) grid; use the static image as
        reference.  ``"inverse"`` reproduces ``mapping.transform_inverse``: resample a
        static-space image onto the moving grid; use the moving image as reference.
    bake : bool
        False (default): store the affine and the field unchanged (exact composition;
        ITK/ANTs then reproduce DIPY to float precision on any reference grid).
        True: store one displacement field on the reference grid (see
        :func:`bake_displacement`), exact at its nodes in any tool.  Use it for
        ``"inverse"`` when the consumer is nitransforms, which interpolates fields
        with cubic B-splines between nodes (DIPY and ITK are trilinear).

    Returns
    -------
    Path of the file.  Layout (as ITK's HDF5TransformIO writes it):
    ``/TransformGroup/0`` ``CompositeTransform_double_3_3``, then ``/TransformGroup/1..``
    in ITK queue order, the last applied first (for ``"forward"`` on a SyN result: the
    ``AffineTransform_double_3_3`` prealign, then the
    ``DisplacementFieldTransform_float_3_3``, as antsRegistration writes), each with
    ``TransformType``, ``TransformFixedParameters`` (float64) and
    ``TransformParameters``.  All values in LPS mm.
    """
    path = Path(fname)
    if path.suffix != ".h5":
        raise ValueError(f"fname must end with .h5, got {os.fspath(fname)!r}")
    chain, (_, ref_g2w), _ = itk_transform_chain(mapping, direction)
    if bake:
        chain = [("field", bake_displacement(mapping, direction)[0], ref_g2w)]
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        group = h5.create_group("TransformGroup")
        _h5_string(group.create_group("0"), "TransformType", "CompositeTransform_double_3_3")
        # ITK queue order: the last transform is applied first to the point
        for k, item in enumerate(reversed(chain), start=1):
            sub = group.create_group(str(k))
            if item[0] == "affine":
                ttype = "AffineTransform_double_3_3"
                fixed = np.zeros(3)
                params = _itk_affine_parameters(item[1])
            else:
                field, grid2world = item[1], item[2]
                lin = grid2world[:3, :3]
                zooms = np.linalg.norm(lin, axis=0)
                ttype = "DisplacementFieldTransform_float_3_3"
                fixed = np.concatenate(
                    [
                        np.asarray(field.shape[:3], dtype=np.float64),
                        _F @ grid2world[:3, 3],  # origin, LPS
                        zooms,  # spacing
                        (_F @ (lin / zooms)).ravel(),  # direction cosines, LPS, row-major
                    ]
                )
                # vector components fastest, then i, j, k (ITK's buffer order)
                lps = field * np.array([-1.0, -1.0, 1.0], dtype=np.float32)
                params = np.moveaxis(lps, -1, 0).ravel(order="F")
            _h5_string(sub, "TransformType", ttype)
            sub.create_dataset("TransformFixedParameters", data=fixed.astype(np.float64),
                              track_times=False)
            sub.create_dataset("TransformParameters", data=params, track_times=False)
    return path


def write_itk_transforms(
    mapping: Any, out_dir_or_prefix: str | os.PathLike, direction: Direction = "forward"
) -> list[Path]:
    """Write ``mapping`` as a separate ITK affine ``.mat`` + displacement ``.nii.gz`` pair.

    Parameters
    ----------
    mapping : DiffeomorphicMap
        synflow or DIPY map.
    out_dir_or_prefix : str or PathLike
        An existing directory, or a filename prefix (``"out/sub-01_"``).
    direction : {"forward", "inverse"}
        As in :func:`write_itk_composite`.

    Returns
    -------
    list of Path
        The files **in the order to pass them to antsApplyTransforms** (``-t`` each,
        same order in ``ants.apply_transforms(transformlist=...)``).  Files are
        ``<prefix>Affine.mat`` / ``<prefix>Warp.nii.gz`` for ``"forward"`` and
        ``<prefix>InverseAffine.mat`` / ``<prefix>InverseWarp.nii.gz`` for
        ``"inverse"``.  For a SyN result:

        * forward: ``antsApplyTransforms -i moving -r static -t Warp.nii.gz -t Affine.mat``;
        * inverse: ``antsApplyTransforms -i static -r moving -t InverseAffine.mat
          -t InverseWarp.nii.gz``.

        With antspyx pass ``whichtoinvert=[False, False]``: for a ``[.mat, warp]`` list
        it otherwise inverts the matrix.
    """
    chain, _, _ = itk_transform_chain(mapping, direction)
    base = os.fspath(out_dir_or_prefix)
    prefix = os.path.join(base, "") if os.path.isdir(base) else base
    tag = "" if direction == "forward" else "Inverse"
    out = []
    for item in chain:
        if item[0] == "affine":
            out.append(write_itk_affine(item[1], f"{prefix}{tag}Affine.mat"))
        else:
            out.append(write_itk_displacement(item[1], item[2], f"{prefix}{tag}Warp.nii.gz"))
    return out
