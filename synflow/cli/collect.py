"""After the graph ran: each series' outcome, the HTML reports, the summary and exit code.

A series is ``ok`` when none of its nodes failed, every one of them finished (ran or was
reused) in this run, and its manifest says so (:func:`synflow.workflows.manifest.
read_manifest`: written by this run, every listed output on disk).  ``not run``: the run
stopped before the series finished.  ``failed``: a node of the series (or the reference)
failed; the error comes from the status callback or the crash files.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synflow.cli.context import RunContext
from synflow.cli.errors import ExitCode
from synflow.cli.progress import (
    STEP_NAMES,
    NodeRecord,
    SeriesOutcome,
    classify,
    error_message,
    find_traceback,
    summary_table,
)
from synflow.workflows.base import DWISeries
from synflow.workflows.manifest import manifest_path, read_manifest

__all__ = ["collect", "summarise", "syn_options", "write_reports"]

Todo = Mapping[str, Sequence[DWISeries]]


def syn_options(opts: Any) -> dict[str, Any]:
    """The SyN settings of the command line (``--level-iters`` ...), as the engine takes."""
    return {"level_iters": list(opts.level_iters), "cc_radius": opts.cc_radius,
            "sigma_diff": opts.sigma_diff, "step_length": opts.step_length,
            "ss_sigma_factor": opts.ss_sigma_factor, "opt_tol": opts.opt_tol,
            "inv_iter": opts.inv_iter, "inv_tol": opts.inv_tol}


def step_label(step: str) -> str:
    """What a person calls a node (``syn`` -> ``SyN``)."""
    return STEP_NAMES.get(step, step)


@dataclass(frozen=True)
class _Failure:
    """Why every series failed: the reference could not be prepared."""

    message: str
    traceback: str
    crash_file: str | None
    code: ExitCode


@dataclass(frozen=True)
class _Evidence:
    """What this run recorded: node records, who they belong to, crash folders."""

    records: Sequence[NodeRecord]
    locate: Callable[[str], tuple[str, str] | None]
    crash_dirs: Sequence[Path]
    reference_failure: _Failure | None


def _reference_failure(ctx: RunContext, records: Sequence[NodeRecord],
                       locate: Callable[[str], tuple[str, str] | None],
                       crash_dirs: Sequence[Path]) -> _Failure | None:
    failed = next((r for r in records if r.failed and locate(r.fullname) is None), None)
    if failed is None:
        return None
    tb, crash = find_traceback(failed, crash_dirs)
    msg = error_message(tb)
    return _Failure(f"the reference ({ctx.reference.kind}, {ctx.reference.space}) could not "
                    f"be prepared: {msg}", tb, crash, classify(failed.step, msg))


def _add_timings(o: SeriesOutcome, mine: Sequence[NodeRecord]) -> None:
    starts = [r.start for r in mine if r.start is not None]
    ends = [r.end for r in mine if r.end is not None]
    if starts and ends:
        o.seconds = max(ends) - min(starts)
    o.cached = bool(mine) and not starts and all(r.end is not None for r in mine)
    for r in mine:
        if r.start is not None and r.end is not None:
            key = "outputs" if r.step.startswith("ds_") else step_label(r.step)
            o.timings[key] = round(o.timings.get(key, 0.0) + r.end - r.start, 3)


def _series_outcome(ctx: RunContext, label: str, item: DWISeries,
                    ev: _Evidence) -> SeriesOutcome:
    from synflow.interfaces.reports import figure_entries

    o = SeriesOutcome(label, item.name)
    mine = [r for r in ev.records if ev.locate(r.fullname) == (label, item.name)]
    _add_timings(o, mine)
    failed = [r for r in mine if r.failed]
    manifest = read_manifest(manifest_path(ctx.manifest_dir, label, item.name), ctx.run_uuid)
    if failed:
        tb, crash = find_traceback(failed[0], ev.crash_dirs)
        msg = error_message(tb)
        o.status, o.error, o.traceback, o.crash_file = "failed", msg, tb, crash
        o.failed_step, o.code = step_label(failed[0].step), classify(failed[0].step, msg)
    elif ev.reference_failure is not None:
        ref = ev.reference_failure
        o.status, o.error, o.traceback, o.crash_file, o.code = (
            "failed", ref.message, ref.traceback, ref.crash_file, ref.code)
    elif mine and manifest is not None and all(r.end is not None for r in mine):
        # ``mine`` empty: no node of this series ran (or was found cached) in *this* run
        o.status = "ok"
    else:
        o.status, o.code = "not run", ExitCode.FAILURE
        o.error = "not finished (the run was interrupted or stopped at another crash)"
    if manifest is not None:
        o.qc = dict(manifest.get("qc") or {})
        figures = manifest.get("figures") or {}
        o.figures = figure_entries(list(figures.values()), list(figures))
    return o


def collect(ctx: RunContext, todo: Todo, progress: Any) -> list[SeriesOutcome]:
    """One :class:`SeriesOutcome` per series that entered the graph.

    ``progress`` is the run's :class:`~synflow.cli.progress.Progress` (``nodes``, ``locate``),
    or None when the graph never started.
    """
    records = list(progress.nodes.values()) if progress else []
    locate = progress.locate if progress else (lambda name: None)
    crash_dirs = [ctx.participant_crash_dir(lab) for lab in todo] + [ctx.run_crash_dir]
    ev = _Evidence(records, locate, crash_dirs,
                   _reference_failure(ctx, records, locate, crash_dirs))
    return [_series_outcome(ctx, lab, item, ev) for lab, items in todo.items()
            for item in items]


def write_reports(ctx: RunContext, outcomes: Sequence[SeriesOutcome],
                  run_info: Mapping[str, Any]) -> list[Path]:
    """``sub-X.html`` for every participant with at least one series (ok or failed)."""
    from synflow.interfaces.reports import write_report
    from synflow.workflows.dwi import DEFAULT_MASK

    by_participant: dict[str, list[SeriesOutcome]] = {}
    for o in outcomes:
        if o.status == "reference":
            continue
        if o.status == "failed" and o.series == "-" and "does not exist" in (o.error or ""):
            continue  # no such participant: nothing to report on
        by_participant.setdefault(o.participant, []).append(o)
    parameters = {"b0_threshold": ctx.opts.b0_threshold, "median_otsu": dict(DEFAULT_MASK),
                  "syn": syn_options(ctx.opts)}
    written = []
    for lab, items in by_participant.items():
        out_html = ctx.output_dir / f"sub-{lab}.html"
        try:
            written.append(write_report(out_html, lab, [o.report_entry(parameters)
                                                        for o in items],
                                        run_info=dict(run_info)))
        except Exception as exc:  # a report bug must not hide the processing results
            err = ctx.output_dir / "logs" / f"report-{ctx.run_uuid}-sub-{lab}.err"
            err.parent.mkdir(parents=True, exist_ok=True)
            err.write_text(f"{type(exc).__name__}: {exc}\n")
            print(f"  warning: could not write {out_html}: {exc} (see {err})", file=ctx.stream)
    return written


def _exit_code(failed: Sequence[SeriesOutcome]) -> int:
    """0, or the most telling failure: 1 crashed, 73 a participant's output folder not
    writable, 65 bad data, 16 a participant the BIDS
    validator rejected, 66 missing input, 18 filters matched nothing."""
    codes = {o.code for o in failed}
    if not failed:
        return int(ExitCode.OK)
    for code in (ExitCode.FAILURE, ExitCode.CANT_CREATE, ExitCode.DATA_ERROR,
                 ExitCode.BIDS_INVALID,
                 ExitCode.NO_INPUT, ExitCode.FILTER_EMPTY):
        if code in codes:
            return int(code)
    return int(ExitCode.FAILURE)


def _print_summary(ctx: RunContext, outcomes: Sequence[SeriesOutcome],
                   reports: Sequence[Path], wall: float) -> list[SeriesOutcome]:
    from synflow._atomic import atomic_path

    stream = ctx.stream
    table = summary_table(outcomes)
    print(f"\nSummary (wall time of the whole run: {wall:.1f} s):\n{table}", file=stream)
    with atomic_path(ctx.output_dir / "logs" / f"summary_{ctx.run_uuid}.txt") as tmp:
        tmp.write_text(table + "\n")
    failed = [o for o in outcomes if o.status in ("failed", "not run")]
    warned = [o for o in outcomes if o.status == "ok" and (o.qc or {}).get("QCStatus") == "warning"]
    if warned:
        print("\nQC warnings (processed, but check the report):", file=stream)
        for o in warned:
            for text in o.qc.get("QCWarnings") or ["QC warning"]:
                print(f"  sub-{o.participant} {o.series}: {text}", file=stream)
    if failed:
        print("\nProblems:", file=stream)
        for o in failed:
            where = f"sub-{o.participant}" + ("" if o.series == "-" else f" {o.series}")
            step = f" [{o.failed_step}]" if o.failed_step else ""
            print(f"  {where}{step}: {o.error}", file=stream)
            if o.crash_file:
                print(f"    crash file: {o.crash_file}", file=stream)
    if reports:
        print("\nReports:", file=stream)
        for path in reports:
            print(f"  {path}", file=stream)
    return failed


def summarise(ctx: RunContext, todo: Todo, progress: Any,
              outcomes: list[SeriesOutcome]) -> int:
    """Collect every series' outcome, write the reports, print the summary; the exit code.

    ``outcomes`` holds the series that never entered the graph (early problems); the
    collected ones are added to it.
    """
    from synflow.cli.outputs import write_dataset_description

    outcomes += collect(ctx, todo, progress)
    outcomes.sort(key=lambda o: (o.participant, o.series))
    if ctx.opts.reference_participant:
        outcomes.insert(0, SeriesOutcome(ctx.opts.reference_participant,
                                         ctx.reference.space, "reference"))
    # one clock reading for the terminal, the summary file and the reports
    wall = round(time.monotonic() - ctx.t_start, 1)
    run_info = {"run": ctx.run_uuid, "command": ctx.command,
                "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                "elapsed (s)": wall, "plugin": ctx.plugin,
                "threads per step": ctx.omp_nthreads, "reference": ctx.reference.describe(),
                "work directory": str(ctx.work_dir)}
    reports = write_reports(ctx, outcomes, run_info) if ctx.opts.reports else []
    write_dataset_description(ctx.output_dir, ctx.bids_dir)
    return _exit_code(_print_summary(ctx, outcomes, reports, wall))
