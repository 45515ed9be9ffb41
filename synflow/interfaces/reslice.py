"""Nipype interface: reslice an image to a new voxel size (synflow.align.reslice.reslice)."""

from __future__ import annotations

import time

import nibabel as nib
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from synflow._atomic import atomic_path
from synflow.interfaces.dwi import out_name


class _ResliceInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="3-D or 4-D NIfTI image")
    new_zooms = traits.Either(
        traits.Float(), traits.Tuple(traits.Float(), traits.Float(), traits.Float()),
        mandatory=True, desc="new voxel size (mm): one value (isotropic) or three")
    order = traits.Range(low=0, high=5, value=1, usedefault=True,
                         desc="spline order: 0 nearest, 1 trilinear, 3 cubic ...")
    out_file = File(desc="output path (default: <in_file stem>_resliced.nii.gz in the cwd)")


class _ResliceOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="resliced image (float32; same world space)")
    elapsed = traits.Float(desc="seconds spent")


class Reslice(SimpleInterface):
    """Reslice ``in_file`` to ``new_zooms`` mm (DIPY's ``reslice``; 4-D volume by volume).

    The output grid shares the centre of voxel ``(0, 0, 0)`` with the input and its affine is
    ``affine @ diag(new_zooms / zooms, 1)``; voxels outside the input are 0.
    """

    input_spec = _ResliceInputSpec
    output_spec = _ResliceOutputSpec

    def _run_interface(self, runtime):
        from synflow.align.reslice import reslice

        t0 = time.perf_counter()
        img = nib.load(self.inputs.in_file)
        new = self.inputs.new_zooms
        new_zooms = (float(new),) * 3 if np.isscalar(new) else tuple(float(z) for z in new)
        zooms = img.header.get_zooms()[:3]
        data = np.asanyarray(img.dataobj, dtype=np.float32)
        data2, affine2 = reslice(data, img.affine, zooms, new_zooms, order=self.inputs.order)
        out = nib.Nifti1Image(data2.astype(np.float32, copy=False), affine2)
        out.header.set_xyzt_units(*img.header.get_xyzt_units())
        out.header.set_sform(affine2, int(img.header["sform_code"]) or 1)
        out.header.set_qform(affine2, int(img.header["qform_code"]) or 1)
        out_file = self.inputs.out_file if isdefined(self.inputs.out_file) else out_name(
            self.inputs.in_file, "_resliced", runtime.cwd)
        with atomic_path(out_file) as tmp:
            out.to_filename(str(tmp))
        self._results.update(out_file=str(out_file), elapsed=time.perf_counter() - t0)
        return runtime
