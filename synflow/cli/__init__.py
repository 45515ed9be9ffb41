"""The ``synflow`` BIDS-App command (``synflow.cli.run:main``).

Modules: :mod:`~synflow.cli.parser` (options), :mod:`~synflow.cli.bids` (validation,
data selection, early checks), :mod:`~synflow.cli.run` (the run),
:mod:`~synflow.cli.context` (the run's frozen record), :mod:`~synflow.cli.collect`
(outcomes, reports, summary), :mod:`~synflow.cli.progress` (progress lines, summary table),
:mod:`~synflow.cli.outputs` (dataset_description.json, .bidsignore), :mod:`~synflow.cli.demo`
(``synflow --demo``), :mod:`~synflow.cli.plugins` (Nipype execution plugins).
"""

import os

# Nipype's import-time "is there a newer version" web check (etelemetry) is noise for
# a BIDS App and hangs on offline cluster nodes; fMRIPrep disables it the same way.
os.environ.setdefault("NIPYPE_NO_ET", "1")
