"""Nipype interfaces: thin wrappers over synflow's engine, I/O and figures.

=====================================  =================================================
:class:`ExtractB0`                     mean b0 of a DWI series (``b <= b0_threshold``)
:class:`MedianOtsu`                    median-Otsu brain mask + skull-stripped image
:class:`ApplyMask`                     zero the voxels outside a mask
:class:`AffinePrealign`                affine pre-alignment (DIPY ``prealign``)
:class:`SyNRegistration`               SyN (CC metric); mapping as DIPY file + ITK .h5
:class:`ApplyRegistration`             resample any image with a saved mapping
:class:`RegistrationReportlets`        QC figures of one series
:class:`QCReport`                      participant HTML report
:class:`DerivativesDataSink`           BIDS-Derivatives names, sidecars, atomic writes
=====================================  =================================================
"""

from synflow.interfaces.bids import DerivativesDataSink
from synflow.interfaces.dwi import ApplyMask, ExtractB0, MedianOtsu
from synflow.interfaces.registration import (
    AffinePrealign,
    ApplyRegistration,
    SyNRegistration,
)
from synflow.interfaces.reports import QCReport, RegistrationReportlets
from synflow.interfaces.reslice import Reslice

__all__ = [
    "AffinePrealign",
    "ApplyMask",
    "ApplyRegistration",
    "DerivativesDataSink",
    "ExtractB0",
    "MedianOtsu",
    "QCReport",
    "RegistrationReportlets",
    "Reslice",
    "SyNRegistration",
]
