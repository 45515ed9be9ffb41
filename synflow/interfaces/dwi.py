"""Nipype interfaces for DWI inputs: mean b0 extraction and median-Otsu brain masks."""

from __future__ import annotations

import time
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)
from nipype.utils.filemanip import fname_presuffix

from synflow.io.image import atomic_write_nifti, load_volume, nifti_like


def read_bval_count(bval_file: str, threshold: float) -> tuple[int, int]:
    """``(n_volumes, n_b0)`` from a ``.bval`` file (b0 = ``bval <= threshold``, as DIPY)."""
    from synflow.io.gradients import read_bvals_bvecs

    bvals, _ = read_bvals_bvecs(bval_file, None)
    return int(bvals.size), int(np.count_nonzero(bvals <= threshold))


def out_name(in_file: str, suffix: str, newpath: str, ext: str = ".nii.gz") -> str:
    """``<newpath>/<stem of in_file><suffix><ext>``, by nipype's ``fname_presuffix``.

    ``.nii.gz`` counts as one extension (nipype's ``split_filename``); the output gets
    ``ext`` whatever the input's extension.
    """
    return fname_presuffix(in_file, suffix=suffix + ext, newpath=newpath, use_ext=False)


def save_like(data: np.ndarray, like: nib.Nifti1Image, fname: str, dtype=np.float32) -> str:
    """Save ``data`` on ``like``'s grid (:func:`synflow.io.image.nifti_like`), atomically."""
    atomic_write_nifti(nifti_like(data, like, dtype), fname)
    return fname


class _ExtractB0InputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="4-D DWI series (NIfTI)")
    in_bval = File(exists=True, mandatory=True, desc="the series' .bval file")
    b0_threshold = traits.Float(50.0, usedefault=True,
                                desc="volumes with b <= threshold (s/mm^2) are b0s (DIPY's rule)")
    align = traits.Bool(False, usedefault=True,
                        desc="rigidly align the b0s to the first one before averaging")


class _ExtractB0OutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="mean b0 (3-D, float32, same grid as the DWI)")
    n_volumes = traits.Int(desc="volumes in the DWI series")
    n_b0 = traits.Int(desc="volumes averaged into the mean b0")
    elapsed = traits.Float(desc="seconds spent")


class ExtractB0(SimpleInterface):
    """Mean of the b0 volumes (``b <= b0_threshold``) of a DWI series.

    Wraps :func:`synflow.io.dwi.extract_b0`, which raises a ``ValueError`` naming the
    file for a bval/volume count mismatch, no volume under the threshold, a 3-D
    "DWI" or NaN voxels.  Default threshold 50 s/mm^2 as DIPY's ``gradient_table``,
    dmriprep and QSIPrep's ``ExtractB0s`` (QSIPrep's CLI uses 100).
    """

    input_spec = _ExtractB0InputSpec
    output_spec = _ExtractB0OutputSpec

    def _run_interface(self, runtime):
        from synflow.io.dwi import extract_b0

        t0 = time.perf_counter()
        out_file = out_name(self.inputs.in_file, "_b0", runtime.cwd)
        try:
            img = extract_b0(self.inputs.in_file, self.inputs.in_bval, out_file=out_file,
                             b0_threshold=self.inputs.b0_threshold, align=self.inputs.align)
        except ValueError:
            raise  # synflow.io raises ValueErrors that already name the file
        except (EOFError, OSError, zlib.error, ImageFileError) as exc:
            # nibabel/gzip say "Compressed file ended..." without naming the file
            raise ValueError(
                f"{self.inputs.in_file}: cannot read the image data ({type(exc).__name__}: "
                f"{exc}). The file is truncated or corrupt; re-copy or re-export it.") from exc
        if not Path(out_file).exists():
            atomic_write_nifti(img, out_file)
        n_vol, n_b0 = read_bval_count(self.inputs.in_bval, self.inputs.b0_threshold)
        self._results.update(out_file=out_file, n_volumes=n_vol, n_b0=n_b0,
                             elapsed=time.perf_counter() - t0)
        return runtime


