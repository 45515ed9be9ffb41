"""``synflow BIDS_DIR OUTPUT_DIR participant`` -- the BIDS App entry point.

How a run goes (fMRIPrep's design, where it fits):

1. parse the command line (usage errors exit 64), check the paths (output inside the
   input dataset only as ``<bids>/derivatives/...``), validate the dataset (16),
   resolve the Nipype plugin (64), create the output and work folders (73);
2. index the dataset with PyBIDS (database under ``<work>/<run_uuid>/``, so concurrent
   runs sharing a work dir do not lock each other -- fmriprep#2137/#2313) and pre-check
   every DWI series from headers and ``.bval`` files (65/66 per series);
3. build **one** Nipype graph for all participants and series (``synflow_0_1_wf``) and
   run it with the chosen plugin (MultiProc + ``--nprocs`` by default) and
   ``stop_on_first_crash=False``: Nipype keeps running every branch that does not
   depend on a crashed node, so one bad series never stops the others, and all
   parallelism stays Nipype's;
4. in a ``finally:`` block, whatever happened: read each series' outcome from the
   status callback and the crash files (``<out>/sub-X/log/<run_uuid>/crash-*.txt``),
   write ``sub-X.html`` (failed series included, with their error), the dataset
   description and ``.bidsignore``, print the summary table, and exit 0, or the most
   telling failure code (1 if anything crashed, else 65 bad data, else 66 missing input).
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
import time
import uuid
import warnings
from argparse import Namespace
from pathlib import Path
from typing import Any, TextIO

from synflow.cli.errors import ExitCode, SynflowError

_LOCAL_PLUGINS = {"MultiProc", "LegacyMultiProc", "Linear"}


def main(argv: list[str] | None = None) -> int:
    """Console entry point (``synflow``); returns the exit code."""
    from synflow.cli.parser import parse_args

    opts = parse_args(argv)
    setup_logging(opts.verbose)
    try:
        if opts.demo is not None:
            from synflow.cli.demo import run_demo

            return run_demo(opts)
        return run_participant(opts)
    except SynflowError as exc:
        print(f"synflow: error: {exc.message}", file=sys.stderr)
        return int(exc.code)


def setup_logging(verbose: int) -> None:
    """Quiet Nipype's scheduler log unless ``-v`` (progress lines replace it)."""
    from nipype import config as nconfig
    from nipype import logging as nlogging

    level = {0: "CRITICAL", 1: "INFO"}.get(verbose, "DEBUG")
    nconfig.update_config({"logging": {"workflow_level": level,
                                       "interface_level": "ERROR" if verbose == 0 else level,
                                       "utils_level": "ERROR" if verbose == 0 else level}})
    nlogging.update_logging(nconfig)
    logging.getLogger("bids").setLevel(logging.ERROR if verbose == 0 else logging.INFO)
    if verbose == 0:
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module="bids")


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.relative_to(parent)
    except ValueError:
        return False
    return True


def check_locations(bids_dir: Path, output_dir: Path, work_dir: Path) -> None:
    """Output only outside the input, or as ``<bids>/derivatives/<name>``; work dir outside."""
    from synflow.cli.plugins import container_mount_hint

    if not bids_dir.is_dir():
        raise SynflowError(f"BIDS_DIR {bids_dir} does not exist or is not a folder."
                           f"{container_mount_hint(bids_dir)}", ExitCode.NO_INPUT)
    bids, out, work = bids_dir.resolve(), output_dir.resolve(), work_dir.resolve()
    suggestion = f"{bids}/derivatives/synflow"
    if out == bids:
        raise SynflowError(f"OUTPUT_DIR {output_dir} is the input dataset itself; use "
                           f"{suggestion} or a folder outside the dataset.", ExitCode.USAGE)
    if _inside(out, bids):
        rel = out.relative_to(bids).parts
        if rel[0] != "derivatives" or len(rel) < 2:
            raise SynflowError(
                f"OUTPUT_DIR {output_dir} is inside the input dataset {bids_dir}; outputs may "
                f"only go under {bids}/derivatives/<name> (e.g. {suggestion}) or outside the "
                "dataset.", ExitCode.USAGE)
    if _inside(bids, out):
        raise SynflowError(f"OUTPUT_DIR {output_dir} contains the input dataset {bids_dir}; "
                           f"use {suggestion} or a separate folder.", ExitCode.USAGE)
    if _inside(work, bids):
        raise SynflowError(f"the work directory {work_dir} is inside the input dataset "
                           f"{bids_dir}; give -w a folder outside it.", ExitCode.USAGE)


