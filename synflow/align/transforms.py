"""Parametric linear transforms for affine registration (DIPY-compatible).

Every transform maps a parameter vector ``theta`` to a ``(dim + 1, dim + 1)``
homogeneous matrix that acts on **world points (mm)**: ``x' = A(theta) x + t(theta)``.
Rotations are about the **world origin**, so centre the images first (e.g. with
:func:`synflow.align.imaffine.transform_centers_of_mass`).  Angles are in radians,
translations in mm, scales are unitless.

Names, parameter orders, identity parameters and Jacobians follow
``dipy.align.transforms`` (DIPY 1.12):

* ``TranslationTransform{2,3}D``: ``(tx, ty[, tz])``;
* ``RotationTransform2D``: ``(theta,)``; ``RotationTransform3D``: ``(a, b, g)`` with
  ``R = Rz(g) . Rx(a) . Ry(b)``;
* ``RigidTransform2D``: ``(theta, tx, ty)``; ``RigidTransform3D``: ``(a, b, g, tx, ty, tz)``;
* ``RigidIsoScalingTransform{2,3}D``: rigid parameters then ``s`` (matrix ``s . R``);
* ``RigidScalingTransform{2,3}D``: rigid parameters then ``(sx, sy[, sz])``
  (matrix ``diag(s) . R``);
* ``ScalingTransform{2,3}D``: ``(s,)`` (isotropic, matrix ``s . I``);
* ``AffineTransform{2,3}D``: the top ``dim`` rows of the matrix, row-major.

Besides DIPY's ``jacobian(theta, x)`` each transform exposes
``matrix_derivatives(theta)``, the derivative of the top ``dim`` rows of the matrix
with respect to each parameter, shape ``(n, dim, dim + 1)``.  Because every transform
here is affine in ``x``, ``jacobian(theta, x) = matrix_derivatives(theta) . [x, 1]``;
the registration metric uses this to contract its gradient over all voxels with a
single small matrix product.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "Transform",
    "TranslationTransform2D",
    "TranslationTransform3D",
    "RotationTransform2D",
    "RotationTransform3D",
    "RigidTransform2D",
    "RigidTransform3D",
    "RigidIsoScalingTransform2D",
    "RigidIsoScalingTransform3D",
    "RigidScalingTransform2D",
    "RigidScalingTransform3D",
    "ScalingTransform2D",
    "ScalingTransform3D",
    "AffineTransform2D",
    "AffineTransform3D",
    "regtransforms",
]


def _rot2(t: float) -> tuple[np.ndarray, np.ndarray]:
    """2-D rotation matrix and its derivative with respect to the angle (radians)."""
    c, s = np.cos(t), np.sin(t)
    return np.array([[c, -s], [s, c]]), np.array([[-s, -c], [c, -s]])


def _rot3(a: float, b: float, g: float) -> tuple[np.ndarray, np.ndarray]:
    """``R = Rz(g) Rx(a) Ry(b)`` and ``dR/d(a, b, g)`` (shape ``(3, 3, 3)``)."""
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    rx = np.array([[1.0, 0, 0], [0, ca, -sa], [0, sa, ca]])
    ry = np.array([[cb, 0, sb], [0, 1.0, 0], [-sb, 0, cb]])
    rz = np.array([[cg, -sg, 0], [sg, cg, 0], [0, 0, 1.0]])
    drx = np.array([[0.0, 0, 0], [0, -sa, -ca], [0, ca, -sa]])
    dry = np.array([[-sb, 0, cb], [0, 0.0, 0], [-cb, 0, -sb]])
    drz = np.array([[-sg, -cg, 0], [cg, -sg, 0], [0, 0, 0.0]])
    rot = rz @ rx @ ry
    d = np.stack([rz @ drx @ ry, rz @ rx @ dry, drz @ rx @ ry])
    return rot, d


class Transform:
    """Base class: a parametric transform of ``dim``-D world points (mm).

    Subclasses implement :meth:`_linear` returning the ``(dim, dim + 1)`` top rows of the
    matrix and their derivatives ``(n, dim, dim + 1)``.  The base class itself, as in DIPY,
    reports ``-1`` for its dimension and number of parameters and raises ``ValueError``
    from :meth:`jacobian`, :meth:`get_identity_parameters` and :meth:`param_to_matrix`.
    """

    dim: int = -1
    number_of_parameters: int = -1
    _identity: tuple[float, ...] = ()

    def _require_concrete(self) -> None:
        if self.number_of_parameters < 0:
            raise ValueError(f"{type(self).__name__} is an abstract transform: use one of "
                             "synflow.align.transforms.regtransforms")

    def get_number_of_parameters(self) -> int:
        """Number of parameters ``n``."""
        return self.number_of_parameters

    def get_dim(self) -> int:
        """Dimension of the space the transform acts on (2 or 3)."""
        return self.dim

    def get_identity_parameters(self) -> np.ndarray:
        """Parameters giving the identity matrix, float64 ``(n,)``."""
        self._require_concrete()
        return np.array(self._identity, dtype=np.float64)

    def _check(self, theta: np.ndarray) -> np.ndarray:
        self._require_concrete()
        theta = np.asarray(theta, dtype=np.float64).ravel()
        if theta.size != self.number_of_parameters:
            raise ValueError(
                f"theta must have {self.number_of_parameters} parameters for "
                f"{type(self).__name__}, got {theta.size}"
            )
        return theta

    def _linear(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover
        raise NotImplementedError

    def param_to_matrix(self, theta: np.ndarray) -> np.ndarray:
        """Homogeneous ``(dim + 1, dim + 1)`` matrix (world mm -> world mm) of ``theta``."""
        top, _ = self._linear(self._check(theta))
        out = np.eye(self.dim + 1)
        out[: self.dim] = top
        return out

    def matrix_derivatives(self, theta: np.ndarray) -> np.ndarray:
        """``d M[:dim] / d theta_l`` for each parameter, shape ``(n, dim, dim + 1)``."""
        _, d = self._linear(self._check(theta))
        return d

    def jacobian(self, theta: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Jacobian ``d T(theta) x / d theta`` at the world point ``x`` (mm), shape ``(dim, n)``."""
        self._require_concrete()
        x = np.asarray(x, dtype=np.float64).ravel()
        if x.size != self.dim:
            raise ValueError(f"x must have {self.dim} coordinates, got {x.size}")
        d = self.matrix_derivatives(theta)
        return np.einsum("npq,q->pn", d, np.append(x, 1.0))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _affine_top(lin: np.ndarray, t: np.ndarray) -> np.ndarray:
    return np.concatenate([lin, np.asarray(t, dtype=np.float64)[:, None]], axis=1)


