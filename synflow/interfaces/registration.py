"""Nipype interfaces for registration: affine pre-alignment, SyN, and applying a mapping.

Conventions (DIPY's, see CONTRIBUTING.md): the *reference* is DIPY's ``static`` image,
the subject's b0 is ``moving``; ``prealign`` maps reference-world -> moving-world
points; a mapping's ``transform`` pulls a moving-space image onto the reference grid.

Thread counts (``num_threads``) are ``nohash=True``: changing ``--nprocs`` or
``--omp-nthreads`` must not invalidate cached results (fmriprep#668).  Results are
bit-identical whatever the thread count (``synflow._parallel``), so this is safe.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

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

from synflow._atomic import atomic_path, atomic_write_text
from synflow.align.affine_checks import check_affine
from synflow.interfaces.dwi import out_name, save_like
from synflow.io.image import atomic_write_nifti, load_nifti, load_volume


def _set_threads(num_threads) -> None:
    from synflow._parallel import set_num_threads

    set_num_threads(int(num_threads) if isdefined(num_threads) else None)


def _mask_or_none(fname) -> np.ndarray | None:
    if not isdefined(fname) or fname is None:
        return None
    return load_volume(fname)[0] > 0


class _PairInputSpec(BaseInterfaceInputSpec):
    """Inputs every registration of a moving image to a reference takes."""

    reference_file = File(exists=True, mandatory=True, desc="reference (static) image")
    moving_file = File(exists=True, mandatory=True, desc="moving image (the subject's b0)")
    num_threads = traits.Int(1, usedefault=True, nohash=True, desc="engine threads")


class _AffinePrealignInputSpec(_PairInputSpec):
    reference_mask = File(exists=True, desc="brain mask on the reference grid")
    moving_mask = File(exists=True, desc="brain mask on the moving grid")


class _AffinePrealignOutputSpec(TraitedSpec):
    out_matrix = File(exists=True, desc="4x4 prealign (reference-world -> moving-world, RAS mm)"
                                        " as plain text (numpy.loadtxt)")
    out_itk = File(exists=True, desc="the same affine as an ITK/ANTs text transform")
    out_file = File(exists=True, desc="moving image resampled onto the reference grid")
    elapsed = traits.Float(desc="seconds spent")


class AffinePrealign(SimpleInterface):
    """Affine pre-alignment of the b0 to the reference (:func:`synflow.align.estimate_prealign`).

    The matrix is what DIPY's ``SymmetricDiffeomorphicRegistration.optimize`` takes
    as ``prealign``.
    """

    input_spec = _AffinePrealignInputSpec
    output_spec = _AffinePrealignOutputSpec

    def _run_interface(self, runtime):
        from synflow.align import estimate_prealign
        from synflow.align.imaffine import AffineMap
        from synflow.io.itk import write_itk_affine

        _set_threads(self.inputs.num_threads)
        t0 = time.perf_counter()
        static, static_aff, ref_img = load_volume(self.inputs.reference_file)
        moving, moving_aff, _ = load_volume(self.inputs.moving_file)
        prealign = estimate_prealign(static, moving, static_aff, moving_aff,
                                     static_mask=_mask_or_none(self.inputs.reference_mask),
                                     moving_mask=_mask_or_none(self.inputs.moving_mask))
        try:
            prealign = check_affine(prealign, "prealign", invertible=False)
        except ValueError as exc:
            raise ValueError(f"affine pre-alignment of {self.inputs.moving_file} failed "
                             f"({exc})") from exc
        warped = AffineMap(prealign, static.shape, static_aff, moving.shape,
                           moving_aff).transform(moving)
        out_matrix = str(Path(runtime.cwd) / "prealign.txt")
        with atomic_path(out_matrix) as tmp:
            np.savetxt(tmp, prealign)
        out_itk = str(Path(runtime.cwd) / "prealign_itk.txt")
        write_itk_affine(prealign, out_itk)
        out_file = save_like(warped, ref_img, out_name(self.inputs.moving_file, "_affine",
                                                        runtime.cwd))
        self._results.update(out_matrix=out_matrix, out_itk=out_itk, out_file=out_file,
                             elapsed=time.perf_counter() - t0)
        return runtime


class _SyNInputSpec(_PairInputSpec):
    prealign_file = File(exists=True, desc="4x4 prealign as text (AffinePrealign.out_matrix);"
                                           " identity if not given")
    reference_mask = File(exists=True, desc="brain mask on the reference grid (QC numbers)")
    level_iters = traits.List(traits.Int, [50, 50, 10], usedefault=True, minlen=1,
                              desc="iterations per scale, coarsest first")
    cc_radius = traits.Int(4, usedefault=True, desc="CCMetric radius (voxels)")
    sigma_diff = traits.Float(2.0, usedefault=True, desc="CCMetric smoothing of the update")
    step_length = traits.Float(0.25, usedefault=True, desc="max step per iteration (mm)")
    ss_sigma_factor = traits.Float(0.2, usedefault=True, desc="scale-space smoothing factor")
    opt_tol = traits.Float(1e-5, usedefault=True, desc="convergence tolerance")
    inv_iter = traits.Int(20, usedefault=True, desc="fixed-point iterations of the inversion")
    inv_tol = traits.Float(1e-3, usedefault=True, desc="inversion tolerance")
    compute_qc = traits.Bool(True, usedefault=True,
                             desc="compute local CC / Jacobian / inverse-consistency numbers")


class _SyNOutputSpec(TraitedSpec):
    out_mapping = File(exists=True, desc="SyN mapping in DIPY's layout (read_mapping)")
    out_forward_xfm = File(exists=True, desc="ITK composite .h5 resampling moving -> reference")
    out_inverse_xfm = File(exists=True, desc="ITK composite .h5 resampling reference -> moving")
    out_affine_xfm = File(exists=True, desc="the prealign as an ITK text transform")
    out_file = File(exists=True, desc="moving image warped onto the reference grid")
    out_unaligned = File(exists=True, desc="moving image on the reference grid, no transform"
                                           " (the 'before' picture)")
    out_qc = File(exists=True, desc="QC numbers and parameters as JSON")
    qc = traits.Dict(desc="QC numbers (local CC before/affine/SyN, Jacobian, folding, ICE)")
    dipy_meta = traits.Dict(desc="what DIPY's own read_mapping needs to use out_mapping "
                                 "(sidecar metadata)")
    parameters = traits.Dict(desc="engine parameters used")
    elapsed = traits.Float(desc="seconds spent in the optimisation")


def syn_parameters(inputs) -> dict:
    """The engine parameters of a :class:`SyNRegistration` input spec, as a plain dict."""
    return {
        "metric": "CC", "level_iters": list(inputs.level_iters),
        "cc_radius": int(inputs.cc_radius), "sigma_diff": float(inputs.sigma_diff),
        "step_length": float(inputs.step_length),
        "ss_sigma_factor": float(inputs.ss_sigma_factor), "opt_tol": float(inputs.opt_tol),
        "inv_iter": int(inputs.inv_iter), "inv_tol": float(inputs.inv_tol),
    }


class SyNRegistration(SimpleInterface):
    """Symmetric diffeomorphic (SyN, CC metric) registration of a b0 to the reference.

    Wraps :class:`synflow.align.imwarp.SymmetricDiffeomorphicRegistration` with
    :class:`synflow.align.metrics.CCMetric`, and writes the mapping three ways:
    DIPY's layout (``read_mapping(fname)`` restores it), and ITK composite ``.h5`` in
    both directions (``forward`` resamples a b0-space image onto the reference, i.e.
    BIDS ``from-dwiref_to-<ref>_mode-image``).  QC numbers (in the reference mask):
    local CC before registration, after the affine and after SyN; min/max Jacobian
    determinant and % folding (J <= 0); inverse-consistency error in mm.
    """

    input_spec = _SyNInputSpec
    output_spec = _SyNOutputSpec

    def _run_interface(self, runtime):
        from synflow.align import write_mapping
        from synflow.align.imaffine import AffineMap
        from synflow.align.imwarp import SymmetricDiffeomorphicRegistration
        from synflow.align.metrics import CCMetric
        from synflow.io.itk import write_itk_affine, write_itk_composite

        _set_threads(self.inputs.num_threads)
        static, static_aff, static_img = load_volume(self.inputs.reference_file)
        moving, moving_aff, _ = load_volume(self.inputs.moving_file)
        prealign = (np.loadtxt(self.inputs.prealign_file) if isdefined(self.inputs.prealign_file)
                    else np.eye(4))
        params = syn_parameters(self.inputs)
        metric = CCMetric(3, sigma_diff=params["sigma_diff"], radius=params["cc_radius"])
        sdr = SymmetricDiffeomorphicRegistration(
            metric, level_iters=params["level_iters"], step_length=params["step_length"],
            ss_sigma_factor=params["ss_sigma_factor"], opt_tol=params["opt_tol"],
            inv_iter=params["inv_iter"], inv_tol=params["inv_tol"])
        t0 = time.perf_counter()
        mapping = sdr.optimize(static, moving, static_aff, moving_aff, prealign)
        elapsed = time.perf_counter() - t0
        warped = mapping.transform(moving)

        cwd = Path(runtime.cwd)
        out = {
            "out_mapping": str(cwd / "mapping_dipy.nii.gz"),
            "out_forward_xfm": str(cwd / "forward_xfm.h5"),
            "out_inverse_xfm": str(cwd / "inverse_xfm.h5"),
            "out_affine_xfm": str(cwd / "affine_xfm.txt"),
            "out_file": out_name(self.inputs.moving_file, "_syn", runtime.cwd),
            "out_unaligned": out_name(self.inputs.moving_file, "_unaligned", runtime.cwd),
            "out_qc": str(cwd / "qc.json"),
        }
        write_mapping(mapping, out["out_mapping"])
        write_itk_composite(mapping, out["out_forward_xfm"], direction="forward")
        write_itk_composite(mapping, out["out_inverse_xfm"], direction="inverse")
        write_itk_affine(prealign, out["out_affine_xfm"])
        save_like(warped, static_img, out["out_file"])
        unaligned = AffineMap(np.eye(4), static.shape, static_aff, moving.shape,
                              moving_aff).transform(moving)
        save_like(unaligned, static_img, out["out_unaligned"])

        # quality numbers only: the time SyN took is a timing (``elapsed``; the report's
        # "Time per step" has the step's wall time), not a quality number
        qc: dict = {}
        if self.inputs.compute_qc:
            mask = _mask_or_none(self.inputs.reference_mask)
            qc.update(registration_qc(mapping, static, moving, static_aff, moving_aff,
                                      prealign, warped, unaligned, mask))
        atomic_write_text(out["out_qc"], json.dumps({"qc": qc, "parameters": params}, indent=2))
        self._results.update(out, qc=qc, parameters=params, elapsed=elapsed,
                             dipy_meta=dipy_read_mapping_meta(mapping))
        return runtime


def dipy_read_mapping_meta(mapping) -> dict:
    """Sidecar entries that let DIPY's ``read_mapping`` rebuild ``mapping`` exactly.

    DIPY's reader takes the grids from two images and the pre-alignment as an argument (it
    is not in the file); ``synflow.align.read_mapping(fname)`` needs none of this.
    """
    prealign = np.eye(4) if mapping.prealign is None else np.asarray(mapping.prealign)
    return {"DIPYReadMapping": {
        "Call": "dipy.align.read_mapping(<this file>, <the desc-b0_dwiref image (native b0)>, "
                "<the reference image>, prealign=np.array(DIPYReadMapping['Prealign']))",
        "Prealign": [[float(v) for v in row] for row in prealign],
    }}


def registration_qc(mapping, static: np.ndarray, moving: np.ndarray, static_aff: np.ndarray,
                    moving_aff: np.ndarray, prealign: np.ndarray, warped: np.ndarray,
                    unaligned: np.ndarray, mask: np.ndarray | None) -> dict:
    """QC numbers of a SyN result, all inside ``mask`` (reference grid; default ``static>0``).

    Keys (those of ``synflow.viz.report.QC_DESCRIPTIONS``): ``cc_before``/``cc_affine``/
    ``cc_syn`` (mean local
    normalised cross-correlation), ``jacobian_min``/``jacobian_max``,
    ``folding_percent`` (% of mask voxels with J <= 0), ``ice_mean_mm``/``ice_p95_mm``/
    ``ice_max_mm`` (inverse-consistency error).
    """
    from synflow.align import qc as aqc
    from synflow.align.imaffine import AffineMap

    if mask is None or mask.shape != static.shape:
        mask = static > 0
    affine_only = AffineMap(prealign, static.shape, static_aff, moving.shape,
                            moving_aff).transform(moving)
    disp = np.asarray(mapping.get_forward_field(), dtype=np.float32)
    grid2world = getattr(mapping, "disp_grid2world", None)
    if grid2world is None or disp.shape[:3] != static.shape:
        grid2world = static_aff
    jac = np.asarray(aqc.jacobian_determinant(disp, grid2world))
    jac_mask = mask if jac.shape == mask.shape else np.ones(jac.shape, bool)
    fold = float(aqc.folding_fraction(jac, jac_mask))  # already a percentage
    ice = aqc.inverse_consistency_error(mapping, mask=mask)
    return {
        "cc_before": float(aqc.local_cc(static, unaligned, mask=mask)),
        "cc_affine": float(aqc.local_cc(static, affine_only, mask=mask)),
        "cc_syn": float(aqc.local_cc(static, warped, mask=mask)),
        "jacobian_min": float(jac[jac_mask].min()),
        "jacobian_max": float(jac[jac_mask].max()),
        "folding_percent": fold,
        "ice_mean_mm": float(ice[0]), "ice_p95_mm": float(ice[1]), "ice_max_mm": float(ice[2]),
    }


#: A registration is flagged when more than this % of the reference-mask voxels fold
#: (Jacobian determinant <= 0).  A diffeomorphism has none; SyN's discretised maps show a
#: few at sharp corners (0 on the demo data), while a failed registration folds whole regions.
MAX_FOLDING_PERCENT: float = 0.1


def registration_warnings(qc: dict, max_folding_percent: float = MAX_FOLDING_PERCENT
                          ) -> list[str]:
    """Sentences saying why the QC numbers of :func:`registration_qc` look like a failure.

    Two rules: local CC after SyN not above local CC after the affine (SyN made the match
    worse, or nothing), and ``folding_percent > max_folding_percent``.  Missing numbers
    (``compute_qc=False``) give no warning.
    """
    out = []
    cc_aff, cc_syn = qc.get("cc_affine"), qc.get("cc_syn")
    if cc_aff is not None and cc_syn is not None and not float(cc_syn) > float(cc_aff):
        out.append(f"registration may have failed: local CC after SyN ({float(cc_syn):.3f}) "
                   f"is not above local CC after the affine ({float(cc_aff):.3f})")
    fold = qc.get("folding_percent")
    if fold is not None and not float(fold) <= max_folding_percent:
        out.append(f"registration may have failed: {float(fold):.3g} % of the brain-mask "
                   f"voxels fold (Jacobian <= 0), above {max_folding_percent:g} %")
    return out


def qc_status(qc: dict, data_qc: dict | None = None,
              max_folding_percent: float = MAX_FOLDING_PERCENT) -> dict:
    """``qc`` plus the data record and a verdict.

    Adds ``data_qc``'s entries (``NonFiniteVoxels``, ``NonFiniteValues``,
    ``NonFiniteVoxelsInMask``, ``BrainMaskVoxels``, ``AffineSource``, ``AffineShear``),
    ``QCWarnings`` (``data_qc["DataWarnings"]`` then :func:`registration_warnings`) and
    ``QCStatus``: ``"warning"`` when there is any warning, else ``"ok"``.
    """
    data = dict(data_qc or {})
    warnings = [str(w) for w in data.pop("DataWarnings", [])]
    warnings += registration_warnings(qc, max_folding_percent)
    return {**qc, **data, "QCStatus": "warning" if warnings else "ok",
            "QCWarnings": warnings}


class _QCStatusInputSpec(BaseInterfaceInputSpec):
    qc = traits.Dict(mandatory=True, desc="SyNRegistration.qc")
    data_qc = traits.Dict(desc="MedianOtsu.data_qc (non-finite voxels, affine source/shear)")
    max_folding_percent = traits.Float(MAX_FOLDING_PERCENT, usedefault=True,
                                       desc="warn above this % of folding mask voxels")


class _QCStatusOutputSpec(TraitedSpec):
    qc = traits.Dict(desc="the QC numbers with QCStatus and QCWarnings (qc_status)")


class QCStatus(SimpleInterface):
    """Merge the data record into the QC numbers and give the verdict (:func:`qc_status`)."""

    input_spec = _QCStatusInputSpec
    output_spec = _QCStatusOutputSpec

    def _run_interface(self, runtime):
        data_qc = dict(self.inputs.data_qc) if isdefined(self.inputs.data_qc) else {}
        self._results["qc"] = qc_status(dict(self.inputs.qc), data_qc,
                                        self.inputs.max_folding_percent)
        return runtime


def output_grid2world(mapping, forward: bool) -> np.ndarray:
    """Grid of ``mapping.transform`` (``forward``) or ``transform_inverse`` output.

    DIPY semantics: a plain map's ``transform`` resamples onto its *domain*; a map with
    ``is_inverse=True`` (what ``SymmetricDiffeomorphicRegistration.optimize`` returns:
    domain = moving, codomain = static) swaps the two, so ``transform`` lands on the
    codomain (the reference) and ``transform_inverse`` on the domain (the b0 grid).
    """
    use_codomain = forward == bool(getattr(mapping, "is_inverse", False))
    grid = mapping.codomain_grid2world if use_codomain else mapping.domain_grid2world
    return np.eye(4) if grid is None else np.asarray(grid, dtype=np.float64)


class _ApplyRegistrationInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True,
                   desc="image to resample (3-D, or 4-D: each volume resampled)")
    mapping_file = File(exists=True, mandatory=True,
                        desc="SyN mapping in DIPY's layout (SyNRegistration.out_mapping)")
    direction = traits.Enum("forward", "inverse", usedefault=True,
                            desc="forward: moving (b0) space -> reference grid; "
                                 "inverse: reference space -> moving (b0) grid")
    interpolation = traits.Enum("linear", "nearest", usedefault=True,
                                desc="'nearest' for label images and masks")
    out_suffix = traits.Str("_warped", usedefault=True, desc="output name suffix")
    num_threads = traits.Int(1, usedefault=True, nohash=True, desc="engine threads")


class _ApplyRegistrationOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="resampled image")


class ApplyRegistration(SimpleInterface):
    """Resample any image with a saved SyN mapping (``read_mapping(fname)``).

    Integer images resampled with ``nearest`` keep their data type (labels, masks).
    """

    input_spec = _ApplyRegistrationInputSpec
    output_spec = _ApplyRegistrationOutputSpec

    def _run_interface(self, runtime):
        from synflow.align import read_mapping

        _set_threads(self.inputs.num_threads)
        mapping = read_mapping(self.inputs.mapping_file)
        data, _, img = load_nifti(self.inputs.in_file, return_img=True)
        forward = self.inputs.direction == "forward"
        func = mapping.transform if forward else mapping.transform_inverse
        target = output_grid2world(mapping, forward)
        interp = self.inputs.interpolation
        vols = data[..., None] if data.ndim == 3 else data
        if vols.ndim != 4:
            raise ValueError(f"{self.inputs.in_file}: expected a 3-D or 4-D image, "
                             f"got shape {data.shape}")
        out = np.stack([np.asarray(func(vols[..., i].astype(np.float32),
                                        interpolation=interp))
                        for i in range(vols.shape[3])], axis=-1)
        if data.ndim == 3:
            out = out[..., 0]
        keep_int = interp == "nearest" and np.issubdtype(data.dtype, np.integer)
        dtype = data.dtype if keep_int else np.float32
        out_img = nib.Nifti1Image(out.astype(dtype), np.asarray(target, dtype=np.float64))
        out_img.header.set_xyzt_units(*img.header.get_xyzt_units())
        out_file = out_name(self.inputs.in_file, self.inputs.out_suffix, runtime.cwd)
        atomic_write_nifti(out_img, out_file)
        self._results["out_file"] = out_file
        return runtime
