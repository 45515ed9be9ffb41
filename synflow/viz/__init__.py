"""synflow.viz: registration figures and the participant HTML QC report.

* :mod:`synflow.viz.regtools` -- DIPY-compatible ``overlay_slices``, ``overlay_images``,
  ``plot_slices``;
* :mod:`synflow.viz.reportlets` -- QC figures (mask contour, flicker, red/green overlay,
  deformation grid, Jacobian map), drawn with :mod:`synflow.viz.mosaic` (slice mosaics)
  and :mod:`synflow.viz.flicker` (flicker SVGs, SVG id prefixing);
* :mod:`synflow.viz.report` -- ``write_participant_report``.

Everything draws on matplotlib's Agg/SVG canvases; no display and no pyplot state.
"""

from .regtools import overlay_images, overlay_slices, plot_slices
from .report import write_participant_report
from .reportlets import (
    plot_before_after,
    plot_deformation_grid,
    plot_jacobian,
    plot_mask_contour,
    plot_overlay,
    plot_registration,
)

__all__ = [
    "overlay_images",
    "overlay_slices",
    "plot_before_after",
    "plot_deformation_grid",
    "plot_jacobian",
    "plot_mask_contour",
    "plot_overlay",
    "plot_registration",
    "plot_slices",
    "write_participant_report",
]
