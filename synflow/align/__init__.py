"""Registration engine: SyN (``imwarp``, ``metrics``), affine (``imaffine``, ``transforms``).

Pure NumPy/SciPy/nibabel.  DIPY users: every name of ``dipy.align`` that DIPY's 3-D SyN
tutorial uses lives at the same path here (``dipy`` -> ``synflow``).
"""

from importlib import import_module

# Resolved lazily (PEP 562) so that ``import synflow.align`` stays cheap.
_LAZY = {
    "read_mapping": "synflow.align._public",
    "write_mapping": "synflow.align._public",
    "syn_registration": "synflow.align._syn_public",
    "affine_registration": "synflow.align._affine_public",
    "center_of_mass": "synflow.align._affine_public",
    "translation": "synflow.align._affine_public",
    "rigid": "synflow.align._affine_public",
    "rigid_isoscaling": "synflow.align._affine_public",
    "rigid_scaling": "synflow.align._affine_public",
    "register_dwi_to_template": "synflow.align._dwi_public",
    "resample": "synflow.align._dwi_public",
    "affine": "synflow.align._affine_public",
    "estimate_prealign": "synflow.align._affine_public",
}

__all__ = [name for name, mod in _LAZY.items() if mod is not None]


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'synflow.align' has no attribute {name!r}")
    return getattr(import_module(module), name)