def _make_dir(path: Path, what: str) -> None:
    from synflow.cli.plugins import container_mount_hint

    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".synflow-write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise SynflowError(f"cannot create or write the {what} {path}: {exc.strerror or exc}. "
                           f"Choose a writable folder.{container_mount_hint(path)}",
                           ExitCode.CANT_CREATE) from exc


def check_reference(opts: Namespace):
    """The reference (template / image / participant placeholder) and its grid size."""
    import nibabel as nib
    import numpy as np

    from synflow.cli.plugins import container_mount_hint
    from synflow.workflows.reference import Reference

    if opts.reference is None:
        ref = Reference()
        return ref, int(np.prod(nib.load(ref.image).shape[:3]))
    path = opts.reference.absolute()
    if not path.is_file():
        raise SynflowError(f"--reference {opts.reference} does not exist; give an existing "
                           f"3-D NIfTI image.{container_mount_hint(path)}", ExitCode.NO_INPUT)
    try:
        img = nib.load(str(path))
        shape = img.shape
        np.asanyarray(img.dataobj[..., 0] if len(shape) > 3 else img.dataobj)
    except Exception as exc:  # nibabel raises ImageFileError, EOFError, OSError, zlib...
        raise SynflowError(f"--reference {path} cannot be read as NIfTI "
                           f"({type(exc).__name__}: {exc}); give a valid .nii/.nii.gz image.",
                           ExitCode.DATA_ERROR) from exc
    if len(shape) != 3 and not (len(shape) == 4 and shape[3] == 1):
        raise SynflowError(f"--reference {path} must be a 3-D image, got shape {shape}.",
                           ExitCode.DATA_ERROR)
    ref = Reference(kind="image", image=str(path), space=opts.reference_space or "custom",
                    spatial_reference=path.as_uri())
    return ref, int(np.prod(shape[:3]))


