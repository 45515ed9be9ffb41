"""DIPY's 3-D SyN tutorial, verbatim, on synflow (issue 9).

The code blocks of DIPY's ``syn_registration_3d`` example (its Sphinx-Gallery page,
``tests/dipy_conformance/tutorials/syn_registration_3d.rst``, DIPY 1.12, BSD licence)
are run to their last line with only two kinds of changes:

* imports: ``dipy`` -> ``synflow``;
* data: ``get_fnames`` is a stand-in that hands out synflow's bundled files instead of
  DIPY's downloads -- ``"stanford_hardi"`` -> ``small_dwi`` (a 4-D series whose first
  volume is a b0, like Stanford HARDI), ``"syn_data"`` -> the bundled moving b0.

Everything else, parameters included, is the tutorial's.  Figures and the mapping file
are written to ``tmp_path``.  The last line, ``read_mapping("mapping.nii.gz",
hardi_fname, b0_fname)``, passes the images as (static 4-D series, moving b0), the
reverse of DIPY's documented order: synflow recognises them by their grids (one
UserWarning) and returns a map that warps exactly like the one saved.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np

RST = Path(__file__).parent / "dipy_conformance" / "tutorials" / "syn_registration_3d.rst"


def tutorial_code(rst: Path = RST) -> str:
    """The Python code blocks of a Sphinx-Gallery page, in order, dedented."""
    blocks, current = [], None
    for line in rst.read_text().splitlines():
        if line.strip() == ".. code-block:: Python":
            current = []
            blocks.append(current)
        elif current is not None:
            if line.strip() and not line.startswith("    "):
                current = None  # the block ends at the first unindented line
            else:
                current.append(line[4:])
    return "\n".join("\n".join(b) for b in blocks)


def to_synflow(code: str) -> str:
    """Imports dipy -> synflow; ``get_fnames`` comes from the test (bundled data)."""
    code = re.sub(r"^from dipy\.data import get_fnames\n", "", code, flags=re.M)
    code = re.sub(r"^(from|import) dipy(\.|\b)", r"\1 synflow\2", code, flags=re.M)
    assert "dipy" not in code
    return code


def bundled_get_fnames(name: str) -> tuple[str, ...]:
    """DIPY's ``get_fnames`` for the tutorial's two data sets, from synflow's bundle."""
    from synflow.data import get_fnames, get_template

    if name == "stanford_hardi":  # (dwi, bval, bvec), a 4-D series, volume 0 a b0
        return get_fnames("small_dwi")
    if name == "syn_data":  # (t1, b0): the tutorial uses only the b0
        return str(get_template("b0")), get_fnames("b0_pair")[1]
    raise ValueError(f"the tutorial asks for an unexpected data set {name!r}")


def test_tutorial_code_extraction():
    code = tutorial_code()
    assert code.strip().splitlines()[0] == "import numpy as np"
    assert code.rstrip().endswith(
        'saved_mapping = read_mapping("mapping.nii.gz", hardi_fname, b0_fname)')
    assert code.count("regtools.overlay_slices(") == 3


def test_dipy_syn_registration_3d_tutorial_runs_verbatim(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    monkeypatch.chdir(tmp_path)
    ns: dict = {"get_fnames": bundled_get_fnames, "__name__": "__tutorial__"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec(compile(to_synflow(tutorial_code()), str(RST), "exec"), ns)
    plt.close("all")

    for fig in ("input_3d.png", "warped_moving.png", "warped_static.png"):
        assert (tmp_path / fig).stat().st_size > 0
    order = [w for w in caught if issubclass(w.category, UserWarning)
             and "read_mapping" in str(w.message)]
    assert len(order) == 1, [str(w.message) for w in caught]

    mapping, saved = ns["mapping"], ns["saved_mapping"]
    np.testing.assert_array_equal(saved.transform(ns["moving"]), ns["warped_moving"])
    np.testing.assert_array_equal(saved.transform_inverse(ns["static"]), ns["warped_static"])
    np.testing.assert_array_equal(saved.transform(ns["moving"]), mapping.transform(ns["moving"]))
    assert ns["static"].ndim == 3 and ns["stanford_b0"].ndim == 3


