"""synflow.segment: brain masks of b0 volumes (NumPy/SciPy only).

* :func:`median_otsu`, :func:`multi_median` -- DIPY-compatible (``dipy.segment.mask``), fast
  exact level-counting median (see :mod:`synflow.segment.mask`).
* :func:`otsu` -- ``dipy.segment.threshold.otsu``, bit-identical, in NumPy.
"""

from .mask import applymask, median_otsu, multi_median
from .threshold import otsu

__all__ = ["applymask", "median_otsu", "multi_median", "otsu"]