def run_participant(opts: Namespace, stream: TextIO | None = None) -> int:
    """Run the participant level; returns the exit code (see :mod:`synflow.cli.errors`)."""
    stream = stream or sys.stdout
    t_start = time.monotonic()
    bids_dir = opts.bids_dir.absolute()
    output_dir = opts.output_dir.absolute()
    work_dir = (opts.work_dir or Path.cwd() / "work").absolute()
    check_locations(bids_dir, output_dir, work_dir)

    from synflow.cli.bids import load_filters, validate_dataset

    validation = "skipped" if opts.skip_bids_validation else validate_dataset(bids_dir)
    reference, ref_voxels = check_reference(opts)
    filters = load_filters(opts.bids_filter_file)

    from synflow.cli.plugins import PluginError, plugin_blocks, resolve_plugin

    try:
        plugin, plugin_args = resolve_plugin(opts.plugin, opts.plugin_args, opts.use_plugin,
                                             opts.nprocs, opts.mem_gb)
    except PluginError as exc:
        raise SynflowError(str(exc), ExitCode.USAGE) from exc
    _make_dir(output_dir, "output directory")
    _make_dir(work_dir, "work directory")

    run_uuid = f"{time.strftime('%Y%m%d-%H%M%S')}_{uuid.uuid4()}"
    run_dir = work_dir / run_uuid
    run_dir.mkdir(parents=True, exist_ok=True)
    print(f"synflow {_version()}: {bids_dir} -> {output_dir} (run {run_uuid})", file=stream)
    print(f"  validation: {validation}; work directory: {work_dir}", file=stream)

    from synflow.cli.bids import check_series, make_layout, select_series

    labels = opts.participant_label
    index_labels = (sorted(set(labels) | {opts.reference_participant})
                    if labels and opts.reference_participant else labels)
    db_dir = opts.bids_database_dir or run_dir / "bids_db"
    layout = make_layout(bids_dir, Path(db_dir).absolute(), opts.bids_database_dir is None,
                         index_labels)
    outcomes: list[Any] = []
    if opts.reference_participant:
        reference, ref_voxels = _participant_reference(opts, layout, bids_dir, check_series)
        if labels is None:
            labels = sorted(p.name[4:] for p in bids_dir.glob("sub-*") if p.is_dir())
        labels = [lab for lab in labels if lab != opts.reference_participant]
    if not any(p.is_dir() for p in bids_dir.glob("sub-*")):
        raise SynflowError(f"no sub-<label> folders in {bids_dir}: nothing to process.",
                           ExitCode.NO_INPUT)
    sel = select_series(layout, bids_dir, labels, opts.session_label, filters,
                        opts.b0_threshold)

    from synflow.cli.progress import SeriesOutcome

    for problem in sel.problems:
        outcomes.append(SeriesOutcome(problem.participant, problem.series, "failed",
                                      error=problem.message, code=problem.code))
    todo = {k: v for k, v in sel.participants.items() if v}
    n_series = sum(len(v) for v in todo.values())
    omp_nthreads = _omp_nthreads(opts, plugin, plugin_args, n_series)
    print(f"  reference: {reference.kind} ({reference.space}); {len(todo)} participant(s), "
          f"{n_series} series; plugin {plugin}"
          + (f" n_procs={plugin_args.get('n_procs')}" if "n_procs" in plugin_args else "")
          + f", {omp_nthreads} thread(s) per step", file=stream)
    for problem in sel.problems:
        print(f"  skipping sub-{problem.participant}"
              f"{'' if problem.series == '-' else ' ' + problem.series}: {problem.message}",
              file=stream)

    config = {"run_uuid": run_uuid, "command": _command_line(), "version": _version(),
              "bids_dir": str(bids_dir), "output_dir": str(output_dir),
              "work_dir": str(work_dir), "plugin": plugin,
              "plugin_args": {k: v for k, v in plugin_args.items() if k != "status_callback"},
              "omp_nthreads": omp_nthreads, "reference": reference.describe(),
              "options": {k: (str(v) if isinstance(v, Path) else v)
                          for k, v in vars(opts).items()}}
    (run_dir / "config.json").write_text(json.dumps(config, indent=2, default=str))

    from synflow.cli.outputs import existing_version, write_bidsignore, write_dataset_description

    previous = existing_version(output_dir)
    if previous and previous != _version():
        print(f"  warning: {output_dir} was written by synflow {previous}; this is "
              f"{_version()}. Mixing versions in one derivatives folder is not advised.",
              file=stream)
    write_dataset_description(output_dir, bids_dir)
    write_bidsignore(output_dir)

    progress = None
    # SLURMGraph, SGEGraph, PBSGraph, CondorDAGMan: run() returns once the jobs are queued
    submitted = False
    try:
        if todo:
            progress = _run_workflow(opts, todo, reference, ref_voxels, bids_dir, output_dir,
                                     work_dir, run_uuid, plugin, plugin_args, omp_nthreads,
                                     stream, t_start)
            submitted = not plugin_blocks(plugin, plugin_args)
    finally:
        if not submitted:
            code = _summarise(todo, progress, outcomes, output_dir, run_uuid, reference, opts,
                              config, plugin, omp_nthreads, work_dir, bids_dir, stream,
                              t_start)
    if submitted:
        write_dataset_description(output_dir, bids_dir)
        print(f"\nThe workflow was submitted to the scheduler ({plugin}) as dependent jobs; "
              f"outputs appear in {output_dir} as they finish.\nFor the summary table and the "
              "HTML reports, run the same command again with --plugin MultiProc and the same "
              "-w: every finished step is reused.", file=stream)
        return int(ExitCode.OK)
    return code


def _summarise(todo, progress, outcomes, output_dir, run_uuid, reference, opts, config,
               plugin, omp_nthreads, work_dir, bids_dir, stream, t_start) -> int:
    """Collect the outcome of every series, write the reports, print the summary."""
    from synflow.cli.outputs import write_dataset_description
    from synflow.cli.progress import SeriesOutcome

    outcomes += _collect(todo, progress, output_dir, run_uuid, reference, opts)
    outcomes.sort(key=lambda o: (o.participant, o.series))
    if opts.reference_participant:
        outcomes.insert(0, SeriesOutcome(opts.reference_participant, reference.space,
                                         "reference"))
    run_info = {"run": run_uuid, "command": config["command"],
                "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                "elapsed (s)": round(time.monotonic() - t_start, 1), "plugin": plugin,
                "threads per step": omp_nthreads, "reference": reference.describe(),
                "work directory": str(work_dir)}
    reports = (_write_reports(outcomes, todo, output_dir, run_info, opts, stream)
               if opts.reports else [])
    write_dataset_description(output_dir, bids_dir)
    code = _finish(outcomes, reports, output_dir, run_uuid, stream, t_start)
    return code


