"""Progress lines, per-series outcome and the end-of-run summary table.

:class:`Progress` is handed to Nipype as ``plugin_args['status_callback']``: Nipype calls
it with ``(node, "start" | "end" | "exception")`` for every node (MultiProc, Linear and
the batch-scheduler plugins all do).  Node full names (``synflow_0_1_wf.sub_01_wf.
dwi_run_1_wf.syn``) tell the participant, the series and the step, so a person sees
``sub-01 run-1: SyN done (12.3 s)`` instead of Nipype's scheduler log.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from synflow.cli.errors import ExitCode

#: Node name -> what a person calls the step (nodes not listed are not announced).
STEP_NAMES: dict[str, str] = {
    "extract_b0": "mean b0",
    "median_otsu": "brain mask",
    "apply_mask": "brain mask",
    "affine_prealign": "affine",
    "syn_input": "masked b0 for SyN",
    "syn": "SyN",
    "b0_to_reference": "b0 to reference",
    "reportlets": "QC figures",
}
#: Steps whose start is announced too (they take a while).
_ANNOUNCE_START = {"syn", "affine_prealign", "extract_b0"}
#: Failures of these steps come from the input data (exit code 65) when they are one of
#: _DATA_ERRORS: the files are read there.
_DATA_STEPS = {"extract_b0", "median_otsu"}
_DATA_ERRORS = ("ValueError", "NiftiError", "EOFError", "OSError", "ImageFileError",
                "BadGzipFile",
                "error", "HeaderDataError", "ExpectedFileError")


@dataclass
class NodeRecord:
    """Timing and outcome of one Nipype node."""

    fullname: str
    step: str
    start: float | None = None
    end: float | None = None
    failed: bool = False
    node: Any = None


@dataclass
class SeriesOutcome:
    """What happened to one DWI series."""

    participant: str
    series: str
    status: str = "not run"  # ok | failed | not run | reference
    seconds: float | None = None
    error: str | None = None
    traceback: str | None = None
    failed_step: str | None = None
    code: ExitCode = ExitCode.OK
    qc: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    crash_file: str | None = None
    cached: bool = False  #: every step was reused from the work directory
    #: report figure entries (``title``, ``path``, ``caption``, ``kind``) from the manifest
    figures: list[dict[str, str]] = field(default_factory=list)

    def report_entry(self, parameters: Mapping[str, Any]) -> dict[str, Any]:
        """This series' :func:`synflow.viz.report.series_record` for its report."""
        error = None
        if self.status != "ok":
            error = self.error or "failed"
            if self.failed_step:
                error = f"step '{self.failed_step}': {error}"
            if self.crash_file:
                error += f"\n\ncrash file: {self.crash_file}"
            if self.traceback:
                error += f"\n\n{self.traceback}"
        from synflow.viz.report import series_record

        return series_record(self.series if self.series != "-" else "(no DWI series)",
                             status="ok" if self.status == "ok" else "failed", error=error,
                             figures=self.figures, qc=self.qc, parameters=parameters,
                             timings=self.timings)


class Progress:
    """Nipype status callback printing one line per finished step.

    ``series_of`` maps ``(participant workflow name, series workflow name)`` ->
    ``(participant label, series name)``.
    """

    def __init__(self, series_of: Mapping[tuple[str, str], tuple[str, str]],
                 stream: TextIO | None = None, t0: float | None = None) -> None:
        self.series_of = dict(series_of)
        self.stream = stream or sys.stdout
        self.t0 = t0 if t0 is not None else time.monotonic()
        self.nodes: dict[str, NodeRecord] = {}
        #: ``(where, error)`` when a step ran out of disk space (the run stopped), else None
        self.disk_full: tuple[str, str] | None = None

    # -- Nipype callback
    def __call__(self, node, status: str) -> None:
        try:
            self._update(node, status)
        except Exception as exc:  # a progress bug must never stop the processing
            self._print(f"(progress display error: {exc})")

    def _update(self, node, status: str) -> None:
        fullname = node.fullname
        rec = self.nodes.get(fullname)
        if rec is None:
            rec = self.nodes[fullname] = NodeRecord(fullname, node.name, node=node)
        now = time.monotonic()
        who = self.describe(fullname)
        step = STEP_NAMES.get(node.name)
        if status == "start":
            rec.start = now
            if step and node.name in _ANNOUNCE_START:
                self._print(f"{who}: {step} ...")
        elif status == "end":
            rec.end = now
            if step:
                took = now - rec.start if rec.start is not None else 0.0
                self._print(f"{who}: {step} done ({took:.1f} s)")
        elif status == "exception":
            rec.end, rec.failed = now, True
            self._print(f"{who}: {step or node.name} FAILED (details in the summary)")

    def _print(self, text: str) -> None:
        elapsed = time.monotonic() - self.t0
        print(f"[{int(elapsed // 60):02d}:{elapsed % 60:04.1f}] {text}", file=self.stream,
              flush=True)

    def locate(self, fullname: str) -> tuple[str, str] | None:
        """``(participant, series)`` of a node, or None (reference / top-level nodes)."""
        parts = fullname.split(".")
        for i in range(len(parts) - 1):
            key = (parts[i], re.sub(r"^ds_", "dwi_", parts[i + 1]))
            if key in self.series_of:
                return self.series_of[key]
        return None

    def describe(self, fullname: str) -> str:
        loc = self.locate(fullname)
        if loc is None:
            return "reference" if ".reference_wf." in fullname else "synflow"
        return f"sub-{loc[0]} {short_series_name(loc[1], loc[0])}"

    def log(self, text: str) -> None:
        """Print a line with the elapsed-time prefix."""
        self._print(text)


