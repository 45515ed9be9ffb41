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
4. in a ``finally:`` block, whatever happened (:mod:`synflow.cli.collect`): read each
   series' outcome from the status callback, its manifest (written by the workflow's last
   node under ``<work>/manifests/``) and the crash files
   (``<out>/sub-X/log/<run_uuid>/crash-*.txt``),
   write ``sub-X.html`` (failed series included, with their error), the dataset
   description and ``.bidsignore``, print the summary table, and exit 0, or the most
   telling failure code (1 if anything crashed, else 65 bad data, else 66 missing input).

Before anything is written, the run locks its output and work folders
(:mod:`synflow.cli.lock`) and removes partial files of dead runs; MultiProc runs through
:class:`synflow.cli.multiproc.SafeMultiProcPlugin` (a killed worker or a full disk ends
the run instead of hanging it).  (A little over 500 lines: the steps of a run, in order,
in one place; the checks themselves live in bids, names, outputs, lock and space.)
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
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TextIO

from synflow.cli.errors import ExitCode, SynflowError

if TYPE_CHECKING:
    from synflow.cli.context import RunContext
    from synflow.workflows.base import DWISeries
    from synflow.workflows.reference import Reference

    Todo = Mapping[str, Sequence[DWISeries]]

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
        role = "work" if what.startswith("work") else "output"
        raise SynflowError(f"cannot create or write the {what} {path}: {exc.strerror or exc}. "
                           f"Choose a writable folder.{container_mount_hint(path, role)}",
                           ExitCode.CANT_CREATE) from exc


def check_reference(opts: Namespace) -> tuple[Reference, int]:
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


def _validated_participants(opts: Namespace) -> list[str] | None:
    """The participants the validator checks: the selected ones and the reference one."""
    labels = opts.participant_label
    if not labels:
        return None
    extra = [opts.reference_participant] if getattr(opts, "reference_participant", None) else []
    return sorted(set(labels) | set(extra))


def run_participant(opts: Namespace, stream: TextIO | None = None) -> int:
    """Run the participant level; returns the exit code (see :mod:`synflow.cli.errors`)."""
    stream = stream or sys.stdout
    t_start = time.monotonic()
    bids_dir = opts.bids_dir.absolute()
    output_dir = opts.output_dir.absolute()
    work_dir = (opts.work_dir or Path.cwd() / "work").absolute()
    check_locations(bids_dir, output_dir, work_dir)
    if opts.bids_database_dir is not None and _inside(opts.bids_database_dir.resolve(),
                                                      bids_dir.resolve()):
        raise SynflowError(f"--bids-database-dir {opts.bids_database_dir} is inside the input "
                           f"dataset {bids_dir} (the input is never written); give a folder "
                           "outside it, or leave the option out.", ExitCode.USAGE)

    from synflow.cli.bids import load_filters, validate_dataset

    validated = _validated_participants(opts)
    from synflow.cli.bids import Validation

    validation = (Validation("skipped") if opts.skip_bids_validation
                  else validate_dataset(bids_dir, validated))
    reference, ref_voxels = check_reference(opts)
    filters = load_filters(opts.bids_filter_file)
    if opts.session_label and "session" in filters:
        raise SynflowError(f"--bids-filter-file {opts.bids_filter_file} sets 'session' and "
                           "--session-label is given: the filter would override the session "
                           "selection. Use one of them.", ExitCode.USAGE)

    from synflow.cli.plugins import PluginError, resolve_plugin

    try:
        plugin, plugin_args = resolve_plugin(opts.plugin, opts.plugin_args, opts.use_plugin,
                                             opts.nprocs, opts.mem_gb)
    except PluginError as exc:
        raise SynflowError(str(exc), ExitCode.USAGE) from exc
    _make_dir(output_dir, "output directory")
    _make_dir(work_dir, "work directory")

    run_uuid = f"{time.strftime('%Y%m%d-%H%M%S')}_{uuid.uuid4()}"
    from synflow.cli.lock import RunLock, clean_stale_partials

    lock = RunLock(run_uuid, _command_line())
    try:
        lock.acquire(output_dir, "output directory")
        if work_dir.resolve() != output_dir.resolve():
            lock.acquire(work_dir, "work directory")
        for path, info in lock.taken_over:
            print(f"  took over the stale lock {path} (pid {info.get('pid')} is gone)",
                  file=stream)
        removed = clean_stale_partials(output_dir, work_dir / "manifests")
        if removed:
            print(f"  removed {len(removed)} partial file(s) left by an interrupted run",
                  file=stream)
        return _run_locked(opts, stream, t_start, bids_dir, output_dir, work_dir, run_uuid,
                           validation, reference, ref_voxels, filters, plugin, plugin_args)
    finally:
        lock.release()


