"""Command-line parser of ``synflow`` (BIDS-Apps conventions, fMRIPrep's flag names)."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import NoReturn

import synflow
from synflow.cli.errors import ExitCode
from synflow.workflows.dwi import DEFAULT_MASK_DILATION_MM, DEFAULT_SYN

DESCRIPTION = f"""\
synflow {synflow.__version__}: register the mean b0 of every DWI series of a BIDS dataset
to a reference (affine + SyN, CC metric) and write BIDS-Derivatives: the b0 and brain
mask, the b0 in the reference space, ITK/ANTs and DIPY transforms, JSON sidecars and a
sub-<label>.html QC report per participant.

The reference is the bundled MNI152NLin2009aSym-derived 2 mm b0 template unless
--reference or --reference-participant is given.  Only the 'participant' level exists;
a 'group' level (population template) is not implemented yet.
"""

EPILOG = """\
examples:
  synflow /data/bids /data/bids/derivatives/synflow participant --participant-label 01 02
  synflow /data/bids /out participant --nprocs 8 --mem 16G -w /scratch/work
  synflow /data/bids /out participant --reference-participant 01
  synflow --demo /tmp/synflow-demo      # make a demo dataset, process it, print the error

exit codes: 0 ok; 1 a participant/series failed; 16 not valid BIDS; 18 the session/filter
selection matched no DWI series; 64 usage error; 65 unusable input data; 66 required input
missing; 73 cannot create the output/work dir.
"""


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors exit 64 (EX_USAGE): the spec reserves 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(int(ExitCode.USAGE), f"{self.prog}: error: {message}\n")


def _strip_prefix(prefix: str):
    def parse(value: str) -> str:
        value = value.strip()
        if value.startswith(prefix):
            value = value[len(prefix):]
        if not re.fullmatch(r"[A-Za-z0-9]+", value):
            raise argparse.ArgumentTypeError(
                f"{value!r} is not a valid BIDS label (letters and digits only, "
                f"with or without the '{prefix}' prefix)")
        return value
    return parse


def parse_mem_gb(value: str) -> float:
    """``--mem``: ``8000`` (MB, as fMRIPrep), ``8000M``, ``8G``, ``8GB``, ``1.5T`` -> GB."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?)[bB]?\s*", str(value))
    if not match:
        raise argparse.ArgumentTypeError(f"cannot read memory amount {value!r} "
                                         "(examples: 8000, 8000M, 8G)")
    number, unit = float(match.group(1)), match.group(2).upper() or "M"
    gb = number * {"K": 1 / 1024 ** 2, "M": 1 / 1024, "G": 1.0, "T": 1024.0}[unit]
    if gb <= 0:
        raise argparse.ArgumentTypeError(f"--mem must be positive, got {value!r}")
    return gb


def _number(kind: type, minimum: float, inclusive: bool, what: str):
    """An argparse ``type``: a finite ``kind`` (int/float) ``>= minimum`` (or ``>``)."""
    def parse(value: str):
        try:
            out = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value!r}") from None
        ok = out >= minimum if inclusive else out > minimum
        if not (ok and out < float("inf")):
            raise argparse.ArgumentTypeError(f"expected {what}, got {value!r}")
        return out

    parse.__name__ = what  # argparse names the type in its messages
    return parse


_positive_int = _number(int, 1, True, "a positive integer")
_nonneg_int = _number(int, 0, True, "an integer >= 0")
_nonneg_float = _number(float, 0.0, True, "a finite number >= 0")
_positive_float = _number(float, 0.0, False, "a positive number")