def short_series_name(series: str, participant: str) -> str:
    """``sub-01_ses-1_run-1_dwi`` -> ``ses-1_run-1`` (or ``dwi`` if nothing is left)."""
    out = re.sub(rf"^sub-{re.escape(participant)}_?", "", series)
    out = re.sub(r"_?dwi$", "", out)
    return out or "dwi"


#: Signs that a worker was killed, nearly always by the kernel's out-of-memory killer.
_KILLED = re.compile(r"BrokenProcessPool|MemoryError|Killed|SIGKILL|signal 9|exit code -9")
OOM_HINT = ("the process was killed, most likely out of memory: run fewer steps at once "
            "(lower --nprocs), give the job more memory, or set --mem to what the machine "
            "really has")


def error_message(traceback_text: str) -> str:
    """The innermost ``SomeError: message`` of a (Nipype) traceback, without the class path.

    A worker killed by the system (out of memory) gets :data:`OOM_HINT` appended, since
    Nipype only reports a broken process pool or a bare ``Killed``.
    """
    message = _innermost_error(traceback_text)
    explained = message.startswith(("WorkerKilledError", "StepInterruptedError"))
    if _KILLED.search(str(traceback_text)) and not explained:
        message = f"{message} ({OOM_HINT})"
    return message


def _innermost_error(traceback_text: str) -> str:
    lines = [ln.rstrip() for ln in str(traceback_text).splitlines() if ln.strip()]
    pattern = re.compile(
        r"^([A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|error|BrokenProcessPool)):\s?(.*)$")
    for i in range(len(lines) - 1, -1, -1):
        match = pattern.match(lines[i].strip())
        if match and "NodeExecutionError" not in match.group(1):
            cls = match.group(1).rsplit(".", 1)[-1]
            msg = match.group(3).strip()
            return f"{cls}: {msg}" if msg else cls
    return lines[-1].strip() if lines else "unknown error"


def exception_class(message: str) -> str:
    return message.split(":", 1)[0].strip()


def find_traceback(rec: NodeRecord, crash_dirs: Sequence[Path]) -> tuple[str, str | None]:
    """Traceback of a failed node: from the node object, else from its crash file."""
    tb = getattr(rec.node, "_traceback", None)
    if tb:
        tb = "".join(tb) if isinstance(tb, (list, tuple)) else str(tb)
    crash_file = None
    for folder in crash_dirs:
        for cand in sorted(Path(folder).glob(f"crash-*-{rec.step}-*.txt")):
            try:
                text = cand.read_text(errors="replace")
            except OSError:
                continue
            if rec.fullname in text.split("\n", 3)[0] or f"Node: {rec.fullname}" in text:
                crash_file = str(cand)
                tb = tb or text
    return tb or f"{rec.fullname} failed (no traceback recorded)", crash_file


def classify(step: str, message: str) -> ExitCode:
    """Exit code for a failed step: 65 for unusable input data, else 1."""
    if step in _DATA_STEPS and exception_class(message) in _DATA_ERRORS:
        return ExitCode.DATA_ERROR
    return ExitCode.FAILURE


def fmt_num(value: Any, spec: str) -> str:
    try:
        return format(float(value), spec)
    except (TypeError, ValueError):
        return "-"


def status_text(o: SeriesOutcome) -> str:
    """The status column: ``ok (QC warning)`` when the workflow's QC verdict
    (``QCStatus``, see ``synflow.interfaces.registration.qc_status``) says the registration
    looks wrong although every step ran."""
    if o.status == "ok" and o.qc and o.qc.get("QCStatus") == "warning":
        return "ok (QC warning)"
    return o.status


def summary_table(outcomes: Sequence[SeriesOutcome], width: int = 60) -> str:
    """Plain-text table: participant, series, status, time, QC numbers, error."""
    head = ["participant", "series", "status", "time", "CC before>SyN", "fold %", "ICE mm",
            "error"]
    rows = []
    for o in outcomes:
        cc = (f"{fmt_num(o.qc.get('cc_before'), '.3f')}>{fmt_num(o.qc.get('cc_syn'), '.3f')}"
              if o.qc else "-")
        err = (o.error or "").replace("\n", " ")
        if len(err) > width:
            err = err[: width - 3] + "..."
        rows.append([f"sub-{o.participant}", short_series_name(o.series, o.participant)
                     if o.series != "-" else "-", status_text(o),
                     f"{o.seconds:.1f}s" if o.seconds is not None
                     else ("cached" if o.cached else "-"), cc,
                     fmt_num(o.qc.get("folding_percent"), ".3f") if o.qc else "-",
                     fmt_num(o.qc.get("ice_mean_mm"), ".3f") if o.qc else "-", err])
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)), line]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in rows]
    return "\n".join(out)