def _run_locked(opts: Namespace, stream: TextIO, t_start: float, bids_dir: Path,
                output_dir: Path, work_dir: Path, run_uuid: str, validation: Any,
                reference: Reference, ref_voxels: int, filters: dict, plugin: str,
                plugin_args: Mapping[str, Any]) -> int:
    """The run once its folders are locked: select, build the context, execute."""
    (work_dir / run_uuid).mkdir(parents=True, exist_ok=True)
    print(f"synflow {_version()}: {bids_dir} -> {output_dir} (run {run_uuid})", file=stream)
    print(f"  validation: {validation.how}; work directory: {work_dir}", file=stream)
    sel, reference, ref_voxels = _select(opts, bids_dir, work_dir / run_uuid, reference,
                                         ref_voxels, filters, validation)
    from synflow.cli.bids import Problem
    from synflow.cli.context import RunContext
    from synflow.cli.outputs import participant_write_problem

    for label in [k for k, v in sel.participants.items() if v]:
        why = participant_write_problem(output_dir, label, run_uuid)
        if why is not None:
            sel.problems.append(Problem(label, "-", why, ExitCode.CANT_CREATE))
            sel.participants[label] = []
    todo = {k: v for k, v in sel.participants.items() if v}
    n_series = sum(len(v) for v in todo.values())
    ctx = RunContext(opts=opts, bids_dir=bids_dir, output_dir=output_dir, work_dir=work_dir,
                     run_uuid=run_uuid, reference=reference, ref_voxels=ref_voxels,
                     plugin=plugin, plugin_args=MappingProxyType(dict(plugin_args)),
                     omp_nthreads=_omp_nthreads(opts, plugin, plugin_args, n_series),
                     command=_command_line(), stream=stream, t_start=t_start)
    print(f"  reference: {reference.kind} ({reference.space}); {len(todo)} participant(s), "
          f"{n_series} series; plugin {plugin}"
          + (f" n_procs={plugin_args.get('n_procs')}" if "n_procs" in plugin_args else "")
          + f", {ctx.omp_nthreads} thread(s) per step", file=stream)
    from synflow.cli.space import space_warning

    warning = space_warning(ctx, todo) if todo else None
    if warning:
        print(f"  {warning}", file=stream)
    from synflow.cli.progress import SeriesOutcome

    outcomes = [SeriesOutcome(p.participant, p.series, "failed", error=p.message, code=p.code)
                for p in sel.problems]
    for problem in sel.problems:
        print(f"  skipping sub-{problem.participant}"
              f"{'' if problem.series == '-' else ' ' + problem.series}: {problem.message}",
              file=stream)
    ignored = sorted(sel.ignored, key=lambda fw: (len(fw[0]), fw[0]))
    for fname, why in ignored[:5]:  # a symlink loop gives one per level: the first few
        print(f"  ignored {fname}: {why}", file=stream)
    if len(ignored) > 5:
        print(f"  ... and {len(ignored) - 5} more file(s) ignored (not at a BIDS path)",
              file=stream)
    _prepare_outputs(ctx)
    return _execute(ctx, todo, outcomes)