def build_parser() -> argparse.ArgumentParser:
    """The ``synflow`` argument parser."""
    parser = _Parser(prog="synflow", description=DESCRIPTION, epilog=EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bids_dir", nargs="?", type=Path,
                        help="root of the BIDS dataset (contains dataset_description.json)")
    parser.add_argument("output_dir", nargs="?", type=Path,
                        help="where to write the derivatives (outside the input dataset, "
                             "or under <bids_dir>/derivatives/)")
    parser.add_argument("analysis_level", nargs="?", choices=["participant"],
                        help="processing level; only 'participant' exists (no group "
                             "template yet)")
    parser.add_argument("--version", action="version",
                        version=f"synflow {synflow.__version__}")
    parser.add_argument("-v", "--verbose", dest="verbose", action="count", default=0,
                        help="more output: -v shows Nipype's workflow log, -vv debug")
    parser.add_argument("--demo", metavar="OUTPUT_DIR", type=Path,
                        help="generate the demo BIDS dataset in OUTPUT_DIR/demo_bids, "
                             "process it and print the registration error against the "
                             "known truth (no other positional argument needed)")

    g = parser.add_argument_group("selecting data (BIDS)")
    g.add_argument("--participant-label", "--participant_label", nargs="+", default=None,
                   type=_strip_prefix("sub-"), metavar="LABEL",
                   help="participants to process ('01' or 'sub-01'); default: all")
    g.add_argument("--session-label", "--session-id", "--session_label", nargs="+",
                   default=None, type=_strip_prefix("ses-"), metavar="LABEL",
                   help="sessions to process ('1' or 'ses-1'); default: all")
    g.add_argument("--bids-filter-file", "--bids_filter_file", type=Path, metavar="FILE",
                   help="JSON {\"dwi\": {entity: value}} narrowing the DWI query "
                        "(null = entity absent, \"*\" = any value)")
    g.add_argument("--skip-bids-validation", "--skip_bids_validation", action="store_true",
                   help="do not validate the input dataset (bids-validator if installed, "
                        "else a structural check)")
    g.add_argument("--bids-database-dir", type=Path, metavar="PATH",
                   help="reuse a PyBIDS database folder (default: a fresh one per run "
                        "under <work_dir>/<run_uuid>/bids_db)")

    g = parser.add_argument_group("reference")
    ref = g.add_mutually_exclusive_group()
    ref.add_argument("--reference", type=Path, metavar="FILE",
                     help="register to this 3-D NIfTI image instead of the bundled template "
                          "(skull-stripped here with median-Otsu)")
    ref.add_argument("--reference-participant", type=_strip_prefix("sub-"), metavar="LABEL",
                     help="register everybody else to this participant's mean b0 "
                          "(skull-stripped; first DWI series)")
    g.add_argument("--reference-space", metavar="NAME", type=_strip_prefix(""),
                   help="space-/to- entity of the outputs for --reference (default 'custom')"
                        " or --reference-participant (default 'sub<LABEL>')")

    g = parser.add_argument_group("b0 and registration settings")
    g.add_argument("--b0-threshold", type=_nonneg_float, default=50.0, metavar="B",
                   help="volumes with b <= B s/mm^2 are b0s (default 50, as DIPY; some "
                        "scanners write b=5 or 10)")
    g.add_argument("--level-iters", type=_nonneg_int, nargs="+", metavar="N",
                   default=DEFAULT_SYN["level_iters"],
                   help="SyN iterations per scale, coarsest first (default %(default)s)")
    g.add_argument("--syn-mask-dilation", type=_nonneg_float, metavar="MM",
                   default=DEFAULT_MASK_DILATION_MM,
                   help="SyN sees the b0 and the reference masked by their brain masks grown "
                        "by MM mm (default %(default)s; 0 = skull-stripped exactly at the "
                        "mask, as DIPY's tutorial)")
    g.add_argument("--cc-radius", type=_positive_int, default=DEFAULT_SYN["cc_radius"],
                   help="CC metric radius in voxels (default %(default)s)")
    g.add_argument("--sigma-diff", type=_positive_float, default=DEFAULT_SYN["sigma_diff"],
                   help="CC metric update smoothing (default %(default)s)")
    g.add_argument("--step-length", type=_positive_float, default=DEFAULT_SYN["step_length"],
                   help="SyN step length (default %(default)s)")
    g.add_argument("--ss-sigma-factor", type=_positive_float,
                   default=DEFAULT_SYN["ss_sigma_factor"],
                   help="scale-space smoothing factor (default %(default)s)")
    g.add_argument("--opt-tol", type=_positive_float, default=DEFAULT_SYN["opt_tol"],
                   help="SyN convergence tolerance (default %(default)s)")
    g.add_argument("--inv-iter", type=_positive_int, default=DEFAULT_SYN["inv_iter"],
                   help="inversion iterations (default %(default)s)")
    g.add_argument("--inv-tol", type=_positive_float, default=DEFAULT_SYN["inv_tol"],
                   help="inversion tolerance (default %(default)s)")

    g = parser.add_argument_group("performance and execution")
    g.add_argument("--nprocs", "--nthreads", "--n_cpus", "--n-cpus", type=_positive_int,
                   dest="nprocs", metavar="N",
                   help="CPUs to use in total (MultiProc n_procs; default: all available)")
    g.add_argument("--omp-nthreads", type=_positive_int, metavar="N",
                   help="threads per engine step (default: min(nprocs, 8) / parallel "
                        "participants, at least 1)")
    g.add_argument("--mem", "--mem_mb", "--mem-mb", type=parse_mem_gb, dest="mem_gb",
                   metavar="MEM",
                   help="memory cap for scheduling (8000 = MB, or 8G); not a hard limit")
    g.add_argument("-w", "--work-dir", type=Path, default=None,
                   help="working directory; reruns reuse finished steps (default ./work)")
    g.add_argument("--plugin", metavar="NAME",
                   help="Nipype execution plugin (MultiProc, Linear, SLURM, SGE, PBS, ...)")
    g.add_argument("--plugin-args", metavar="JSON",
                   help="plugin arguments as JSON/YAML mapping or @FILE, e.g. "
                        "'{\"sbatch_args\": \"-p short\"}'")
    g.add_argument("--use-plugin", type=Path, metavar="FILE",
                   help="YAML {plugin: NAME, plugin_args: {...}} (fMRIPrep format)")
    g.add_argument("--stop-on-first-crash", action="store_true",
                   help="stop everything at the first failure (default: keep processing "
                        "the other series and report the failures at the end)")
    g.add_argument("--no-reports", dest="reports", action="store_false",
                   help="skip the QC figures and HTML reports (faster)")
    return parser


