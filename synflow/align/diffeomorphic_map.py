"""DIPY's ``DiffeomorphicMap``: a displacement-field transformation between two grids.

Split out of :mod:`synflow.align.imwarp` (which re-exports every name here), so that
the map and the optimiser each stay a readable size.

Layout and units (as in DIPY): public fields are ``disp_shape + (dim,)``, float32, in mm
(world, RAS); matrices are ``(dim + 1, dim + 1)`` homogeneous, ``None`` meaning identity.
Internally the kernels of :mod:`synflow.align.vector_fields` work component first, in voxels.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import numpy as np

from synflow._parallel import run_tasks
from synflow.align import vector_fields as vf
from synflow.align.affine_checks import check_affine

__all__ = ["DiffeomorphicMap", "get_direction_and_spacings", "mult_aff"]


def mult_aff(A, B):
    """``A @ B`` with ``None`` meaning the identity (DIPY's ``mult_aff``).

    Returns ``B`` if ``A`` is None, ``A`` if ``B`` is None (so ``None`` if both are).
    """
    if A is None:
        return B
    if B is None:
        return A
    return np.asarray(A).dot(B)


def get_direction_and_spacings(affine, dim: int):
    """Rotational part and voxel sizes of a voxel -> world matrix (DIPY's function).

    Returns ``(direction, spacings)``: ``direction`` is ``A @ diag(1 / spacings)`` for the
    upper-left ``dim x dim`` block ``A`` of ``affine``, ``spacings`` the column norms of
    ``A`` (mm).  ``affine=None`` gives ``(eye(dim), ones(dim))``.  DIPY reads the norms
    back from a NIfTI header, i.e. rounded to float32; synflow keeps them in float64.
    """
    if affine is None:
        return np.eye(dim), np.ones(dim)
    affine = check_affine(affine, "affine", dim=None, invertible=False)
    dim = affine.shape[1] - 1
    lin = affine[:dim, :dim]
    spacings = np.sqrt((lin ** 2).sum(axis=0))
    if np.any(spacings == 0):
        raise ValueError(f"affine has a zero column (voxel size 0): {affine.tolist()}")
    return lin.dot(np.diag(1.0 / spacings)), spacings


def _opt(matrix, dim: int, name: str) -> np.ndarray | None:
    """A validated matrix, or None for None / 'identity'."""
    return check_affine(matrix, name, dim, allow_none=True)


def _inv(matrix: np.ndarray | None) -> np.ndarray | None:
    return None if matrix is None else np.linalg.inv(matrix)


def _or_eye(matrix: np.ndarray | None, dim: int) -> np.ndarray:
    return np.eye(dim + 1) if matrix is None else matrix


def _linear(m: np.ndarray) -> np.ndarray:
    d = m.shape[0] - 1
    return m[:d, :d]


def _voxel_to_world_field(field: np.ndarray, grid2world: np.ndarray) -> np.ndarray:
    """Component-first voxel displacement -> DIPY layout (grid + (dim,)) in mm."""
    lin = _linear(grid2world).astype(np.float32)
    dim = field.shape[0]
    out = np.empty(field.shape[1:] + (dim,), dtype=np.float32)
    for r in range(dim):
        acc = lin[r, 0] * field[0]
        for c in range(1, dim):
            acc += lin[r, c] * field[c]
        out[..., r] = acc
    return out


def _world_to_voxel_field(field: np.ndarray, grid2world: np.ndarray) -> np.ndarray:
    """DIPY layout field in mm -> component-first voxel units of the grid."""
    lin_inv = np.linalg.inv(_linear(grid2world)).astype(np.float32)
    dim = field.shape[-1]
    out = np.empty((dim,) + field.shape[:-1], dtype=np.float32)
    for r in range(dim):
        acc = lin_inv[r, 0] * field[..., 0]
        for c in range(1, dim):
            acc += lin_inv[r, c] * field[..., c]
        out[r] = acc
    return out


# --------------------------------------------------------------------------- the map
class DiffeomorphicMap:
    """A diffeomorphic transformation between two grids, DIPY's ``DiffeomorphicMap``.

    Both displacement fields (``forward``, ``backward``; ``disp_shape + (dim,)``, float32,
    mm) are sampled on the displacement grid ``(disp_shape, disp_grid2world)``.
    ``prealign`` (domain-world -> codomain-world... in DIPY's sense) is applied to input
    points before the displacement.  See :meth:`transform` for the exact formulas.

    Parameters mirror DIPY: ``dim``, ``disp_shape``, ``disp_grid2world``, ``domain_shape``,
    ``domain_grid2world``, ``codomain_shape``, ``codomain_grid2world``, ``prealign``.
    """

    def __init__(self, dim: int, disp_shape: Sequence[int] | np.ndarray | None,
                 disp_grid2world: Sequence[Sequence[float]] | np.ndarray | None = None,
                 domain_shape: Sequence[int] | np.ndarray | None = None,
                 domain_grid2world: Sequence[Sequence[float]] | np.ndarray | None = None,
                 codomain_shape: Sequence[int] | np.ndarray | None = None,
                 codomain_grid2world: Sequence[Sequence[float]] | np.ndarray | None = None,
                 prealign: Sequence[Sequence[float]] | np.ndarray | None = None):
        if dim not in (2, 3):
            raise ValueError(f"dim must be 2 or 3, got {dim!r}")
        if disp_shape is None:
            raise ValueError("disp_shape (the displacement grid's shape) cannot be None")
        self.dim = dim
        self.disp_shape = np.asarray(disp_shape, dtype=np.int32)
        # DIPY's defaults: the domain grid is the displacement grid's shape, the codomain
        # grid the domain's shape; a missing grid2world (or prealign) is the identity.
        self.domain_shape = self.disp_shape if domain_shape is None else np.asarray(
            domain_shape, dtype=np.int32)
        self.codomain_shape = self.domain_shape if codomain_shape is None else np.asarray(
            codomain_shape, dtype=np.int32)
        self.disp_grid2world = _opt(disp_grid2world, dim, "disp_grid2world")
        self.disp_world2grid = _inv(self.disp_grid2world)
        self.domain_grid2world = _opt(domain_grid2world, dim, "domain_grid2world")
        self.domain_world2grid = _inv(self.domain_grid2world)
        self.codomain_grid2world = _opt(codomain_grid2world, dim, "codomain_grid2world")
        self.codomain_world2grid = _inv(self.codomain_grid2world)
        self.prealign = _opt(prealign, dim, "prealign")
        self.prealign_inv = _inv(self.prealign)
        self.is_inverse = False
        self.forward: np.ndarray | None = None
        self.backward: np.ndarray | None = None

    @staticmethod
    def interpret_matrix(obj):
        """DIPY's rule: None and 'identity' give None, an ndarray is returned as is."""
        if obj is None or isinstance(obj, np.ndarray):
            return obj
        if isinstance(obj, str) and obj == "identity":
            return None
        raise ValueError(f"Invalid matrix: expected None, 'identity' or an array, got {obj!r}")

    def __repr__(self) -> str:
        shape = None if self.disp_shape is None else tuple(int(s) for s in self.disp_shape)
        return (f"DiffeomorphicMap(dim={self.dim}, disp_shape={shape}, "
                f"is_inverse={self.is_inverse})")

    # -- fields
    def get_forward_field(self) -> np.ndarray:
        """The field :meth:`transform` uses (``backward`` when ``is_inverse``), mm."""
        return self.backward if self.is_inverse else self.forward

    def get_backward_field(self) -> np.ndarray:
        """The field :meth:`transform_inverse` uses, mm."""
        return self.forward if self.is_inverse else self.backward

    def allocate(self) -> None:
        """Set both fields to zero (the identity transformation)."""
        shape = tuple(int(s) for s in self.disp_shape) + (self.dim,)
        self.forward = np.zeros(shape, dtype=np.float32)
        self.backward = np.zeros(shape, dtype=np.float32)

    def shallow_copy(self) -> DiffeomorphicMap:
        new = self._same_geometry()
        new.forward, new.backward, new.is_inverse = self.forward, self.backward, self.is_inverse
        return new

    def inverse(self) -> DiffeomorphicMap:
        """The inverse map; arrays are shared, not copied.

        Unlike DIPY 1.12 (which always sets ``is_inverse=True``), the flag is flipped, so
        ``m.inverse().inverse()`` warps like ``m``.
        """
        inv = self.shallow_copy()
        inv.is_inverse = not self.is_inverse
        return inv

    def _same_geometry(self) -> DiffeomorphicMap:
        return DiffeomorphicMap(self.dim, self.disp_shape, self.disp_grid2world,
                                self.domain_shape, self.domain_grid2world,
                                self.codomain_shape, self.codomain_grid2world, self.prealign)

    # -- composition and simplification (DIPY's semantics)
    def warp_endomorphism(self, phi: DiffeomorphicMap) -> DiffeomorphicMap:
        """``C = phi o self`` (and ``C^-1 = self^-1 o phi^-1``), DIPY's composition.

        ``phi`` must be an endomorphism on this map's displacement grid (same shape and
        ``disp_grid2world``, no prealign).  The result is a shallow copy of ``self`` with
        ``forward = compose(self.get_forward_field(), phi.get_forward_field())`` and
        ``backward = compose(phi.get_backward_field(), self.get_backward_field())``, where
        ``compose(d1, d2)(x) = d1(x) + d2(x + d1(x))`` (mm, ``d2`` sampled trilinearly) and,
        as in DIPY, a point whose ``x + d1(x)`` is not strictly inside the grid gets a
        zero vector.  The ``is_inverse`` flag of ``self`` is kept (DIPY's behaviour).
        """
        fields = (self.get_forward_field(), phi.get_forward_field(),
                  self.get_backward_field(), phi.get_backward_field())
        if any(f is None for f in fields):
            raise ValueError("warp_endomorphism needs both fields of self and of phi")
        d1, d2, d1_inv, d2_inv = (np.moveaxis(np.asarray(f, dtype=np.float32), -1, 0)
                                  for f in fields)
        premult = self.disp_world2grid
        forward, backward = run_tasks([
            partial(vf.compose_inside, d1, d2, premult),
            partial(vf.compose_inside, d2_inv, d1_inv, premult),
        ])
        composition = self.shallow_copy()
        composition.forward = np.ascontiguousarray(np.moveaxis(forward, 0, -1))
        composition.backward = np.ascontiguousarray(np.moveaxis(backward, 0, -1))
        return composition

    def get_simplified_transform(self) -> DiffeomorphicMap:
        """An equivalent map whose matrices are all the identity (DIPY's method).

        The prealign, ``disp/domain/codomain_grid2world`` are folded into the fields, which
        become voxel displacements between the domain and codomain grids: the new
        ``forward`` (shape ``domain_shape + (dim,)``) is
        ``Cinv (forward(Rinv P D i) + P D i) - i`` and the new ``backward`` (shape
        ``codomain_shape + (dim,)``) is ``Dinv Pinv (backward(Rinv C j) + C j) - j``
        (``D``, ``C``, ``R``: domain, codomain, displacement grid2world; ``P``: prealign).
        Fields are sampled trilinearly with DIPY's zero padding.  As in DIPY, the new
        map keeps ``disp_shape`` and ``is_inverse`` is False.
        """
        if self.forward is None or self.backward is None:
            raise ValueError("get_simplified_transform needs both fields (forward, backward)")
        D, C, P = self.domain_grid2world, self.codomain_grid2world, self.prealign
        Rinv, Dinv, Cinv = self.disp_world2grid, self.domain_world2grid, self.codomain_world2grid
        forward, backward = run_tasks([
            partial(_simplified_field, self.forward, mult_aff(Rinv, mult_aff(P, D)),
                    mult_aff(Cinv, mult_aff(P, D)), Cinv, self.domain_shape),
            partial(_simplified_field, self.backward, mult_aff(Rinv, C),
                    mult_aff(Dinv, mult_aff(self.prealign_inv, C)),
                    mult_aff(Dinv, self.prealign_inv), self.codomain_shape),
        ])
        simplified = DiffeomorphicMap(self.dim, self.disp_shape, None, self.domain_shape, None,
                                      self.codomain_shape, None, None)
        simplified.forward, simplified.backward = forward, backward
        return simplified

    # -- warping
    @staticmethod
    def _prepare_image(image: np.ndarray, interpolation: str) -> tuple[np.ndarray, int]:
        if interpolation == "linear":
            return np.asarray(image, dtype=np.float32), 1
        if interpolation == "nearest":
            image = np.asarray(image)
            if image.dtype == np.float64:
                image = image.astype(np.float32)
            elif image.dtype == np.int64:
                image = image.astype(np.int32)
            return image, 0
        raise ValueError(f"interpolation must be 'linear' or 'nearest', got {interpolation!r}")

    def _sample_disp(self, field: np.ndarray, matrix: np.ndarray,
                     out_shape: tuple[int, ...]) -> np.ndarray:
        """Displacement (mm, component first) at ``matrix @ i`` (disp-grid voxel coords)."""
        disp_shape = tuple(int(s) for s in self.disp_shape)
        if out_shape == disp_shape and np.allclose(matrix, np.eye(self.dim + 1), atol=1e-9):
            return np.moveaxis(field, -1, 0)
        coords = vf.affine_points(matrix, out_shape, dtype=np.float64)
        comps = np.moveaxis(field, -1, 0)
        return np.stack([vf.sample_image(comps[c], coords) for c in range(self.dim)])

    def _warp(self, image, field, interpolation, image_world2grid, out_shape, out_grid2world,
              pre: np.ndarray, post: np.ndarray):
        """out[i] = image(W @ post @ (field(Dinv @ pre @ S @ i) + pre @ S @ i))."""
        if field is None:
            raise ValueError("this DiffeomorphicMap has no displacement fields yet")
        image, order = self._prepare_image(image, interpolation)
        if image.ndim != self.dim:
            raise ValueError(f"image must be {self.dim}-D, got shape {image.shape}")
        out_shape = tuple(int(s) for s in out_shape)
        W = _or_eye(_opt(image_world2grid, self.dim, "image_world2grid"), self.dim)
        S = _or_eye(_opt(out_grid2world, self.dim, "out_grid2world"), self.dim)
        Dinv = np.eye(self.dim + 1) if self.disp_world2grid is None else self.disp_world2grid
        disp = self._sample_disp(field, Dinv @ pre @ S, out_shape)
        # image coordinates: W post (pre S i) + W post_lin disp
        to_img = W @ post
        # float64 coordinates: grids with large offsets lose ~1e-5 voxel in float32.
        coords = vf.affine_points(to_img @ pre @ S, out_shape, dtype=np.float64)
        lin = _linear(to_img)
        for r in range(self.dim):
            for c in range(self.dim):
                if lin[r, c] != 0.0:
                    coords[r] += lin[r, c] * disp[c]
        return vf.sample_image(image, coords, order=order)

    def _warp_forward(self, image, interpolation="linear", image_world2grid=None,
                      out_shape=None, out_grid2world=None):
        """warped[i] = image[W @ (forward[Dinv @ P @ S @ i] + P @ S @ i)] (DIPY's formula)."""
        if image_world2grid is None:
            image_world2grid = self.codomain_world2grid
        if out_shape is None:
            if self.domain_shape is None:
                raise ValueError("Unable to infer sampling info. Provide a valid out_shape.")
            out_shape = self.domain_shape
        if out_grid2world is None:
            out_grid2world = self.domain_grid2world
        P = np.eye(self.dim + 1) if self.prealign is None else self.prealign
        return self._warp(image, self.forward, interpolation, image_world2grid, out_shape,
                          out_grid2world, pre=P, post=np.eye(self.dim + 1))

    def _warp_backward(self, image, interpolation="linear", image_world2grid=None,
                       out_shape=None, out_grid2world=None):
        """warped[i] = image[W @ Pinv @ (backward[Dinv @ S @ i] + S @ i)] (DIPY's formula)."""
        if image_world2grid is None:
            image_world2grid = self.domain_world2grid
        if out_shape is None:
            if self.codomain_shape is None:
                raise ValueError("Unknown sampling info. Provide a valid out_shape.")
            out_shape = self.codomain_shape
        if out_grid2world is None:
            out_grid2world = self.codomain_grid2world
        Pinv = np.eye(self.dim + 1) if self.prealign_inv is None else self.prealign_inv
        return self._warp(image, self.backward, interpolation, image_world2grid, out_shape,
                          out_grid2world, pre=np.eye(self.dim + 1), post=Pinv)

    def transform(self, image, interpolation: str = "linear", image_world2grid=None,
                  out_shape=None, out_grid2world=None) -> np.ndarray:
        """Warp ``image`` in the forward direction.

        For a map returned by :meth:`SymmetricDiffeomorphicRegistration.optimize`, this
        resamples a *moving*-grid image onto the *static* grid.  ``interpolation`` is
        'linear' (trilinear, result float32) or 'nearest' (keeps the dtype; float64 ->
        float32, int64 -> int32).  Points outside the input grid give 0.
        """
        if out_shape is not None:
            out_shape = np.asarray(out_shape, dtype=np.int32)
        fn = self._warp_backward if self.is_inverse else self._warp_forward
        return np.asarray(fn(image, interpolation, image_world2grid, out_shape, out_grid2world))

    def transform_inverse(self, image, interpolation: str = "linear", image_world2grid=None,
                          out_shape=None, out_grid2world=None) -> np.ndarray:
        """Warp ``image`` in the backward direction (static grid -> moving grid for SyN maps)."""
        if out_shape is not None:
            out_shape = np.asarray(out_shape, dtype=np.int32)
        fn = self._warp_forward if self.is_inverse else self._warp_backward
        return np.asarray(fn(image, interpolation, image_world2grid, out_shape, out_grid2world))

    # -- points
    def _warp_points(self, points, field, pre, post, coord2world, world2coord):
        pts = np.asarray(points, dtype=np.float64)
        flat = pts.reshape(-1, self.dim)
        c2w = np.eye(self.dim + 1) if coord2world is None else np.asarray(coord2world)
        w2c = np.eye(self.dim + 1) if world2coord is None else np.asarray(world2coord)
        homog = np.c_[flat, np.ones(len(flat))]
        x = (pre @ c2w @ homog.T)[: self.dim]  # world, after ``pre``
        Dinv = np.eye(self.dim + 1) if self.disp_world2grid is None else self.disp_world2grid
        grid = (Dinv[: self.dim, : self.dim] @ x + Dinv[: self.dim, self.dim:]).astype(np.float32)
        comps = np.moveaxis(field, -1, 0)
        disp = np.stack([vf.sample_image(comps[c], grid[:, :, None])[:, 0]
                         for c in range(self.dim)])
        y = np.vstack([x + disp, np.ones(x.shape[1])])
        out = (w2c @ post @ y)[: self.dim].T
        return out.reshape(pts.shape)

    def transform_points(self, points, coord2world=None, world2coord=None) -> np.ndarray:
        """Map points with the same rule as :meth:`transform` (the pull locations)."""
        I = np.eye(self.dim + 1)
        if self.is_inverse:
            Pinv = I if self.prealign_inv is None else self.prealign_inv
            return self._warp_points(points, self.backward, I, Pinv, coord2world, world2coord)
        P = I if self.prealign is None else self.prealign
        return self._warp_points(points, self.forward, P, I, coord2world, world2coord)

    def transform_points_inverse(self, points, coord2world=None, world2coord=None) -> np.ndarray:
        """Map points with the rule of :meth:`transform_inverse`.

        To carry moving-space points (e.g. streamlines) into static space, use this one.
        """
        return self.inverse().transform_points(points, coord2world, world2coord)

    # -- field algebra
    def compute_inversion_error(self):
        """``residual = backward + forward o (id + backward)`` and DIPY's 3 statistics (mm).

        Returns ``(residual, stats)`` with ``stats = [max |r|, rms |r|, std of |r|^2]``.
        """
        g2w = np.eye(self.dim + 1) if self.disp_grid2world is None else self.disp_grid2world
        b = _world_to_voxel_field(self.backward, g2w)
        f = _world_to_voxel_field(self.forward, g2w)
        res = _voxel_to_world_field(vf.compose(b, f), g2w)
        n2 = np.sum(res.astype(np.float64) ** 2, axis=-1)
        stats = np.array([np.sqrt(n2.max()), np.sqrt(n2.mean()),
                          np.sqrt(max((n2 ** 2).mean() - n2.mean() ** 2, 0.0))])
        return res, stats

    def expand_fields(self, expand_factors, new_shape) -> None:
        """Resample both fields onto a grid ``expand_factors`` times finer/coarser (in place)."""
        factors = np.asarray(expand_factors, dtype=np.float64)
        new_shape = tuple(int(s) for s in new_shape)
        scale = np.diag(np.append(factors, 1.0))
        coords = vf.affine_points(scale, new_shape)
        for name in ("forward", "backward"):
            comps = np.moveaxis(getattr(self, name), -1, 0)
            new = np.stack([vf.sample_image(comps[c], coords) for c in range(self.dim)], axis=-1)
            setattr(self, name, new)
        self.disp_shape = np.asarray(new_shape, dtype=np.int32)
        self.disp_grid2world = self.disp_grid2world @ scale
        self.disp_world2grid = np.linalg.inv(self.disp_grid2world)




def _simplified_field(field: np.ndarray, U: np.ndarray | None, V: np.ndarray | None,
                      W: np.ndarray | None, out_shape) -> np.ndarray:
    """DIPY's ``simplify_warp_function``: ``out[i] = W field(U i) + V i - i`` (out-grid voxels).

    ``field`` has DIPY's layout (``grid + (dim,)``); ``W`` acts on displacements (linear
    part only), ``U`` and ``V`` on homogeneous voxel coordinates; None is the identity.
    """
    dim = field.shape[-1]
    out_shape = tuple(int(s) for s in out_shape)
    comps = np.moveaxis(np.asarray(field, dtype=np.float32), -1, 0)
    if U is None:
        if comps.shape[1:] != out_shape:
            raise ValueError(f"field grid {comps.shape[1:]} differs from the output grid "
                             f"{out_shape} and no sampling matrix was given")
        sampled = comps
    else:
        sampled = vf.sample_field_affine(comps, U, out_shape)
    w = np.eye(dim) if W is None else np.asarray(W, dtype=np.float64)[:dim, :dim]
    v = np.eye(dim + 1) if V is None else np.array(V, dtype=np.float64)
    v[:dim, :dim] -= np.eye(dim)
    offset = vf.affine_points(v, out_shape, dtype=np.float64)  # (V - I) i
    out = np.empty(out_shape + (dim,), dtype=np.float32)
    for r in range(dim):  # float64 arithmetic, float32 storage (as DIPY)
        acc = offset[r]
        for c in range(dim):
            if w[r, c] != 0.0:
                acc += w[r, c] * sampled[c]
        out[..., r] = acc
    return out
