"""The reference the b0s are registered to: bundled template, any image, or a participant."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from synflow.interfaces import ApplyMask, ExtractB0, MedianOtsu
from synflow.workflows.dwi import DEFAULT_MASK_DILATION_MM


@dataclass
class Reference:
    """What to register to.

    ``kind`` is ``"template"`` (bundled MNI152NLin2009aSym-derived 2 mm b0-like template and
    its brain mask), ``"image"`` (any 3-D NIfTI, skull-stripped here with median-Otsu) or
    ``"participant"`` (the mean b0 of ``dwi_file``/``bval_file``, skull-stripped).
    ``space`` is the ``space``/``to`` entity of the outputs.
    """

    kind: str = "template"
    space: str = ""
    image: str | None = None
    mask: str | None = None
    participant: str | None = None
    dwi_file: str | None = None
    bval_file: str | None = None
    b0_threshold: float = 50.0
    spatial_reference: str | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in ("template", "image", "participant"):
            raise ValueError(f"Reference.kind must be template|image|participant, "
                             f"got {self.kind!r}")
        if self.kind == "template":
            from synflow.data import TEMPLATE_SPACE, get_template

            self.image = self.image or str(get_template("b0"))
            self.mask = self.mask or str(get_template("brainmask"))
            self.space = self.space or TEMPLATE_SPACE
        elif self.kind == "image":
            if not self.image:
                raise ValueError("Reference(kind='image') needs image=")
            self.space = self.space or "custom"
        else:
            if not (self.dwi_file and self.bval_file and self.participant):
                raise ValueError("Reference(kind='participant') needs participant=, "
                                 "dwi_file= and bval_file=")
            self.space = self.space or f"sub{self.participant}"

    def describe(self) -> dict:
        """JSON-able summary for sidecars and the report.

        Files are recorded so that the record stays true when synflow is reinstalled: a
        bundled template file by its name, the synflow version and its SHA-256 (never the
        site-packages path, which changes); a user's file by its path and SHA-256.
        """
        out: dict = {"Kind": self.kind, "Space": self.space}
        files = ({"Source": self.dwi_file} if self.kind == "participant"
                 else {"Image": self.image})
        if self.kind == "participant":
            out["Participant"] = self.participant
        if self.mask:
            files["Mask"] = self.mask
        bundled = False
        for key, fname in files.items():
            rec, in_package = _file_record(key, fname)
            out.update(rec)
            bundled = bundled or in_package
        if bundled:
            from synflow import __version__
            from synflow.data import TEMPLATE_SPACE

            out["Template"] = f"tpl-{TEMPLATE_SPACE} res-02"
            out["SynflowVersion"] = __version__
        return out


def file_sha256(fname: str | Path) -> str:
    """Hex SHA-256 of the bytes of ``fname`` (read in 1 MiB blocks)."""
    return _sha256_cached(str(Path(fname).resolve()), *_stamp(fname))


def _stamp(fname: str | Path) -> tuple[int, int]:
    st = Path(fname).stat()
    return st.st_size, st.st_mtime_ns


@lru_cache(maxsize=64)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _file_record(key: str, fname: str | None) -> tuple[dict, bool]:
    """``({key: path, key+"SHA256": checksum}, bundled)``; a bundled file by its name only."""
    from synflow.data import DATA_DIR

    if not fname:
        return {}, False
    path = Path(fname)
    if not path.is_file():
        return {key: str(fname)}, False
    bundled = path.resolve().parent == DATA_DIR
    return {key: path.name if bundled else str(fname),
            f"{key}SHA256": file_sha256(path)}, bundled


def init_reference_wf(reference: Reference, *, omp_nthreads: int = 1,
                      mask_dilation_mm: float = DEFAULT_MASK_DILATION_MM,
                      name: str = "reference_wf") -> pe.Workflow:
    """Prepare the reference image and its brain mask.

    * template: bundled b0-like template and its bundled brain mask;
    * image: the given image and median-Otsu's mask of it (or its ``mask`` if one is given);
    * participant: mean b0 of that participant's series (``ExtractB0``), median-Otsu.

    Workflow graphs (:func:`~synflow.workflows.graph.graph_text`, checked by a test);
    template (and image with a ``mask``)::

        apply_mask -> outputnode
        outputnode

    image::

        median_otsu -> apply_mask, outputnode
        apply_mask -> outputnode
        outputnode

    participant::

        extract_b0 -> apply_mask, median_otsu
        median_otsu -> apply_mask, outputnode
        apply_mask -> outputnode
        outputnode

    The image is then masked by the brain mask grown by ``mask_dilation_mm`` (0 = exactly
    skull-stripped, as in DIPY's tutorial).  The b0s get the same treatment in
    :func:`~synflow.workflows.dwi.init_dwi_registration_wf`: use the same value there.

    Inputs: none (everything comes from ``reference``).

    Outputs (``outputnode``)
    ------------------------
    reference
        Reference image masked by its brain mask grown by ``mask_dilation_mm``.
    reference_mask
        Its brain mask (not grown).
    """
    workflow = pe.Workflow(name=name)
    outputnode = pe.Node(niu.IdentityInterface(fields=["reference", "reference_mask"]),
                         name="outputnode")
    apply = pe.Node(ApplyMask(dilation_mm=mask_dilation_mm), name="apply_mask", mem_gb=0.3)
    workflow.connect([(apply, outputnode, [("out_file", "reference")])])
    if reference.kind == "participant":
        b0 = pe.Node(ExtractB0(in_file=reference.dwi_file, in_bval=reference.bval_file,
                               b0_threshold=reference.b0_threshold), name="extract_b0",
                     mem_gb=1.0)
        strip = pe.Node(MedianOtsu(), name="median_otsu", mem_gb=0.3)
        workflow.connect([
            (b0, strip, [("out_file", "in_file")]),
            (b0, apply, [("out_file", "in_file")]),
            (strip, apply, [("out_mask", "in_mask")]),
            (strip, outputnode, [("out_mask", "reference_mask")]),
        ])
    elif reference.mask:
        apply.inputs.in_file = str(Path(reference.image).absolute())
        apply.inputs.in_mask = str(Path(reference.mask).absolute())
        outputnode.inputs.reference_mask = str(Path(reference.mask).absolute())
    else:
        image = str(Path(reference.image).absolute())
        strip = pe.Node(MedianOtsu(in_file=image), name="median_otsu", mem_gb=0.3)
        apply.inputs.in_file = image
        workflow.connect([(strip, apply, [("out_mask", "in_mask")]),
                          (strip, outputnode, [("out_mask", "reference_mask")])])
    return workflow
