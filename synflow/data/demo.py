"""A small demo BIDS DWI dataset, generated on the fly, with the true template mapping.

:func:`make_demo_dataset` writes a valid BIDS dataset whose participants are synthetic:
the bundled MNI152NLin2009aSym template anatomy, deformed by a known random diffeomorphism
and moved by a known affine into each participant's native (scanner) world. The truth lives
in ``sourcedata/truth`` (ignored by BIDS tools) and :func:`demo_registration_error` scores a
template registration against it.

Truth convention (same as a DIPY SyN run with static = template, moving = native b0):
template voxel at world ``x`` (MNI mm, bundled 2 mm grid) shows the anatomy found in the
participant's native world at ``pull(x) = A @ (x + u(x))``, ``u`` = the stored displacement
(mm, on the template grid) and ``A`` the stored affine (template world -> native world).
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from synflow._atomic import atomic_path
from synflow.data import TEMPLATE_SPACE
from synflow.data import phantom as ph

__all__ = ["make_demo_dataset", "load_truth", "demo_registration_error", "DemoTruth"]

_PULL = f"from-{TEMPLATE_SPACE}_to-dwi_desc-pull"

_TRUTH_README = f"""\
Ground truth of the synflow demo dataset (synthetic; ignored by BIDS tools).

For every DWI series <prefix> = sub-XX[_ses-YY][_run-N] (same entities as the BIDS file):

* <prefix>_{_PULL}_xfm.txt
    4x4 affine A, template world -> native world (RAS mm). np.loadtxt.
