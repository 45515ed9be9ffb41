"""Small synthetic BIDS DWI datasets for the CLI/workflow tests and the pipeline bench.

The demo dataset (:mod:`synflow.data.demo`) is 2 mm and whole-head; the tests need
something ~8x smaller so a full command run takes seconds.  :func:`make_small_bids`
resamples the bundled template b0 to 4 mm, moves it by a small random affine per
participant and writes a 4-D series (b0s bright, b=1000 volumes darker, noise).
:func:`make_small_reference` writes the matching 4 mm reference for ``--reference``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

_BVALS = [0, 1000, 1000, 0, 1000, 1000]

#: The shortest SyN that still exercises every level, for tests on the 4 mm datasets below:
#: keyword arguments of the interfaces/workflows ...
CHEAP_SYN = {"level_iters": [2, 2, 0], "cc_radius": 2, "inv_iter": 5}
#: ... and the same settings as ``synflow`` command-line options.
CHEAP_CLI = ["--level-iters", *map(str, CHEAP_SYN["level_iters"]),
             "--cc-radius", str(CHEAP_SYN["cc_radius"]), "--inv-iter", str(CHEAP_SYN["inv_iter"])]


def _template_4mm() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from synflow.data import get_template

    img = nib.load(get_template("b0"))
    data = np.asanyarray(img.dataobj, dtype=np.float32)
    head = np.asanyarray(nib.load(get_template("headmask")).dataobj) > 0
    data = np.where(head, data, 0)
    small = ndimage.zoom(data, 0.5, order=1)
    aff = img.affine.copy()
    aff[:3, :3] *= 2.0
    return small.astype(np.float32), aff, head


def make_small_reference(path: str | Path) -> Path:
    """Write the 4 mm template b0 (whole head) to ``path``."""
    data, aff, _ = _template_4mm()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.Nifti1Image(data, aff).to_filename(path)
    return path


def _moved(data: np.ndarray, rng: np.random.Generator, max_rot_deg: float = 4.0,
           max_shift_vox: float = 1.5) -> np.ndarray:
    ang = np.deg2rad(rng.uniform(-max_rot_deg, max_rot_deg, 3))
    cx, cy, cz = np.cos(ang)
    sx, sy, sz = np.sin(ang)
    rot = (np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
           @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
           @ np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]]))
    centre = (np.array(data.shape) - 1) / 2
    offset = centre - rot @ centre + rng.uniform(-max_shift_vox, max_shift_vox, 3)
    return ndimage.affine_transform(data, rot, offset=offset, order=1).astype(np.float32)


def make_small_bids(root: str | Path, subjects: Sequence[str] = ("01", "02"),
                    sessions: Sequence[str] | None = None, seed: int = 0,
                    bvals: Sequence[float] = _BVALS) -> Path:
    """Write a small valid BIDS DWI dataset (4 mm, ~49x58x47, 6 volumes) at ``root``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps(
        {"Name": "synflow small test dataset", "BIDSVersion": "1.10.0",
         "DatasetType": "raw", "License": "CC0"}, indent=2))
    (root / "participants.tsv").write_text(
        "participant_id\n" + "".join(f"sub-{s}\n" for s in subjects))
    base, aff, _ = _template_4mm()
    rng = np.random.default_rng(seed)
    for sub in subjects:
        for ses in (sessions or [None]):
            moved = _moved(base, rng)
            vols = []
            for b in bvals:
                scale = 1000.0 if b < 50 else 350.0
                noise = rng.normal(0, 10.0, moved.shape)
                vols.append(np.clip(moved * scale + noise, 0, None))
            # a native grid that differs from the reference's (cropped field of view,
            # shifted origin), as real scans do: grid bugs cannot hide
            data = np.stack(vols, axis=-1).astype(np.float32)[2:-2, 3:-1, 1:-3]
            native = aff.copy()
            native[:3, 3] = aff[:3, :3] @ np.array([2.0, 3.0, 1.0]) + aff[:3, 3]
            folder = root / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "dwi"
            folder.mkdir(parents=True, exist_ok=True)
            stem = f"sub-{sub}" + (f"_ses-{ses}" if ses else "") + "_dwi"
            nib.Nifti1Image(data, native).to_filename(folder / f"{stem}.nii.gz")
            (folder / f"{stem}.bval").write_text(" ".join(f"{b:g}" for b in bvals) + "\n")
            dirs = rng.normal(size=(3, len(bvals)))
            dirs /= np.linalg.norm(dirs, axis=0)
            dirs[:, np.asarray(bvals) < 50] = 0
            (folder / f"{stem}.bvec").write_text(
                "\n".join(" ".join(f"{v:.6f}" for v in row) for row in dirs) + "\n")
            (folder / f"{stem}.json").write_text(json.dumps(
                {"PhaseEncodingDirection": "j-", "TotalReadoutTime": 0.05}))
    return root