def _select(opts: Namespace, bids_dir: Path, run_dir: Path, reference: Reference,
            ref_voxels: int, filters: dict, validation: Any) -> tuple[Any, Reference, int]:
    """Index the dataset and pick the series: ``(selection, reference, ref_voxels)``.

    Participants the BIDS validator rejected are reported, not selected."""
    from synflow.cli.bids import check_series, make_layout, select_series

    labels = opts.participant_label
    index_labels = (sorted(set(labels) | {opts.reference_participant})
                    if labels and opts.reference_participant else labels)
    db_dir = opts.bids_database_dir or run_dir / "bids_db"
    layout = make_layout(bids_dir, Path(db_dir).absolute(), opts.bids_database_dir is None,
                         index_labels)
    if opts.reference_participant:
        reference, ref_voxels = _participant_reference(opts, layout, bids_dir, check_series)
        if labels is None:
            labels = sorted(p.name[4:] for p in bids_dir.glob("sub-*") if p.is_dir())
        labels = [lab for lab in labels if lab != opts.reference_participant]
    if not any(p.is_dir() for p in bids_dir.glob("sub-*")):
        raise SynflowError(f"no sub-<label> folders in {bids_dir}: nothing to process.",
                           ExitCode.NO_INPUT)
    rejected = validation.problems()
    if rejected:
        if labels is None:
            labels = sorted(p.name[4:] for p in bids_dir.glob("sub-*") if p.is_dir())
        labels = [lab for lab in labels if lab not in validation.invalid]
    sel = select_series(layout, bids_dir, labels, opts.session_label, filters,
                        opts.b0_threshold)
    sel.problems[:0] = rejected
    return sel, reference, ref_voxels


def _prepare_outputs(ctx: RunContext) -> None:
    """``<work>/<run>/config.json``, the dataset description and ``.bidsignore``."""
    from synflow._atomic import atomic_path
    from synflow.cli.outputs import existing_version, write_bidsignore, write_dataset_description

    config = {"run_uuid": ctx.run_uuid, "command": ctx.command, "version": _version(),
              "bids_dir": str(ctx.bids_dir), "output_dir": str(ctx.output_dir),
              "work_dir": str(ctx.work_dir), "plugin": ctx.plugin,
              "plugin_args": {k: v for k, v in ctx.plugin_args.items()
                              if k != "status_callback"},
              "omp_nthreads": ctx.omp_nthreads, "reference": ctx.reference.describe(),
              "options": {k: (str(v) if isinstance(v, Path) else v)
                          for k, v in vars(ctx.opts).items()}}
    with atomic_path(ctx.work_dir / ctx.run_uuid / "config.json") as tmp:
        tmp.write_text(json.dumps(config, indent=2, default=str))
    previous = existing_version(ctx.output_dir)
    if previous and previous != _version():
        print(f"  warning: {ctx.output_dir} was written by synflow {previous}; this is "
              f"{_version()}. Mixing versions in one derivatives folder is not advised.",
              file=ctx.stream)
    write_dataset_description(ctx.output_dir, ctx.bids_dir)
    write_bidsignore(ctx.output_dir)


def _execute(ctx: RunContext, todo: Todo, outcomes: list) -> int:
    """Run the graph; then, whatever happened, the summary (unless jobs were only queued)."""
    from synflow.cli.collect import summarise
    from synflow.cli.plugins import plugin_blocks

    progress = None
    # SLURMGraph, SGEGraph, PBSGraph, CondorDAGMan: run() returns once the jobs are queued
    submitted = False
    try:
        if todo:
            progress = _run_workflow(ctx, todo)
            submitted = not plugin_blocks(ctx.plugin, ctx.plugin_args)
    finally:
        if not submitted:
            code = summarise(ctx, todo, progress, outcomes)
            if progress is not None and progress.disk_full:
                from synflow.cli.space import disk_full_message

                print(f"\nsynflow: error: {disk_full_message(ctx, todo, *progress.disk_full)}",
                      file=ctx.stream)
                code = int(ExitCode.CANT_CREATE)
    if submitted:
        from synflow.cli.outputs import write_dataset_description

        write_dataset_description(ctx.output_dir, ctx.bids_dir)
        print(f"\nThe workflow was submitted to the scheduler ({ctx.plugin}) as dependent "
              f"jobs; outputs appear in {ctx.output_dir} as they finish.\nFor the summary "
              "table and the HTML reports, run the same command again with --plugin "
              "MultiProc and the same -w: every finished step is reused.", file=ctx.stream)
        return int(ExitCode.OK)
    return code


