"""BIDS-Derivatives naming and a small ``DerivativesDataSink``.

niworkflows is deliberately not a dependency (it pulls in templateflow, nilearn,
svgutils, ...), so this module carries the ~150 lines synflow needs:

* :func:`parse_entities` / :func:`build_derivative_name` build nipreps-style names
  from the *source DWI* file name, keeping its entities (``sub``, ``ses``, ``acq``,
  ``dir``, ``run``, ...) and adding ``space``/``from``/``to``/``mode``/``desc`` in
  the nipreps order (``..._from-dwiref_to-X_mode-image_desc-affine_xfm.txt``).
  Unlike niworkflows' patterns, ``.nii.gz`` is allowed for ``xfm`` so the DIPY-layout
  SyN mapping can sit next to the ITK files (``*_xfm.*`` is in ``.bidsignore``).
* :class:`DerivativesDataSink` copies a file to its derivative name and writes the
  JSON sidecar.  Every file is written **atomically** (temporary file in the same
  directory, then ``os.replace``), and the sidecar is written *before* the data
  file, so a run killed half-way never leaves a data file that looks complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    Directory,
    File,
    InputMultiObject,
    OutputMultiObject,
    SimpleInterface,
    Str,
    TraitedSpec,
    isdefined,
    traits,
)

from synflow._atomic import atomic_path, atomic_write_text, split_ext

#: Entity order of the raw BIDS file name (subset relevant to DWI), then derivative
#: entities in the order nipreps' ``nipreps.json`` patterns use.
RAW_ENTITIES = ("sub", "ses", "task", "acq", "ce", "trc", "stain", "rec", "dir", "run", "mod",
                "echo", "flip", "inv", "mt", "part", "proc", "split", "recording", "chunk")
DERIV_ENTITIES = ("space", "res", "from", "to", "mode", "desc")

_LABEL_RE = re.compile(r"^[A-Za-z0-9]+$")


def parse_entities(fname: str | os.PathLike) -> dict[str, str]:
    """Entities of a BIDS file name, plus ``suffix`` and ``extension``.

    >>> parse_entities("/d/sub-01/ses-1/dwi/sub-01_ses-1_run-2_dwi.nii.gz")["run"]
    '2'
    """
    stem, ext = split_ext(Path(fname).name)
    parts = stem.split("_")
    out: dict[str, str] = {}
    for part in parts[:-1]:
        key, sep, value = part.partition("-")
        if not sep:
            raise ValueError(f"{fname}: {part!r} is not a BIDS key-value entity")
        out[key] = value
    if "-" in parts[-1]:
        # no suffix: the last part is an entity as well
        key, _, value = parts[-1].partition("-")
        out[key] = value
        out["suffix"] = ""
    else:
        out["suffix"] = parts[-1]
    out["extension"] = ext
    if "sub" not in out:
        raise ValueError(f"{fname}: a BIDS file name must start with 'sub-<label>'")
    return out


def check_label(value: str, what: str) -> str:
    """Return ``value`` if it is a valid BIDS label (alphanumeric), else raise."""
    if not _LABEL_RE.match(value):
        raise ValueError(f"{what} must be an alphanumeric BIDS label, got {value!r}")
    return value


def build_derivative_name(source_file: str | os.PathLike, suffix: str, extension: str,
                          **entities: str | None) -> str:
    """Derivative file name from the source's entities plus ``entities``.

    ``from_`` may be used for the ``from`` entity (a Python keyword).  Entities set
    to ``None`` or ``""`` are dropped.

    >>> build_derivative_name("sub-01_ses-1_dwi.nii.gz", "xfm", ".h5",
    ...                       from_="dwiref", to="MNI152NLin2009aSym", mode="image")
    'sub-01_ses-1_from-dwiref_to-MNI152NLin2009aSym_mode-image_xfm.h5'
    """
    src = parse_entities(source_file)
    unknown = sorted(set(src) - set(RAW_ENTITIES) - set(DERIV_ENTITIES) - {"suffix", "extension"})
    if unknown:  # dropping one could give two series the same output names
        raise ValueError(f"{source_file}: entities {unknown} are not known to synflow; "
                         f"rename the file with BIDS entities ({', '.join(RAW_ENTITIES)})")
    extra = {k.rstrip("_"): v for k, v in entities.items() if v not in (None, "")}
    for key, value in extra.items():
        if key not in DERIV_ENTITIES and key not in RAW_ENTITIES:
            raise ValueError(f"unknown derivative entity {key!r}")
        check_label(str(value), f"entity {key!r}")
    parts = [f"{k}-{src[k]}" for k in RAW_ENTITIES if k in src and k not in extra]
    parts += [f"{k}-{extra[k]}" for k in RAW_ENTITIES if k in extra]
    parts += [f"{k}-{extra[k]}" for k in DERIV_ENTITIES if k in extra]
    if not extension.startswith("."):
        extension = "." + extension
    return "_".join(parts + ([suffix] if suffix else [])) + extension


def derivative_dir(base_directory: str | os.PathLike, source_file: str | os.PathLike,
                   datatype: str) -> Path:
    """``<base>/sub-X[/ses-Y]/<datatype>``; figures go to ``<base>/sub-X/figures`` (nipreps)."""
    ent = parse_entities(source_file)
    out = Path(base_directory) / f"sub-{ent['sub']}"
    if datatype == "figures":
        return out / "figures"
    if "ses" in ent:
        out = out / f"ses-{ent['ses']}"
    return out / datatype


#: Yield a temporary path next to a file and move it into place on success
#: (:func:`synflow._atomic.atomic_path`).
atomic_write = atomic_path


def write_json_atomic(fname: str | os.PathLike, data: Mapping[str, Any]) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    return atomic_write_text(fname, json.dumps(to_jsonable(data), indent=2, sort_keys=False)
                             + "\n")


def copy_atomic(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy ``src`` to ``dst`` atomically (never a partial ``dst``)."""
    with atomic_write(dst) as tmp:
        shutil.copyfile(src, tmp)
    return Path(dst)


