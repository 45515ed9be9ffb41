"""Nipype interfaces for DWI inputs: mean b0 extraction and median-Otsu brain masks.

Non-finite voxels (NaN/inf) in the b0 volumes: order of the steps and where the line is.

1. :class:`ExtractB0` sets them to 0 in each b0 volume before averaging, writes where they
   were (``out_nonfinite``, uint8, DWI grid) and counts them (``data_qc``).
2. :class:`MedianOtsu` computes the brain mask from that zeroed mean b0 (median-Otsu needs a
   finite image; the median filter fills a few isolated zeros), then counts the zeroed
   voxels inside the mask (``NonFiniteVoxelsInMask``).
3. The series fails (``ValueError``, a data error) only when those are more than
   :data:`MAX_NONFINITE_IN_MASK_PERCENT` % of the brain-mask voxels: then SyN's local
   correlation (9^3-voxel windows at the default radius 4) sees holes over a noticeable part
   of the brain and the b0 itself is damaged.  Non-finite voxels outside the mask (e.g. one
   corner voxel per volume, a common scanner/conversion artefact) only give a warning.
   Measured on the demo dataset (2 mm, 90 x 110 x 74): the brain mask has 214,220 voxels, so
   the line is 214 voxels; one NaN voxel in every volume at the corner (0 in the mask) or at
   the centre (1 in the mask) is processed, a 6 x 6 x 6 NaN block at the centre (216) fails.

Only the b0 volumes are read (the diffusion-weighted ones are not used), so only their
non-finite voxels are counted.
"""

from __future__ import annotations

import logging
import time
import zlib

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

#: A series fails when more than this % of its brain-mask voxels were NaN/inf (and set to
#: 0) in the b0 volumes; below it the series is processed with a warning.
MAX_NONFINITE_IN_MASK_PERCENT: float = 0.1

_LOG = logging.getLogger("nipype.interface")


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
    out_nonfinite = File(exists=True, desc="uint8 mask (DWI grid) of the voxels that were "
                                           "NaN/inf in a b0 volume (set to 0)")
    data_qc = traits.Dict(desc="NonFiniteVoxels, NonFiniteValues, AffineSource, AffineShear, "
                               "DataWarnings (synflow.io.dwi.read_mean_b0)")
    n_volumes = traits.Int(desc="volumes in the DWI series")
    n_b0 = traits.Int(desc="volumes averaged into the mean b0")
    elapsed = traits.Float(desc="seconds spent")


class ExtractB0(SimpleInterface):
    """Mean of the b0 volumes (``b <= b0_threshold``) of a DWI series.

    Wraps :func:`synflow.io.dwi.read_mean_b0`, which raises a ``ValueError`` naming the
    file for a bval/volume count mismatch, no volume under the threshold, a 3-D
    "DWI", complex data or a non-finite affine.  NaN/inf voxels are set to 0 and reported
    (``out_nonfinite``, ``data_qc``; see the module notes).  Default threshold 50 s/mm^2
    as DIPY's ``gradient_table``, dmriprep and QSIPrep's ``ExtractB0s`` (QSIPrep's CLI uses 100).
    """

    input_spec = _ExtractB0InputSpec
    output_spec = _ExtractB0OutputSpec

    def _run_interface(self, runtime):
        from synflow.io.dwi import read_mean_b0

        t0 = time.perf_counter()
        out_file = out_name(self.inputs.in_file, "_b0", runtime.cwd)
        try:
            img, bad, data_qc = read_mean_b0(self.inputs.in_file, self.inputs.in_bval,
                                             b0_threshold=self.inputs.b0_threshold,
                                             align=self.inputs.align, nonfinite="zero")
        except ValueError:
            raise  # synflow.io raises ValueErrors that already name the file
        except (EOFError, OSError, zlib.error, ImageFileError) as exc:
            # nibabel/gzip say "Compressed file ended..." without naming the file
            raise ValueError(
                f"{self.inputs.in_file}: cannot read the image data ({type(exc).__name__}: "
                f"{exc}). The file is truncated or corrupt; re-copy or re-export it.") from exc
        atomic_write_nifti(img, out_file)
        out_bad = save_like(bad, img, out_name(self.inputs.in_file, "_nonfinite", runtime.cwd),
                            np.uint8)
        for message in data_qc["DataWarnings"]:
            _LOG.warning(message)
        n_vol, n_b0 = read_bval_count(self.inputs.in_bval, self.inputs.b0_threshold)
        self._results.update(out_file=out_file, out_nonfinite=out_bad, data_qc=data_qc,
                             n_volumes=n_vol, n_b0=n_b0, elapsed=time.perf_counter() - t0)
        return runtime