def _participant_reference(opts, layout, bids_dir: Path, check_series):
    """The ``--reference-participant``'s first DWI series (raise if unusable: all depend)."""
    import numpy as np

    from synflow.cli.plugins import container_mount_hint
    from synflow.workflows.reference import Reference

    label = opts.reference_participant
    if not (bids_dir / f"sub-{label}").is_dir():
        raise SynflowError(f"--reference-participant sub-{label} does not exist in {bids_dir}."
                           f"{container_mount_hint(bids_dir / f'sub-{label}')}",
                           ExitCode.NO_INPUT)
    query = {"subject": label, "datatype": "dwi", "suffix": "dwi",
             "extension": [".nii.gz", ".nii"], "return_type": "file"}
    if opts.session_label:
        query["session"] = opts.session_label
    files = sorted(layout.get(**query))
    if not files:
        raise SynflowError(f"--reference-participant sub-{label} has no DWI series in "
                           f"{bids_dir}/sub-{label}; pick another participant.",
                           ExitCode.NO_INPUT)
    item, problem = check_series(layout, files[0], opts.b0_threshold)
    if problem is not None:
        raise SynflowError(f"--reference-participant sub-{label}: {problem[0]}", problem[1])
    import nibabel as nib

    shape = nib.load(item.dwi_file).shape
    from synflow.interfaces.bids import bids_uri

    ref = Reference(kind="participant", participant=label, dwi_file=item.dwi_file,
                    bval_file=item.bval_file, b0_threshold=opts.b0_threshold,
                    space=opts.reference_space or f"sub{label}",
                    spatial_reference=bids_uri(item.dwi_file, bids_dir))
    return ref, int(np.prod(shape[:3]))