class _MedianOtsuInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="3-D image (e.g. the mean b0)")
    median_radius = traits.Int(4, usedefault=True, desc="median filter radius (voxels)")
    numpass = traits.Int(4, usedefault=True, desc="median filter passes")
    dilate = traits.Int(desc="dilate the mask this many iterations (default: none)")
    finalize_mask = traits.Bool(False, usedefault=True,
                                desc="remove small islands / fill holes (DIPY >= 1.10)")


class _MedianOtsuOutputSpec(TraitedSpec):
    out_mask = File(exists=True, desc="binary brain mask (uint8)")
    out_file = File(exists=True, desc="masked image (skull-stripped, float32)")
    elapsed = traits.Float(desc="seconds spent")


class MedianOtsu(SimpleInterface):
    """Brain mask with :func:`synflow.segment.mask.median_otsu` (DIPY's defaults).

    nipype has no median-Otsu wrapper (``MedianOtsuFlow`` is not wrapped), hence this.
    """

    input_spec = _MedianOtsuInputSpec
    output_spec = _MedianOtsuOutputSpec

    def _run_interface(self, runtime):
        from synflow.segment.mask import median_otsu

        t0 = time.perf_counter()
        data, _, img = load_volume(self.inputs.in_file)
        if data.ndim != 3:
            raise ValueError(f"{self.inputs.in_file}: MedianOtsu expects a 3-D image, "
                             f"got shape {data.shape}")
        dilate = self.inputs.dilate if isdefined(self.inputs.dilate) else None
        masked, mask = median_otsu(data, median_radius=self.inputs.median_radius,
                                   numpass=self.inputs.numpass, dilate=dilate,
                                   finalize_mask=self.inputs.finalize_mask)
        if not np.any(mask):
            raise ValueError(f"{self.inputs.in_file}: median-Otsu found no brain voxels; "
                             "is this a b0 image with signal?")
        out_mask = save_like(mask, img, out_name(self.inputs.in_file, "_mask", runtime.cwd),
                             np.uint8)
        out_file = save_like(masked, img,
                             out_name(self.inputs.in_file, "_brain", runtime.cwd), np.float32)
        self._results.update(out_mask=out_mask, out_file=out_file,
                             elapsed=time.perf_counter() - t0)
        return runtime


def dilate_mask_mm(mask: np.ndarray, voxel_sizes, distance_mm: float) -> np.ndarray:
    """Voxels within ``distance_mm`` (Euclidean, mm) of ``mask``; voxel sizes in mm."""
    from scipy import ndimage as ndi

    if not mask.any():
        return mask
    dist = ndi.distance_transform_edt(~mask, sampling=[float(z) for z in voxel_sizes])
    return dist <= distance_mm


class _ApplyMaskInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="3-D image")
    in_mask = File(exists=True, mandatory=True, desc="binary mask on the same grid")
    dilation_mm = traits.Float(0.0, usedefault=True,
                               desc="grow the mask by this distance (mm, Euclidean, in the "
                                    "image's voxel sizes) before applying it")


class _ApplyMaskOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="image with voxels outside the mask set to 0 (float32)")


class ApplyMask(SimpleInterface):
    """Zero the voxels outside a mask (e.g. skull-strip the bundled template).

    With ``dilation_mm > 0`` the mask is first grown by that distance: SyN's inputs are
    masked this way so that the cut lies in the CSF/skull around the brain of *both* images,
    instead of at two median-Otsu boundaries that do not correspond (see
    :func:`synflow.workflows.dwi.init_dwi_registration_wf`).
    """

    input_spec = _ApplyMaskInputSpec
    output_spec = _ApplyMaskOutputSpec

    def _run_interface(self, runtime):
        data, _, img = load_volume(self.inputs.in_file)
        mask = load_volume(self.inputs.in_mask)[0] > 0
        if mask.shape != data.shape:
            raise ValueError(f"{self.inputs.in_mask}: mask shape {mask.shape} does not match "
                             f"{self.inputs.in_file} {data.shape}")
        if self.inputs.dilation_mm < 0:
            raise ValueError(f"dilation_mm must be >= 0, got {self.inputs.dilation_mm}")
        if self.inputs.dilation_mm > 0:
            mask = dilate_mask_mm(mask, img.header.get_zooms()[:3], self.inputs.dilation_mm)
        out = save_like(np.where(mask, data, 0), img,
                        out_name(self.inputs.in_file, "_brain", runtime.cwd))
        self._results["out_file"] = out
        return runtime