def _missing_positionals(opts: argparse.Namespace) -> list[str]:
    """What is missing of BIDS_DIR OUTPUT_DIR participant, in words.

    The positionals are optional (for ``--demo``), so ``synflow /bids participant`` puts
    ``participant`` in OUTPUT_DIR: that means the output directory was forgotten."""
    given = [getattr(opts, n) for n in ("bids_dir", "output_dir")]
    if opts.analysis_level is None and given[1] is not None and str(given[1]) == "participant":
        return ["the output directory OUTPUT_DIR"]
    names = {"bids_dir": "the input dataset BIDS_DIR",
             "output_dir": "the output directory OUTPUT_DIR",
             "analysis_level": "the analysis level 'participant'"}
    return [names[n] for n in names if getattr(opts, n) is None]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and cross-check the command line (usage errors exit 64)."""
    parser = build_parser()
    opts = parser.parse_args(argv)
    if opts.demo is None:
        missing = _missing_positionals(opts)
        if missing:
            parser.error(f"missing {' and '.join(missing)} (usage: synflow BIDS_DIR OUTPUT_DIR "
                         "participant), or use --demo OUTPUT_DIR")
    elif opts.bids_dir is not None:
        parser.error("--demo OUTPUT_DIR takes no BIDS_DIR/OUTPUT_DIR/analysis level")
    if not any(opts.level_iters):
        parser.error("--level-iters needs at least one non-zero level")
    if opts.reference_space and not (opts.reference or opts.reference_participant):
        parser.error("--reference-space only applies with --reference or "
                     "--reference-participant")
    return opts