def _omp_nthreads(opts, plugin: str, plugin_args: dict, n_series: int) -> int:
    """Threads per engine step: ``--omp-nthreads``, else share ``n_procs`` among series.

    Processes scale better than threads here (NumPy slabs, Python between kernels), so
    by default each series gets ``n_procs // n_series`` threads (at least 1, at most 8):
    3 series on 2 CPUs run 2 at a time with 1 thread each; 1 series on 8 CPUs gets 8.
    """
    if opts.omp_nthreads:
        nprocs = plugin_args.get("n_procs")
        if nprocs and opts.omp_nthreads > nprocs:
            print(f"  warning: --omp-nthreads {opts.omp_nthreads} > --nprocs {nprocs}; "
                  "steps will oversubscribe the CPUs", file=sys.stderr)
        return int(opts.omp_nthreads)
    from synflow._parallel import available_cpus

    nprocs = int(plugin_args.get("n_procs") or available_cpus())
    return max(1, min(8, nprocs // max(1, n_series)))


def _run_workflow(opts, todo, reference, ref_voxels, bids_dir, output_dir, work_dir,
                  run_uuid, plugin, plugin_args, omp_nthreads, stream, t_start):
    """Build the graph and run it; returns the :class:`Progress` record."""
    from nipype import config as nconfig

    from synflow.cli.plugins import plugin_environment
    from synflow.cli.progress import Progress
    from synflow.workflows.base import init_synflow_wf

    crash_dirs = {lab: str(output_dir / f"sub-{lab}" / "log" / run_uuid) for lab in todo}
    wf = init_synflow_wf(
        todo, output_dir=str(output_dir), reference=reference, bids_dir=str(bids_dir),
        b0_threshold=opts.b0_threshold, syn=_syn_options(opts), omp_nthreads=omp_nthreads,
        ref_voxels=ref_voxels, reportlets=opts.reports,
        mask_dilation_mm=opts.syn_mask_dilation, crashdump_dirs=crash_dirs)
    wf.base_dir = str(work_dir)
    execution = {
        "crashfile_format": "txt",
        "crashdump_dir": str(output_dir / "logs" / run_uuid),
        "stop_on_first_crash": bool(opts.stop_on_first_crash),
        "remove_unnecessary_outputs": True,
        "check_version": False,
        "create_report": True,
        # Nipype's scheduler loop sleeps this long between polls (default 2 s): for local
        # plugins that is pure overhead on every step; batch plugins poll a scheduler, so
        # they keep the default.
        "poll_sleep_duration": 0.05 if plugin in _LOCAL_PLUGINS else 2,
    }
    nconfig.update_config({"execution": execution})
    wf.config["execution"].update(execution)
    series_of = {(f"sub_{lab}_wf", item.wf_name): (lab, item.name)
                 for lab, items in todo.items() for item in items}
    progress = Progress(series_of, stream=stream, t0=t_start)
    args = dict(plugin_args)
    args["status_callback"] = progress
    progress.log(f"running {wf.name} ({plugin})")
    try:
        with plugin_environment(plugin):
            wf.run(plugin=plugin, plugin_args=args)
    except RuntimeError as exc:
        # Nipype raises after the whole graph ran when any node failed
        # ("Workflow did not execute cleanly"); the failures are collected from the
        # callback records and crash files in _collect.
        if not any(r.failed for r in progress.nodes.values()):
            progress.log(f"Nipype stopped: {exc}")
            raise SynflowError(f"Nipype could not run the workflow: {exc}",
                               ExitCode.FAILURE) from exc
    return progress


def _syn_options(opts) -> dict[str, Any]:
    return {"level_iters": list(opts.level_iters), "cc_radius": opts.cc_radius,
            "sigma_diff": opts.sigma_diff, "step_length": opts.step_length,
            "ss_sigma_factor": opts.ss_sigma_factor, "opt_tol": opts.opt_tol,
            "inv_iter": opts.inv_iter, "inv_tol": opts.inv_tol}


def _collect(todo, progress, output_dir: Path, run_uuid: str, reference, opts) -> list:
    """One :class:`SeriesOutcome` per series that entered the graph."""
    from synflow.cli.progress import SeriesOutcome, classify, error_message, find_traceback
    from synflow.interfaces.bids import build_derivative_name, derivative_dir

    out = []
    records = list(progress.nodes.values()) if progress else []
    crash_dirs = [output_dir / f"sub-{lab}" / "log" / run_uuid for lab in todo]
    crash_dirs.append(output_dir / "logs" / run_uuid)
    ref_fail = next((r for r in records if r.failed and progress.locate(r.fullname) is None),
                    None)
    ref_error = None
    if ref_fail is not None:
        tb, crash = find_traceback(ref_fail, crash_dirs)
        msg = error_message(tb)
        ref_error = (f"the reference ({reference.kind}, {reference.space}) could not be "
                     f"prepared: {msg}", tb, crash, classify(ref_fail.step, msg))
    for lab, items in todo.items():
        for item in items:
            o = SeriesOutcome(lab, item.name)
            mine = [r for r in records if progress.locate(r.fullname) == (lab, item.name)]
            starts = [r.start for r in mine if r.start is not None]
            ends = [r.end for r in mine if r.end is not None]
            if starts and ends:
                o.seconds = max(ends) - min(starts)
            o.cached = bool(mine) and not starts and all(r.end is not None for r in mine)
            for r in mine:
                if r.start is not None and r.end is not None:
                    key = r.step if r.step.startswith("ds_") else _step_label(r.step)
                    key = "outputs" if key.startswith("ds_") else key
                    o.timings[key] = round(o.timings.get(key, 0.0) + r.end - r.start, 3)
            failed = [r for r in mine if r.failed]
            fwd = derivative_dir(output_dir, item.dwi_file, "dwi") / build_derivative_name(
                item.dwi_file, "xfm", ".h5", from_="dwiref", to=reference.space, mode="image")
            if failed:
                rec = failed[0]
                tb, crash = find_traceback(rec, crash_dirs)
                msg = error_message(tb)
                o.status, o.error, o.traceback, o.crash_file = "failed", msg, tb, crash
                o.failed_step, o.code = _step_label(rec.step), classify(rec.step, msg)
            elif ref_error is not None:
                o.status, o.error, o.traceback, o.crash_file, o.code = (
                    "failed", ref_error[0], ref_error[1], ref_error[2], ref_error[3])
            elif mine and fwd.exists() and all(r.end is not None for r in mine):
                # ``mine`` empty: no node of this series ran (or was found cached) in *this*
                # run, so outputs on disk are an earlier run's, not this one's result
                o.status = "ok"
            else:
                o.status, o.code = "not run", ExitCode.FAILURE
                o.error = "not finished (the run was interrupted or stopped at another crash)"
            sidecar = fwd.with_name(fwd.name[: -len(".h5")] + ".json")
            if sidecar.exists():
                try:
                    o.qc = json.loads(sidecar.read_text()).get("QC", {}) or {}
                except (OSError, ValueError):
                    o.qc = {}
            out.append(o)
    return out


def _step_label(step: str) -> str:
    from synflow.cli.progress import STEP_NAMES

    return STEP_NAMES.get(step, step)


def _write_reports(outcomes, todo, output_dir: Path, run_info: dict, opts, stream) -> list:
    """``sub-X.html`` for every participant with at least one series (ok or failed)."""
    from synflow.interfaces.bids import build_derivative_name, derivative_dir
    from synflow.interfaces.reports import FIGURE_SPECS, write_report
    from synflow.workflows.dwi import DEFAULT_MASK

    by_participant: dict[str, list] = {}
    for o in outcomes:
        if o.status == "reference":
            continue
        if o.status == "failed" and o.series == "-" and "does not exist" in (o.error or ""):
            continue  # no such participant: nothing to report on
        by_participant.setdefault(o.participant, []).append(o)
    dwi_of = {(lab, it.name): it.dwi_file for lab, items in todo.items() for it in items}
    parameters = {"b0_threshold": opts.b0_threshold, "median_otsu": dict(DEFAULT_MASK),
                  "syn": _syn_options(opts)}
    written = []
    for lab, items in by_participant.items():
        series = []
        for o in items:
            figures = []
            dwi = dwi_of.get((lab, o.series))
            if dwi and opts.reports:
                fig_dir = derivative_dir(output_dir, dwi, "figures")
                for desc, (title, caption, kind) in FIGURE_SPECS.items():
                    path = fig_dir / build_derivative_name(dwi, "dwi", ".svg", desc=desc)
                    if path.exists():
                        figures.append({"title": title, "path": str(path), "caption": caption,
                                        "kind": kind})
            error = None
            if o.status != "ok":
                error = o.error or "failed"
                if o.failed_step:
                    error = f"step '{o.failed_step}': {error}"
                if o.crash_file:
                    error += f"\n\ncrash file: {o.crash_file}"
                if o.traceback:
                    error += f"\n\n{o.traceback}"
            series.append({"name": o.series if o.series != "-" else "(no DWI series)",
                           "status": "ok" if o.status == "ok" else "failed", "error": error,
                           "figures": figures, "qc": o.qc, "parameters": parameters,
                           "timings": o.timings})
        out_html = output_dir / f"sub-{lab}.html"
        try:
            written.append(write_report(out_html, lab, series, run_info=run_info))
        except Exception as exc:  # a report bug must not hide the processing results
            err = output_dir / "logs" / f"report-{run_info['run']}-sub-{lab}.err"
            err.parent.mkdir(parents=True, exist_ok=True)
            err.write_text(f"{type(exc).__name__}: {exc}\n")
            print(f"  warning: could not write {out_html}: {exc} (see {err})", file=stream)
    return written


def _finish(outcomes, reports, output_dir: Path, run_uuid: str, stream, t_start) -> int:
    from synflow.cli.progress import summary_table

    table = summary_table(outcomes)
    elapsed = time.monotonic() - t_start
    print(f"\nSummary ({elapsed:.1f} s):\n{table}", file=stream)
    log_dir = output_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / f"summary_{run_uuid}.txt").write_text(table + "\n")
    failed = [o for o in outcomes if o.status in ("failed", "not run")]
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
    codes = {o.code for o in failed}
    if not failed:
        return int(ExitCode.OK)
    for code in (ExitCode.FAILURE, ExitCode.DATA_ERROR, ExitCode.NO_INPUT,
                 ExitCode.FILTER_EMPTY):
        if code in codes:
            return int(code)
    return int(ExitCode.FAILURE)


def _version() -> str:
    import synflow

    return synflow.__version__


def _command_line() -> str:
    return " ".join(shlex.quote(a) for a in ["synflow"] + sys.argv[1:])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