class _Translation(Transform):
    def _linear(self, theta):
        d = self.dim
        top = _affine_top(np.eye(d), theta)
        der = np.zeros((d, d, d + 1))
        for i in range(d):
            der[i, i, d] = 1.0
        return top, der


class TranslationTransform2D(_Translation):
    """2-D translation, parameters ``(tx, ty)`` in mm."""

    dim, number_of_parameters, _identity = 2, 2, (0.0, 0.0)


class TranslationTransform3D(_Translation):
    """3-D translation, parameters ``(tx, ty, tz)`` in mm."""

    dim, number_of_parameters, _identity = 3, 3, (0.0, 0.0, 0.0)


def _rotation(dim: int, angles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if dim == 2:
        r, dr = _rot2(angles[0])
        return r, dr[None]
    return _rot3(*angles)


class _RigidFamily(Transform):
    """``diag(scale) . R(angles)`` plus translation; flags choose which blocks exist."""

    has_translation = True
    scaling = "none"  # "none" | "iso" | "aniso"

    def _linear(self, theta):
        d = self.dim
        na = 1 if d == 2 else 3
        angles = theta[:na]
        pos = na
        t = np.zeros(d)
        if self.has_translation:
            t = theta[pos : pos + d]
            pos += d
        rot, drot = _rotation(d, angles)
        if self.scaling == "iso":
            s = np.full(d, theta[pos])
        elif self.scaling == "aniso":
            s = theta[pos : pos + d]
        else:
            s = np.ones(d)
        lin = s[:, None] * rot
        der = np.zeros((self.number_of_parameters, d, d + 1))
        der[:na, :, :d] = s[None, :, None] * drot
        if self.has_translation:
            for i in range(d):
                der[na + i, i, d] = 1.0
        if self.scaling == "iso":
            der[pos, :, :d] = rot
        elif self.scaling == "aniso":
            for i in range(d):
                der[pos + i, i, :d] = rot[i]
        return _affine_top(lin, t), der


class RotationTransform2D(_RigidFamily):
    """2-D rotation about the world origin, parameter ``(theta,)`` in radians."""

    dim, number_of_parameters, _identity, has_translation = 2, 1, (0.0,), False


class RotationTransform3D(_RigidFamily):
    """3-D rotation ``Rz(g) Rx(a) Ry(b)`` about the world origin, parameters ``(a, b, g)``."""

    dim, number_of_parameters, _identity, has_translation = 3, 3, (0.0,) * 3, False


class RigidTransform2D(_RigidFamily):
    """2-D rigid transform, parameters ``(theta, tx, ty)`` (radians, mm)."""

    dim, number_of_parameters, _identity = 2, 3, (0.0,) * 3


class RigidTransform3D(_RigidFamily):
    """3-D rigid transform ``R = Rz(g) Rx(a) Ry(b)`` about the world origin plus ``t``.

    Parameters ``(a, b, g, tx, ty, tz)``: radians then mm.
    """

    dim, number_of_parameters, _identity = 3, 6, (0.0,) * 6


class RigidIsoScalingTransform2D(_RigidFamily):
    """``s . R(theta)`` plus translation, parameters ``(theta, tx, ty, s)``."""

    dim, number_of_parameters, _identity, scaling = 2, 4, (0.0, 0.0, 0.0, 1.0), "iso"


class RigidIsoScalingTransform3D(_RigidFamily):
    """``s . R(a, b, g)`` plus translation, parameters ``(a, b, g, tx, ty, tz, s)``."""

    dim, number_of_parameters, _identity, scaling = 3, 7, (0.0,) * 6 + (1.0,), "iso"


class RigidScalingTransform2D(_RigidFamily):
    """``diag(sx, sy) . R(theta)`` plus translation, parameters ``(theta, tx, ty, sx, sy)``."""

    dim, number_of_parameters, _identity, scaling = 2, 5, (0.0,) * 3 + (1.0,) * 2, "aniso"


class RigidScalingTransform3D(_RigidFamily):
    """``diag(sx, sy, sz) . R(a, b, g)`` plus translation, 9 parameters."""

    dim, number_of_parameters, _identity, scaling = 3, 9, (0.0,) * 6 + (1.0,) * 3, "aniso"


class _Scaling(Transform):
    def _linear(self, theta):
        d = self.dim
        der = np.zeros((1, d, d + 1))
        der[0, :, :d] = np.eye(d)
        return _affine_top(theta[0] * np.eye(d), np.zeros(d)), der


class ScalingTransform2D(_Scaling):
    """Isotropic 2-D scaling about the world origin, parameter ``(s,)``."""

    dim, number_of_parameters, _identity = 2, 1, (1.0,)


class ScalingTransform3D(_Scaling):
    """Isotropic 3-D scaling about the world origin, parameter ``(s,)``."""

    dim, number_of_parameters, _identity = 3, 1, (1.0,)


class _Affine(Transform):
    def _linear(self, theta):
        d = self.dim
        n = d * (d + 1)
        der = np.zeros((n, d, d + 1))
        der.reshape(n, n)[np.arange(n), np.arange(n)] = 1.0
        return theta.reshape(d, d + 1).copy(), der


class AffineTransform2D(_Affine):
    """General 2-D affine, 6 parameters: the top two matrix rows, row-major."""

    dim, number_of_parameters, _identity = 2, 6, (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


class AffineTransform3D(_Affine):
    """General 3-D affine, 12 parameters ``[a00 a01 a02 tx a10 ... a22 tz]`` (mm for t)."""

    dim, number_of_parameters = 3, 12
    _identity = (1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0)


#: DIPY's registry of transform instances keyed by ``(NAME, dim)``.
regtransforms: dict[tuple[str, int], Transform] = {
    ("TRANSLATION", 2): TranslationTransform2D(),
    ("TRANSLATION", 3): TranslationTransform3D(),
    ("ROTATION", 2): RotationTransform2D(),
    ("ROTATION", 3): RotationTransform3D(),
    ("RIGID", 2): RigidTransform2D(),
    ("RIGID", 3): RigidTransform3D(),
    ("SCALING", 2): ScalingTransform2D(),
    ("SCALING", 3): ScalingTransform3D(),
    ("AFFINE", 2): AffineTransform2D(),
    ("AFFINE", 3): AffineTransform3D(),
    ("RIGIDSCALING", 2): RigidScalingTransform2D(),
    ("RIGIDSCALING", 3): RigidScalingTransform3D(),
    ("RIGIDISOSCALING", 2): RigidIsoScalingTransform2D(),
    ("RIGIDISOSCALING", 3): RigidIsoScalingTransform3D(),
}
