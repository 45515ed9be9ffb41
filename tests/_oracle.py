"""Test helper: an exact DIPY ``DiffeomorphicMap`` built from a phantom case's truth.

Lives with the tests (not in the runtime package) because it imports DIPY, a test-only
dependency. Use from a test file: ``from _oracle import oracle_mapping`` (pytest puts
``tests/`` on ``sys.path``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from synflow.data.phantom import RegistrationCase

__all__ = ["oracle_mapping"]


def oracle_mapping(case: RegistrationCase) -> Any:
    """An exact DIPY ``DiffeomorphicMap`` built from ``case``'s truth (needs ``dipy``).

    ``transform(case.moving)`` pulls ``moving`` onto the static grid through the true map;
    use with ``prealign=case.prealign``. (Its ``forward`` field is the inverse displacement
    on the static grid and is only approximately consistent.)
    """
    from dipy.align.imwarp import DiffeomorphicMap

    m = DiffeomorphicMap(
        3, case.static.shape, disp_grid2world=case.static_affine,
        domain_shape=case.moving.shape, domain_grid2world=case.moving_affine,
        codomain_shape=case.static.shape, codomain_grid2world=case.static_affine,
        prealign=np.linalg.inv(case.prealign))
    m.forward = np.ascontiguousarray(case.true_inverse_displacement, dtype=np.float32)
    m.backward = np.ascontiguousarray(case.true_displacement, dtype=np.float32)
    m.is_inverse = True
    return m