def to_jsonable(value: Any) -> Any:
    """Convert numpy scalars/arrays, paths and tuples into JSON-serialisable values."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return str(value)
    if hasattr(value, "tolist"):  # numpy scalar / array
        return to_jsonable(value.tolist())
    if isinstance(value, float) and value != value:  # NaN is not valid JSON
        return None
    return value


def bids_uri(fname: str | os.PathLike, bids_dir: str | os.PathLike | None,
             dataset: str = "raw") -> str:
    """``bids:<dataset>:<relative path>`` for a file inside ``bids_dir`` (else the path)."""
    if bids_dir is None:
        return str(fname)
    try:
        rel = Path(fname).absolute().relative_to(Path(bids_dir).absolute())
    except ValueError:
        return str(fname)
    return f"bids:{dataset}:{rel.as_posix()}"


class _DerivativesDataSinkInputSpec(BaseInterfaceInputSpec):
    base_directory = Directory(mandatory=True, desc="root of the derivatives dataset")
    source_file = File(exists=False, mandatory=True,
                       desc="raw BIDS file whose entities name the output (the DWI)")
    in_file = InputMultiObject(File(exists=True), mandatory=True,
                               desc="file(s) to store; several files need a list of desc")
    suffix = Str(mandatory=True, desc="BIDS suffix, e.g. 'dwiref', 'mask', 'xfm'")
    datatype = Str("dwi", usedefault=True, desc="'dwi', 'anat', 'figures', ...")
    desc = traits.Either(Str, traits.List(Str), desc="desc entity (one per in_file if a list)")
    space = Str(desc="space entity")
    from_ = Str(desc="from entity (transforms)")
    to = Str(desc="to entity (transforms)")
    mode = Str(desc="mode entity (transforms)")
    extension = Str(desc="override the extension (default: the in_file's)")
    meta_dict = traits.Dict(Str, traits.Any, desc="sidecar metadata")
    extra_meta = traits.Dict(Str, traits.Any,
                             desc="more sidecar metadata, computed by the workflow "
                                  "(merged over meta_dict)")
    qc = traits.Dict(Str, traits.Any, desc="QC metrics, stored under \"QC\" in the sidecar")
    sources = traits.List(Str, desc="BIDS URIs of the inputs (the sidecar's Sources)")
    write_sidecar = traits.Bool(True, usedefault=True, desc="write a JSON sidecar")


class _DerivativesDataSinkOutputSpec(TraitedSpec):
    out_file = OutputMultiObject(File(exists=True), desc="stored file(s)")
    out_meta = OutputMultiObject(File(exists=True), desc="sidecar(s)")


class DerivativesDataSink(SimpleInterface):
    """Store a file under its BIDS-Derivatives name, with a JSON sidecar, atomically.

    Names are built from ``source_file``'s entities (see :func:`build_derivative_name`);
    the destination is ``<base_directory>/sub-X[/ses-Y]/<datatype>/`` (figures:
    ``<base_directory>/sub-X/figures/``).  Like niworkflows' sink it always runs
    (``_always_run``), so deleting an output and re-running with the same work
    directory restores it without recomputing anything.
    """

    input_spec = _DerivativesDataSinkInputSpec
    output_spec = _DerivativesDataSinkOutputSpec
    _always_run = True

    def _run_interface(self, runtime):
        in_files = list(self.inputs.in_file)
        descs = self.inputs.desc if isdefined(self.inputs.desc) else None
        if isinstance(descs, list):
            if len(descs) != len(in_files):
                raise ValueError(f"DerivativesDataSink: {len(in_files)} files but "
                                 f"{len(descs)} desc values")
        elif len(in_files) > 1:
            raise ValueError("DerivativesDataSink: several in_file need a list of desc")
        else:
            descs = [descs]
        ents = {k: getattr(self.inputs, k) for k in ("space", "from_", "to", "mode")}
        ents = {k: v for k, v in ents.items() if isdefined(v)}
        outdir = derivative_dir(self.inputs.base_directory, self.inputs.source_file,
                                self.inputs.datatype)
        meta: dict[str, Any] = {}
        if isdefined(self.inputs.meta_dict):
            meta.update(self.inputs.meta_dict)
        if isdefined(self.inputs.extra_meta):
            meta.update(self.inputs.extra_meta)
        if isdefined(self.inputs.qc) and self.inputs.qc:
            meta["QC"] = dict(self.inputs.qc)
        if isdefined(self.inputs.sources) and self.inputs.sources:
            meta["Sources"] = list(self.inputs.sources)
        out_files, out_meta = [], []
        for in_file, desc in zip(in_files, descs, strict=True):
            ext = (self.inputs.extension if isdefined(self.inputs.extension)
                   else split_ext(in_file)[1])
            name = build_derivative_name(self.inputs.source_file, self.inputs.suffix, ext,
                                         desc=desc, **ents)
            dest = outdir / name
            if self.inputs.write_sidecar:
                # Sidecar first: the data file appearing is the "complete" signal.
                sidecar = dest.with_name(split_ext(name)[0] + ".json")
                write_json_atomic(sidecar, meta)
                out_meta.append(str(sidecar))
            copy_atomic(in_file, dest)
            out_files.append(str(dest))
        self._results["out_file"] = out_files if len(out_files) > 1 else out_files[0]
        if out_meta:
            self._results["out_meta"] = out_meta if len(out_meta) > 1 else out_meta[0]
        return runtime