* sub-XX_{_PULL}_displacement.nii.gz  (one per participant: all its series share the
    anatomy; a <prefix>_..._displacement.nii.gz file, if present, takes precedence)
    float32 (X, Y, Z, 3) displacement u in mm (world RAS), on the bundled template grid
    (synflow.data.get_template(), {TEMPLATE_SPACE}, 2 mm, 98x116x94; the file's affine
    is that grid's voxel -> world).
    The template voxel at world x (mm) shows the participant's anatomy found at the native
    world point   pull(x) = A @ (x + u(x))   of the reference b0 volume (volume 0).
    This is what a DIPY/synflow SyN run with static = template, moving = native b0 and
    prealign = A estimates: mapping.transform(b0)[x] samples b0 at A @ (x + b(x)),
    b = mapping.get_forward_field().
* <prefix>_desc-motion_xfm.json
    per volume: bval and "vol_to_ref", a 4x4 rigid matrix M_k (native world -> native
    world): volume k at native point y shows the anatomy that volume 0 shows at M_k @ y.
    (To register volume k (moving) to volume 0 (static), the true DIPY prealign is
    inv(M_k).) Volume 0 and all b > 50 volumes have M_k = identity; the other b0-like
    volumes moved a little.
* <prefix>_desc-truth_dseg.nii.gz
    uint8 tissue labels (0 background, 1 CSF, 2 GM, 3 WM) of the reference volume, native grid.

Score an estimate with synflow.data.demo.demo_registration_error(truth_dir, subject,
pull_points_mm_on_reference_grid, session=..., run=...): mean / p95 of |estimate - pull|
(mm) over the template brain mask.
"""


def _write_nifti_gz(img: nib.Nifti1Image, path: Path, level: int = 1) -> None:
    """Fast gzip (level 1) NIfTI writer; atomic (temp file + rename)."""
    data = gzip.compress(img.to_bytes(), compresslevel=level, mtime=0)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _gradient_table(b0_values: tuple[float, ...], n_directions: int,
                    bval: float) -> tuple[np.ndarray, np.ndarray]:
    """b0-like volumes spread through the series (first volume is one), unit bvecs."""
    n_b0 = len(b0_values)
    n = n_b0 + n_directions
    pos = sorted({int(round(p)) for p in np.linspace(0, n - 1, n_b0)})
    while len(pos) < n_b0:  # pragma: no cover - tiny series
        pos.append(max(pos) + 1)
    bvals = np.full(n, float(bval))
    bvecs = np.zeros((n, 3))
    dirs = ph.unit_directions(n_directions)
    rest = [i for i in range(n) if i not in pos]
    for p, b in zip(pos, b0_values, strict=True):
        bvals[p] = float(b)
        if b > 0:  # scanners give a direction for small non-zero b
            bvecs[p] = [0.0, 0.0, 1.0]
    bvals[rest] = bval
    bvecs[rest] = dirs
    return bvals, bvecs


def _small_rigid(rng: np.random.Generator, centre: np.ndarray, deg: float,
                 mm: float) -> np.ndarray:
    return ph.random_affine(rng, deg, mm, 0.0, 0.0, center_mm=centre)


def make_demo_dataset(
    out_dir: str | os.PathLike,
    n_participants: int = 3,
    seed: int = 0,
    b0_values: tuple[float, ...] = (0.0, 5.0, 0.0),
    n_directions: int = 6,
    bval: float = 1000.0,
    mean_displacement_mm: float = 2.5,
    two_runs_participant: int | None = 2,
    snr: float = 25.0,
    overwrite: bool = False,
) -> Path:
    """Write a demo BIDS DWI dataset into ``out_dir`` and return its root.

    Layout: ``dataset_description.json``, ``README``, ``participants.tsv/.json``, and for
    each participant ``sub-XX/dwi/sub-XX[_run-N]_dwi.{nii.gz,bval,bvec,json}``. Participant
    ``two_runs_participant`` (1-based; None for none) has two runs (same anatomy, different
    head position) so multi-series code paths are exercised. Native grids: 2 mm
    (90x110x74) for sub-01, 2.5 mm (72x88x60) for the others, each with its own field of
    view and scanner origin.

    Each series: ``len(b0_values)`` b0-like volumes (b = 0 and b = 5 by default, the first
    volume is b = 0 and is the motion reference; the others moved by <= 1 degree / 1 mm)
    plus ``n_directions`` b = ``bval`` volumes (direction-dependent WM signal), Rician
    noise (SNR ``snr`` in WM on b0), a smooth bias field. Each participant's anatomy =
    template deformed by a random diffeomorphism (mean ``mean_displacement_mm`` over the
    brain) and a random affine (<= 6 degrees, <= 8 mm, <= 5 % scaling) plus a scanner-origin
    shift. The truth is written to ``sourcedata/truth`` (see its README and
    :func:`demo_registration_error`). ``bvec`` files hold directions along the voxel axes
    (= RAS for these axis-aligned grids), as DIPY reads them. Deterministic in ``seed``.
    """
    root = Path(out_dir)
    _check_demo_args(root, n_participants, b0_values, n_directions, overwrite)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    truth_root = _write_dataset_files(root, seed)
    rows = ["participant_id\tage\tsex"]
    bvals, bvecs = _gradient_table(tuple(b0_values), n_directions, bval)
    for p in range(1, n_participants + 1):
        sub = f"sub-{p:02d}"
        rows.append(f"{sub}\t{int(rng.integers(20, 70))}\t{'FM'[int(rng.integers(0, 2))]}")
        origin = rng.uniform(-20, 20, 3)
        subj = ph.make_subject(rng, mean_displacement_mm, max_rotation_deg=6.0,
                               max_translation_mm=8.0, max_scale=0.05,
                               native_origin_mm=origin)
        runs = [None] if p != two_runs_participant else [1, 2]
        for run in runs:
            _write_series(root, truth_root, sub, run, subj, p == 1, bvals, bvecs, snr, rng)
    (root / "participants.tsv").write_text("\n".join(rows) + "\n")
    return root


def _check_demo_args(root: Path, n_participants: int, b0_values: tuple[float, ...],
                     n_directions: int, overwrite: bool) -> None:
    """ValueError naming the argument for a bad :func:`make_demo_dataset` call."""
    if n_participants < 1:
        raise ValueError(f"n_participants must be >= 1, got {n_participants}")
    if not b0_values or any(b < 0 or b > 50 for b in b0_values) or b0_values[0] != 0:
        raise ValueError(f"b0_values must start with 0 and stay within [0, 50], got {b0_values}")
    if n_directions < 1:
        raise ValueError(f"n_directions must be >= 1, got {n_directions}")
    if root.exists() and any(root.iterdir()) and not overwrite:
        raise ValueError(f"out_dir {root} exists and is not empty (pass overwrite=True)")


def _write_dataset_files(root: Path, seed: int) -> Path:
    """Dataset-level files (description, README, participants.json, truth README).

    Returns the truth folder ``sourcedata/truth``.
    """
    (root / "dataset_description.json").write_text(json.dumps({
        "Name": "synflow demo DWI dataset (synthetic)",
        "BIDSVersion": "1.9.0",
        "DatasetType": "raw",
        "License": "Derived from MNI ICBM152 2009a (see LICENSE-MNI152.txt in synflow/data)",
        "Authors": ["synflow developers"],
        "GeneratedBy": [{"Name": "synflow.data.demo.make_demo_dataset",
                         "Description": f"seed={seed}"}],
    }, indent=2) + "\n")
    (root / "README").write_text(
        "Synthetic diffusion MRI dataset made by synflow.data.demo.make_demo_dataset.\n"
        "Anatomy: the MNI152NLin2009aSym template (via synflow's bundled 2 mm copy), deformed\n"
        "by known random diffeomorphisms and affines. The ground truth is in\n"
        "sourcedata/truth (see its README). Not real data.\n")
    (root / "participants.json").write_text(json.dumps({
        "age": {"Description": "age (synthetic)", "Units": "year"},
        "sex": {"Description": "sex (synthetic)", "Levels": {"F": "female", "M": "male"}},
    }, indent=2) + "\n")
    truth_root = root / "sourcedata" / "truth"
    truth_root.mkdir(parents=True, exist_ok=True)
    (truth_root / "README").write_text(_TRUTH_README)
    return truth_root


def _write_series(root: Path, truth_root: Path, sub: str, run: int | None,
                  subj: ph.SyntheticSubject, first: bool, bvals: np.ndarray,
                  bvecs: np.ndarray, snr: float, rng: np.random.Generator) -> None:
    """Simulate one DWI series of ``subj`` and write it (BIDS files) and its truth."""
    tis = ph.load_template_tissues(2.0)
    centre = ph.brain_centre(tis)
    prefix = sub if run is None else f"{sub}_run-{run}"
    to_native = subj.to_native.copy()
    if run == 2:  # same head, repositioned: extra rigid motion about the brain centre
        c_nat = to_native[:3, :3] @ centre + to_native[:3, 3]
        to_native = _small_rigid(rng, c_nat, 5.0, 6.0) @ to_native
    series = ph.SyntheticSubject(subj.forward, subj.inverse, to_native,
                                 subj.template_affine, subj.info)
    vs, shape = (2.0, (90, 110, 74)) if first else (2.5, (72, 88, 60))
    aff = ph.native_grid(series, vs, shape, offset_mm=rng.uniform(-6, 6, 3))
    c_nat = to_native[:3, :3] @ centre + to_native[:3, 3]
    motions = [_small_rigid(rng, c_nat, 1.0, 1.0) if k > 0 and b <= 50 else np.eye(4)
               for k, b in enumerate(bvals)]
    ref_tis = series.tissues_on(shape, aff)
    data = _simulate_dwi(ref_tis, aff, bvals, bvecs, motions, snr, rng)
    _write_dwi_files(root / sub / "dwi", prefix, data, aff, bvals, bvecs, vs, run)
    tdir = truth_root / sub
    tdir.mkdir(parents=True, exist_ok=True)
    np.savetxt(tdir / f"{prefix}_{_PULL}_xfm.txt", to_native, fmt="%.10f",
               header="template world -> native world (RAS mm); "
                      "pull(x) = A @ (x + u(x))")
    if run in (None, 1):  # one displacement per participant (same anatomy)
        disp = nib.Nifti1Image(series.forward.astype(np.float32), tis.affine)
        disp.header.set_xyzt_units("mm")
        _write_nifti_gz(disp, tdir / f"{sub}_{_PULL}_displacement.nii.gz")
    (tdir / f"{prefix}_desc-motion_xfm.json").write_text(json.dumps({
        "Description": "vol_to_ref M_k: volume k at native y shows the anatomy "
                       "volume 0 shows at M_k @ y (RAS mm)",
        "volumes": [{"index": k, "bval": float(bvals[k]),
                     "vol_to_ref": np.round(motions[k], 10).tolist()}
                    for k in range(len(bvals))],
    }, indent=1) + "\n")
    labels = ph.tissue_labels(ref_tis["CSF"], ref_tis["GM"], ref_tis["WM"])
    _write_nifti_gz(nib.Nifti1Image(labels.astype(np.uint8), aff),
                    tdir / f"{prefix}_desc-truth_dseg.nii.gz")


def _simulate_dwi(ref_tis: dict[str, np.ndarray], aff: np.ndarray, bvals: np.ndarray,
                  bvecs: np.ndarray, motions: list[np.ndarray], snr: float,
                  rng: np.random.Generator) -> np.ndarray:
    """Noisy, biased DWI volumes (float32 grid + (n,)); moved b0-like volumes resampled."""
    shape = ref_tis["CSF"].shape
    wm_signal = 1000.0 * ph.B0_CONTRAST["WM"]
    fib = ph.random_fibre_directions(shape, aff, rng)
    bias = ph.bias_field(shape, aff, 0.2, rng)
    data = np.empty(shape + (len(bvals),), np.float32)
    for k in range(len(bvals)):
        if k == 0 or bvals[k] > 50:
            t_k = ref_tis
        else:  # moved head: resample the reference tissue maps at M_k @ y
            pts = ph.grid_world_points(shape, aff).astype(np.float32)
            mk = motions[k].astype(np.float32)
            vox = ph.world_to_vox(pts @ mk[:3, :3].T + mk[:3, 3], aff)
            t_k = {n: ph.sample_image(v, vox, order=1, mode="constant")
                   for n, v in ref_tis.items()}
        sig = ph.dwi_signal(t_k, bvals[k:k + 1], bvecs[k:k + 1], fib)[..., 0]
        data[..., k] = ph.add_rician_noise(sig * bias, wm_signal / snr, rng)
    return data


def _write_dwi_files(dwi_dir: Path, prefix: str, data: np.ndarray, aff: np.ndarray,
                     bvals: np.ndarray, bvecs: np.ndarray, vs: float, run: int | None) -> None:
    """``<prefix>_dwi.{nii.gz,bval,bvec,json}`` (int16 image, sidecar with BIDS metadata)."""
    dwi_dir.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.clip(np.rint(data), 0, 32767).astype(np.int16), aff)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_qform(aff, code=1)
    img.header.set_sform(aff, code=1)
    _write_nifti_gz(img, dwi_dir / f"{prefix}_dwi.nii.gz")
    np.savetxt(dwi_dir / f"{prefix}_dwi.bval", bvals[None], fmt="%g")
    np.savetxt(dwi_dir / f"{prefix}_dwi.bvec", bvecs.T, fmt="%.6f")
    (dwi_dir / f"{prefix}_dwi.json").write_text(json.dumps({
        "PhaseEncodingDirection": "j-",
        "TotalReadoutTime": 0.0502,
        "EffectiveEchoSpacing": 0.00057,
        "EchoTime": 0.089,
        "RepetitionTime": 7.2,
        "MagneticFieldStrength": 3,
        "Manufacturer": "synflow-phantom",
        "SliceThickness": vs,
        "MultipartID": "dwi_1" if run is None else f"dwi_run{run}",
    }, indent=2) + "\n")


@dataclass
class DemoTruth:
    """Ground truth of one demo series: ``pull(x) = affine @ (x + displacement(x))``.

    ``displacement``: float32 template grid + (3,), mm; ``reference_affine``: template grid
    voxel -> MNI mm; ``affine``: template world -> native world; ``brain_mask``: template
    brain (bool); ``motion``: per-volume ``vol_to_ref`` matrices.
    """

    displacement: np.ndarray
    reference_affine: np.ndarray
    affine: np.ndarray
    brain_mask: np.ndarray
    motion: list[np.ndarray] = field(default_factory=list)
    bvals: list[float] = field(default_factory=list)

    def pull_points(self) -> np.ndarray:
        """True pull points (native world mm), float64 template grid + (3,)."""
        x = ph.grid_world_points(self.displacement.shape[:3], self.reference_affine)
        y = x + self.displacement.astype(np.float64)
        return y @ self.affine[:3, :3].T + self.affine[:3, 3]


def _series_prefix(truth_dir: Path, subject: str, session: str | None,
                   run: int | str | None) -> Path:
    sub = subject if subject.startswith("sub-") else f"sub-{subject}"
    sdir = truth_dir / sub
    if session is not None:
        ses = session if str(session).startswith("ses-") else f"ses-{session}"
        sdir = sdir / ses
    cands = sorted(sdir.glob(f"*_{_PULL}_xfm.txt")) if sdir.is_dir() else []
    if not cands:
        raise ValueError(f"no truth for subject={subject!r} session={session!r} in {truth_dir}")
    if run is not None:
        tag = f"_run-{int(str(run).removeprefix('run-'))}_"
        cands = [c for c in cands if tag in c.name]
    if len(cands) != 1:
        names = [c.name.replace(f"_{_PULL}_xfm.txt", "") for c in sorted(
            sdir.glob(f"*_{_PULL}_xfm.txt"))]
        raise ValueError(f"subject={subject!r}: pass run= (or session=) to pick one of {names}")
    return Path(str(cands[0]).replace(f"_{_PULL}_xfm.txt", ""))


def load_truth(truth_dir: str | os.PathLike, subject: str, session: str | None = None,
               run: int | str | None = None) -> DemoTruth:
    """Load the truth of one series (``subject`` as ``"01"`` or ``"sub-01"``)."""
    prefix = _series_prefix(Path(truth_dir), subject, session, run)
    a = np.loadtxt(f"{prefix}_{_PULL}_xfm.txt")
    dfile = Path(f"{prefix}_{_PULL}_displacement.nii.gz")
    if not dfile.exists():  # shared by all series of the participant
        sub = prefix.name.split("_")[0]
        dfile = prefix.parent / f"{sub}_{_PULL}_displacement.nii.gz"
    img = nib.load(str(dfile))
    disp = np.asarray(img.dataobj, dtype=np.float32)
    mask = ph.load_template_tissues(2.0).brain_mask
    if disp.shape[:3] != mask.shape:
        raise ValueError(f"truth displacement grid {disp.shape} is not the template grid")
    mo = json.loads(Path(f"{prefix}_desc-motion_xfm.json").read_text())["volumes"]
    return DemoTruth(displacement=disp, reference_affine=img.affine, affine=a,
                     brain_mask=mask.copy(), motion=[np.array(v["vol_to_ref"]) for v in mo],
                     bvals=[v["bval"] for v in mo])


def demo_registration_error(truth_dir: str | os.PathLike, subject: str,
                            pull_points_mm_on_reference_grid: np.ndarray,
                            session: str | None = None,
                            run: int | str | None = None) -> dict[str, float]:
    """Score a template -> native registration of a demo series.

    ``pull_points_mm_on_reference_grid``: float ``(98, 116, 94, 3)``, for each voxel of the
    bundled template grid the native-world point (mm) the estimate samples (for a SyN map
    with static = template: ``P @ (x + mapping.get_forward_field()(x))``). Returns
    ``{"mean", "median", "p95", "max"}`` of the end-point error (mm) over the template brain.
    """
    t = load_truth(truth_dir, subject, session, run)
    est = np.asarray(pull_points_mm_on_reference_grid, dtype=np.float64)
    if est.shape != t.displacement.shape:
        raise ValueError(f"pull_points_mm_on_reference_grid must have shape "
                         f"{t.displacement.shape}, got {est.shape}")
    return ph.endpoint_error_stats(est, t.pull_points(), t.brain_mask,
                                   "pull_points_mm_on_reference_grid",
                                   "has non-finite values in the brain")
