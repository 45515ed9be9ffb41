"""Bundled data for synflow: a 2 mm MNI152NLin2009aSym-derived template and small test images.

Everything here ships inside the package (no network access is ever attempted).

* :func:`get_template` -- paths of the 2 mm template files (RAS, MNI world, 98x116x94).
* :func:`get_fnames` -- DIPY-style access to synflow's bundled example files
  (``"b0_pair"``, ``"small_dwi"``, template names).
* :mod:`synflow.data.phantom` -- synthetic registration cases with known answers (a package:
  deformations, contrast and noise, cases, subjects, DWI simulation, example files).
* :mod:`synflow.data.demo` -- a demo BIDS DWI dataset generated on the fly.

The template is derived from the ICBM 2009a nonlinear symmetric template
(see ``LICENSE-MNI152.txt`` in this folder).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DATA_DIR", "TEMPLATE_SPACE", "TEMPLATE_KINDS", "get_template", "get_fnames"]

#: Folder holding the bundled files.
DATA_DIR: Path = Path(__file__).resolve().parent
#: TemplateFlow identifier of the bundled template space (world = MNI RAS mm).
TEMPLATE_SPACE: str = "MNI152NLin2009aSym"
_PREFIX = f"tpl-{TEMPLATE_SPACE}_res-02"

#: kind -> file name of the bundled 2 mm template files.
TEMPLATE_KINDS: dict[str, str] = {
    "b0": f"{_PREFIX}_desc-b0_dwiref.nii.gz",
    "brainmask": f"{_PREFIX}_desc-brain_mask.nii.gz",
    "headmask": f"{_PREFIX}_desc-head_mask.nii.gz",
    "GM": f"{_PREFIX}_label-GM_probseg.nii.gz",
    "WM": f"{_PREFIX}_label-WM_probseg.nii.gz",
    "CSF": f"{_PREFIX}_label-CSF_probseg.nii.gz",
}

_FNAMES: dict[str, tuple[str, ...]] = {
    "b0_pair": ("tutorial_static_b0.nii.gz", "tutorial_moving_b0.nii.gz", "tutorial_prealign.txt"),
    "small_dwi": ("small_dwi.nii.gz", "small_dwi.bval", "small_dwi.bvec"),
    "template_b0": (TEMPLATE_KINDS["b0"],),
    "template_brainmask": (TEMPLATE_KINDS["brainmask"],),
    "template_headmask": (TEMPLATE_KINDS["headmask"],),
    "template_GM": (TEMPLATE_KINDS["GM"],),
    "template_WM": (TEMPLATE_KINDS["WM"],),
    "template_CSF": (TEMPLATE_KINDS["CSF"],),
}

#: DIPY names that need a download in DIPY -> the bundled synflow alternative.
_DIPY_NETWORK_NAMES: dict[str, str] = {
    "stanford_hardi": "b0_pair (static b0) or small_dwi (a small 4-D DWI series)",
    "stanford_b0": "b0_pair",
    "syn_data": "b0_pair (static, moving, prealign)",
    "stanford_t1": "template_b0 / get_template('b0')",
    "mni_template": "get_template('b0')",
    "sherbrooke_3shell": "small_dwi",
    "taiwan_ntu_dsi": "small_dwi",
    "cfin_multib": "small_dwi",
    "ivim": "small_dwi",
    "scil_b0": "b0_pair",
}


def get_template(kind: str = "b0") -> Path:
    """Path of a bundled 2 mm MNI152NLin2009aSym template file.

    Parameters
    ----------
    kind
        ``"b0"`` (b0/T2-like contrast, float in [0, 1]: CSF > GM > WM > scalp > 0),
        ``"brainmask"`` (binary), ``"headmask"`` (binary, synthetic head),
        ``"GM"``, ``"WM"``, ``"CSF"`` (probabilities in [0, 1] stored as uint8 with
        ``scl_slope = 1/255``; GM + WM + CSF <= 1).

    Returns
    -------
    pathlib.Path
        An existing ``.nii.gz`` file; grid 98x116x94, 2 mm isotropic, affine voxel -> MNI RAS mm.
    """
    try:
        name = TEMPLATE_KINDS[kind]
    except (KeyError, TypeError):
        raise ValueError(
            f"kind must be one of {sorted(TEMPLATE_KINDS)}, got {kind!r}"
        ) from None
    return DATA_DIR / name


def get_fnames(name: str = "b0_pair") -> str | tuple[str, ...]:
    """Paths of bundled example files, mirroring ``dipy.data.get_fnames`` (returns ``str``).

    Parameters
    ----------
    name
        * ``"b0_pair"`` -> ``(static_b0, moving_b0, prealign_txt)``: two b0-like volumes of
          different synthetic subjects on different grids (static 2 mm 81x106x76, moving
          2.5 x 2.5 x 3 mm), head with skull (not skull-stripped), and a 4x4 pre-alignment
          matrix (``np.loadtxt``) mapping static-world -> moving-world mm (DIPY's
          ``prealign``), close to, but not exactly, the true affine.
        * ``"small_dwi"`` -> ``(dwi_nii, bval, bvec)``: a small 4-D series (b0s + b=1000).
        * ``"template_b0"``, ``"template_brainmask"``, ``"template_headmask"``,
          ``"template_GM"``, ``"template_WM"``, ``"template_CSF"`` -> the template file
          (a single ``str``).

    Raises
    ------
    ValueError
        For unknown names, and for DIPY names that require a download: synflow ships no
        network data; the message names the bundled alternative.
    """
    if name in _FNAMES:
        paths = tuple(str(DATA_DIR / f) for f in _FNAMES[name])
        return paths[0] if len(paths) == 1 else paths
    if name in _DIPY_NETWORK_NAMES:
        raise ValueError(
            f"name={name!r} is a DIPY dataset that needs a download; synflow ships no "
            f"network data. Use the bundled alternative: {_DIPY_NETWORK_NAMES[name]}."
        )
    raise ValueError(f"name must be one of {sorted(_FNAMES)}, got {name!r}")
