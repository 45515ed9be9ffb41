"""Synthetic b0 registration cases with a known answer.

Everything is built from the bundled 2 mm MNI152NLin2009aSym-derived template
(:func:`synflow.data.get_template`) with NumPy/SciPy/nibabel only. Ground-truth warps use
``scipy.ndimage.map_coordinates`` on purpose: they are independent of synflow's engine.

Modules (all names are re-exported here):

* :mod:`~synflow.data.phantom.grid` -- voxel/world geometry and interpolation helpers;
* :mod:`~synflow.data.phantom.template` -- the template's tissue maps and labels;
* :mod:`~synflow.data.phantom.deformations` -- random diffeomorphisms (:class:`Deformation`),
  composition, random affines;
* :mod:`~synflow.data.phantom.contrast` -- b0 contrast, bias fields, Rician noise;
* :mod:`~synflow.data.phantom.cases` -- :class:`RegistrationCase` with its exact answer, Dice;
* :mod:`~synflow.data.phantom.subjects` -- synthetic subjects in a native world;
* :mod:`~synflow.data.phantom.dwi` -- DWI signal simulation, the small DWI series;
* :mod:`~synflow.data.phantom.examples` -- the bundled example files (tutorial pair, small DWI).

Conventions (same as DIPY, see CONTRIBUTING.md):

* ``grid2world`` is the NIfTI affine (voxel index -> RAS mm).
* A displacement field ``d`` is float32 ``grid + (3,)`` in **world mm (RAS)**, sampled on a
  grid; it sends the world point ``x`` (centre of a grid voxel) to ``x + d(x)``.
* ``prealign`` ``P`` maps **static-world -> moving-world** points.
* The true answer of a :class:`RegistrationCase` is a *pull map*: static voxel ``x`` (world
  mm) shows the anatomy found in the moving image at ``pull(x) = P @ (x + u(x))`` (moving
  world mm), ``u = true_displacement``. This is exactly what DIPY's
  ``DiffeomorphicMap.transform(moving)`` samples: ``moving(W_m . P . (x + b(x)))`` with
  ``b = mapping.get_forward_field()``.
"""

from __future__ import annotations

from synflow.data.phantom.cases import (
    RegistrationCase,
    dice,
    endpoint_error_stats,
    make_registration_case,
)
from synflow.data.phantom.contrast import B0_CONTRAST, add_rician_noise, b0_like, bias_field
from synflow.data.phantom.deformations import (
    Deformation,
    compose_displacements,
    jacobian_determinant,
    random_affine,
    random_diffeomorphism,
)
from synflow.data.phantom.dwi import (
    SMALL_DWI_BVALS,
    dwi_signal,
    make_small_dwi,
    random_fibre_directions,
    unit_directions,
)
from synflow.data.phantom.examples import (
    TutorialPair,
    make_tutorial_pair,
    save_int16,
    write_bundled_examples,
)
from synflow.data.phantom.grid import (
    grid_world_points,
    sample_field,
    sample_image,
    voxel_sizes,
    world_to_vox,
)
from synflow.data.phantom.subjects import SyntheticSubject, make_subject, native_grid
from synflow.data.phantom.template import (
    TISSUE_LABELS,
    TemplateTissues,
    brain_centre,
    load_template_tissues,
    tissue_labels,
)

__all__ = [
    "TISSUE_LABELS",
    "B0_CONTRAST",
    "SMALL_DWI_BVALS",
    "TemplateTissues",
    "RegistrationCase",
    "TutorialPair",
    "load_template_tissues",
    "random_diffeomorphism",
    "Deformation",
    "compose_displacements",
    "random_affine",
    "bias_field",
    "add_rician_noise",
    "b0_like",
    "make_registration_case",
    "make_tutorial_pair",
    "SyntheticSubject",
    "make_subject",
    "native_grid",
    "dwi_signal",
    "random_fibre_directions",
    "make_small_dwi",
    "write_bundled_examples",
    "dice",
    "endpoint_error_stats",
    "jacobian_determinant",
    "grid_world_points",
    "tissue_labels",
    # geometry / sampling pieces (public since the package split; demo.py uses them)
    "world_to_vox",
    "sample_image",
    "sample_field",
    "voxel_sizes",
    "unit_directions",
    "brain_centre",
    "save_int16",
]

# Old private names, kept so existing imports keep working (use the public names).
_world_to_vox = world_to_vox
_sample = sample_image
_sample_field = sample_field
_voxel_sizes = voxel_sizes
_unit_dirs = unit_directions
_brain_centre = brain_centre
_save_int16 = save_int16
