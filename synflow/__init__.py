"""synflow: fast Symmetric Normalization (SyN) registration of diffusion-MRI b0 volumes.

Layers (dependencies point downwards only):

* ``synflow.align``, ``synflow.segment`` -- the engine (NumPy/SciPy/nibabel only);
* ``synflow.io``, ``synflow.viz`` -- files and figures;
* ``synflow.interfaces`` (Nipype) -> ``synflow.workflows`` -> ``synflow.cli``.
"""

__version__ = "0.1.0"