def _participant_reference(opts: Namespace, layout: Any, bids_dir: Path,
                           check_series: Any) -> tuple[Reference, int]:
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


def _omp_nthreads(opts: Namespace, plugin: str, plugin_args: Mapping[str, Any],
                  n_series: int) -> int:
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


def _run_workflow(ctx: RunContext, todo: Todo) -> Any:
    """Build the graph and run it; returns the :class:`~synflow.cli.progress.Progress`."""
    from nipype import config as nconfig

    from synflow.cli.collect import syn_options
    from synflow.cli.plugins import plugin_environment
    from synflow.cli.progress import Progress
    from synflow.workflows.base import init_synflow_wf

    opts = ctx.opts
    wf = init_synflow_wf(
        todo, output_dir=str(ctx.output_dir), reference=ctx.reference,
        bids_dir=str(ctx.bids_dir), b0_threshold=opts.b0_threshold, syn=syn_options(opts),
        omp_nthreads=ctx.omp_nthreads, ref_voxels=ctx.ref_voxels, reportlets=opts.reports,
        mask_dilation_mm=opts.syn_mask_dilation,
        crashdump_dirs={lab: str(ctx.participant_crash_dir(lab)) for lab in todo},
        manifest_dir=str(ctx.manifest_dir), run_id=ctx.run_uuid)
    wf.base_dir = str(ctx.work_dir)
    execution = {
        "crashfile_format": "txt",
        "crashdump_dir": str(ctx.run_crash_dir),
        "stop_on_first_crash": bool(opts.stop_on_first_crash),
        "remove_unnecessary_outputs": True,
        "check_version": False,
        "create_report": True,
        # Nipype's scheduler loop sleeps this long between polls (default 2 s): for local
        # plugins that is pure overhead on every step; batch plugins poll a scheduler, so
        # they keep the default.
        "poll_sleep_duration": 0.05 if ctx.plugin in _LOCAL_PLUGINS else 2,
    }
    nconfig.update_config({"execution": execution})
    wf.config["execution"].update(execution)
    series_of = {(f"sub_{lab}_wf", item.wf_name): (lab, item.name)
                 for lab, items in todo.items() for item in items}
    progress = Progress(series_of, stream=ctx.stream, t0=ctx.t_start)
    args = dict(ctx.plugin_args)
    args["status_callback"] = progress
    progress.log(f"running {wf.name} ({ctx.plugin})")
    runner: Any = ctx.plugin
    if ctx.plugin == "MultiProc":  # ends on a killed worker or a full disk (no hang)
        from synflow.cli.multiproc import SafeMultiProcPlugin

        runner = SafeMultiProcPlugin(plugin_args=args,
                                     pid_dir=str(ctx.work_dir / ctx.run_uuid / "tasks"))
        runner.crash_fallback = str(ctx.run_crash_dir)
    try:
        with plugin_environment(ctx.plugin):
            wf.run(plugin=runner, plugin_args=args)
    except RuntimeError as exc:
        # Nipype raises after the whole graph ran when any node failed
        # ("Workflow did not execute cleanly"); the failures are collected from the
        # callback records and crash files in synflow.cli.collect.
        if not any(r.failed for r in progress.nodes.values()):
            progress.log(f"Nipype stopped: {exc}")
            raise SynflowError(f"Nipype could not run the workflow: {exc}",
                               ExitCode.FAILURE) from exc
    except OSError as exc:  # the scheduler itself could not write (crash file, report)
        from synflow.cli.multiproc import is_disk_full

        if not is_disk_full(str(exc)):
            raise
        progress.disk_full = (str(getattr(exc, "filename", None) or ctx.work_dir), str(exc))
    progress.disk_full = progress.disk_full or getattr(runner, "disk_full", None)
    return progress


def _version() -> str:
    import synflow

    return synflow.__version__


def _command_line() -> str:
    return " ".join(shlex.quote(a) for a in ["synflow"] + sys.argv[1:])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
