"""Exit codes of the ``synflow`` command and the error that carries one.

Codes follow the BIDS Apps execution spec (``src/outputs.md``), which borrows the
BSD ``sysexits.h`` values.  Code 2 is argparse's and reserved by the spec, so usage
errors exit 64 instead (our parser overrides ``ArgumentParser.error``).
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Exit status of ``synflow``."""

    OK = 0  #: everything selected was processed
    FAILURE = 1  #: at least one participant/series failed for another reason (a crash)
    BIDS_INVALID = 16  #: the input is not a valid BIDS dataset
    FILTER_EMPTY = 18  #: --session-label / --bids-filter-file selected no files
    USAGE = 64  #: bad command line (options, plugin, output inside the input...)
    DATA_ERROR = 65  #: input data unusable (bval count, no b0, 3-D, NaN, unreadable NIfTI)
    NO_INPUT = 66  #: required input missing (participant, DWI, .bval, reference file)
    CANT_CREATE = 73  #: output or work directory cannot be created/written


class SynflowError(Exception):
    """An error with a message for a person and the exit code to end with."""

    def __init__(self, message: str, code: ExitCode = ExitCode.USAGE) -> None:
        super().__init__(message)
        self.message = message
        self.code = ExitCode(code)

    def __str__(self) -> str:
        return self.message