class _MedianOtsuInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="3-D image (e.g. the mean b0)")
    median_radius = traits.Int(4, usedefault=True, desc="median filter radius (voxels)")
    numpass = traits.Int(4, usedefault=True, desc="median filter passes")
    dilate = traits.Int(desc="dilate the mask this many iterations (default: none)")
    finalize_mask = traits.Bool(False, usedefault=True,
                                desc="remove small islands / fill holes (DIPY >= 1.10)")
    nonfinite_mask = File(exists=True, desc="voxels that were NaN/inf and set to 0 "
                                            "(ExtractB0.out_nonfinite), counted in the mask")
    data_qc = traits.Dict(desc="ExtractB0.data_qc, passed on with NonFiniteVoxelsInMask")
    max_nonfinite_percent = traits.Float(
        MAX_NONFINITE_IN_MASK_PERCENT, usedefault=True,
        desc="fail when more than this % of the mask voxels were NaN/inf")


class _MedianOtsuOutputSpec(TraitedSpec):
    out_mask = File(exists=True, desc="binary brain mask (uint8)")
    out_file = File(exists=True, desc="masked image (skull-stripped, float32)")
    data_qc = traits.Dict(desc="the input data_qc plus NonFiniteVoxelsInMask and "
                               "BrainMaskVoxels (when nonfinite_mask is given)")
    elapsed = traits.Float(desc="seconds spent")


def count_nonfinite_in_mask(nonfinite_file: str, mask: np.ndarray, image_file: str,
                            max_percent: float) -> dict:
    """``{"NonFiniteVoxelsInMask", "BrainMaskVoxels"}``; ``ValueError`` over ``max_percent``."""
    bad = load_volume(nonfinite_file)[0] > 0
    if bad.shape != mask.shape:
        raise ValueError(f"{nonfinite_file}: shape {bad.shape} does not match the mask of "
                         f"{image_file} {mask.shape}")
    n_in, n_mask = int(np.count_nonzero(bad & mask)), int(np.count_nonzero(mask))
    if n_in > max_percent / 100.0 * n_mask:
        raise ValueError(
            f"{image_file}: {n_in} of the {n_mask} brain-mask voxels "
            f"({100.0 * n_in / n_mask:.3g} %) were NaN/inf in the DWI's b0 volumes; more than "
            f"{max_percent:g} % of the brain is unusable, so the series is not registered")
    return {"NonFiniteVoxelsInMask": n_in, "BrainMaskVoxels": n_mask}


class MedianOtsu(SimpleInterface):
    """Brain mask with :func:`synflow.segment.mask.median_otsu` (DIPY's defaults).

    nipype has no median-Otsu wrapper (``MedianOtsuFlow`` is not wrapped), hence this.
    With ``nonfinite_mask`` it counts the zeroed NaN/inf voxels inside the brain mask and
    fails past ``max_nonfinite_percent`` (module notes).
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
        data_qc = dict(self.inputs.data_qc) if isdefined(self.inputs.data_qc) else {}
        if isdefined(self.inputs.nonfinite_mask):
            data_qc.update(count_nonfinite_in_mask(self.inputs.nonfinite_mask, mask > 0,
                                                   self.inputs.in_file,
                                                   self.inputs.max_nonfinite_percent))
        out_mask = save_like(mask, img, out_name(self.inputs.in_file, "_mask", runtime.cwd),
                             np.uint8)
        out_file = save_like(masked, img,
                             out_name(self.inputs.in_file, "_brain", runtime.cwd), np.float32)
        self._results.update(out_mask=out_mask, out_file=out_file, data_qc=data_qc,
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
