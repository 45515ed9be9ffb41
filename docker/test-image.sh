#!/usr/bin/env bash
# Build the synflow image and run the demo dataset through it, the way users run BIDS Apps:
# input mounted read-only, output and work dirs read-write, as a non-root uid.  Then check
# the derivatives (dataset_description.json, per-subject HTML report, transforms) and that a
# run without the data mounted fails with a bind-mount hint.
#
# Works with Docker (BuildKit) on an ordinary machine and with rootful podman (no Docker
# engine, no Docker Hub: see docker/README.md, "Offline base image").
#
# Usage: docker/test-image.sh [--no-build] [-- EXTRA SYNFLOW ARGS...]
# Env:
#   ENGINE         docker | podman (default: docker if it answers, else podman)
#   IMAGE          tag to build/run (default: localhost/synflow:test)
#   SYNFLOW_BASE   base image (--build-arg BASE=...), e.g. localhost/synflow-base:bookworm-py3.11
#                  (default: the Dockerfile's python:3.11-slim-bookworm)
#   PIP_CA_BUNDLE  CA bundle handed to pip as the `pip_ca` build secret (default: the host
#                  pip's cert ($PIP_CERT or `cert` in pip.conf), else $SSL_CERT_FILE or
#                  $REQUESTS_CA_BUNDLE; needed behind a proxy that re-signs HTTPS)
#   PIP_INDEX_URL, PIP_EXTRA_INDEX_URL  (or index-url / extra-index-url in the host's pip
#                  config): http(s) indexes are passed to the build as build args;
#                  file:// ones are host paths and are left out
#   RUN_UID        uid:gid to run as (default: yours, or 4242:4242 when you are root)
#   NPROCS         --nprocs for the demo run (default 2)
#   NO_CACHE=1     build without the layer cache (to measure a from-scratch build)
#   KEEP=1         keep the temporary directory with the dataset and outputs
#   GIT_REF=REF    build from `git archive REF` (e.g. HEAD, a tag) instead of the working
#                  tree, so uncommitted edits do not end up in the image
#   STRICT_PACKAGE_DATA=0  only warn (instead of failing) when files of synflow/ are
#                  missing from the installed package
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"

build=1
if [[ "${1:-}" == "--no-build" ]]; then build=0; shift; fi
if [[ "${1:-}" == "--" ]]; then shift; fi
extra_args=("$@")

if [[ -z "${ENGINE:-}" ]]; then
    if command -v docker >/dev/null && docker info >/dev/null 2>&1; then ENGINE=docker
    elif command -v podman >/dev/null; then ENGINE=podman
    else echo "error: neither a working docker nor podman found" >&2; exit 1; fi
fi
image="${IMAGE:-localhost/synflow:test}"
nprocs="${NPROCS:-2}"
if [[ -n "${RUN_UID:-}" ]]; then run_uid="$RUN_UID"
elif [[ $(id -u) -eq 0 ]]; then run_uid="4242:4242"   # never test as root: users are not
else run_uid="$(id -u):$(id -g)"; fi

log() { printf '\n== %s\n' "$*"; }
now() { date +%s.%N; }
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$@"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
# pip_setting KEY: the host pip's value for KEY (index-url, extra-index-url...): $PIP_<KEY>
# first, then pip's config files (site, user, global), as pip itself resolves it.
pip_setting() {
    local var="PIP_$(tr 'a-z-' 'A-Z_' <<<"$1")"
    if [[ -n "${!var:-}" ]]; then echo "${!var}"; return; fi
    command -v python3 >/dev/null || return 0
    python3 -m pip config list 2>/dev/null | python3 -c '
import re, sys
found = {}
for line in sys.stdin:
    m = re.match(r"^(:env:|[a-z]+)\.([a-z-]+)=(.*)$", line.strip())
    if m and m.group(2) == sys.argv[1]:
        found.setdefault(m.group(1), m.group(3).strip("\x27\""))
for scope in (":env:", "install", "global"):
    if scope in found:
        print(found[scope])
        break
' "$1" || true
}

tmp="$(mktemp -d "${TMPDIR:-/tmp}/synflow-image-test.XXXXXX")"
cleanup() {
    if [[ "${KEEP:-0}" == 1 ]]; then echo "kept $tmp"; return; fi
    # Outputs belong to $run_uid; as a non-root user podman may need its user namespace to
    # delete them, hence the fallback.
    rm -rf "$tmp" 2>/dev/null || { [[ $ENGINE == podman ]] && podman unshare rm -rf "$tmp"; } || true
}
trap cleanup EXIT

# Build context: the working tree, or a clean export of GIT_REF.
context="$repo"
vcs_ref="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [[ -n "${GIT_REF:-}" ]]; then
    context="$tmp/context"
    mkdir -p "$context"
    git archive "$GIT_REF" | tar -x -C "$context"
    vcs_ref="$(git rev-parse --short "$GIT_REF")"
    echo "build context: git archive $GIT_REF ($vcs_ref)"
elif [[ -n "$(git status --porcelain -- synflow pyproject.toml docker 2>/dev/null)" ]]; then
    echo "note: building the working tree, which has uncommitted changes (GIT_REF=HEAD to avoid)"
    vcs_ref="$vcs_ref-dirty"
fi
version="$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$context/synflow/__init__.py")"

# ------------------------------------------------------------------------------------------
# 1. build
if [[ $build == 1 ]]; then
    build_args=(
        -f "$context/docker/Dockerfile" -t "$image"
        --build-arg "VERSION=$version"
        --build-arg "BUILD_DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
        --build-arg "VCS_REF=$vcs_ref"
    )
    [[ -n "${SYNFLOW_BASE:-}" ]] && build_args+=(--build-arg "BASE=$SYNFLOW_BASE")
    [[ "${NO_CACHE:-0}" == 1 ]] && build_args+=(--no-cache)
    # A proxy that re-signs HTTPS: pip in the build must trust the same CA as this host.
    # As a secret it is mounted for the pip RUN steps only and never lands in a layer.
    ca="${PIP_CA_BUNDLE:-$(pip_setting cert)}"
    ca="${ca:-${SSL_CERT_FILE:-${REQUESTS_CA_BUNDLE:-}}}"
    [[ -n "$ca" && -s "$ca" ]] && build_args+=(--secret "id=pip_ca,src=$ca")
    # The host pip's index settings (a private mirror, an extra index): pass the http(s)
    # ones on as build args (they only reach the builder stage).  file:// indexes and
    # find-links folders are host paths that do not exist inside the build: dropped.
    for key in index-url extra-index-url; do
        urls=""
        for url in $(pip_setting "$key"); do
            case "$url" in
                http://* | https://*) urls="${urls:+$urls }$url" ;;
                *) echo "note: host pip $key $url is not reachable from the build: not passed" ;;
            esac
        done
        if [[ -n "$urls" ]]; then
            var="PIP_$(tr 'a-z-' 'A-Z_' <<<"$key")"
            build_args+=(--build-arg "$var=$urls")
        fi
    done
    # Proxy variables are predefined build args in Docker and podman: pass them on if set.
    for var in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
        [[ -n "${!var:-}" ]] && build_args+=(--build-arg "$var=${!var}")
    done
    [[ $ENGINE == docker ]] && export DOCKER_BUILDKIT=1   # RUN --mount=type=secret
    log "build: $ENGINE build ${build_args[*]} ."
    t0="$(now)"
    # Full log to a file, only the step headers on screen.
    set +e
    "$ENGINE" build "${build_args[@]}" "$context" 2>&1 | tee "$tmp/build.log" |
        grep --line-buffered -E '^(STEP|\[[0-9]|#[0-9]+ \[|Successfully)'
    rc=${PIPESTATUS[0]}
    set -e
    [[ $rc -eq 0 ]] || { tail -n 40 "$tmp/build.log"; fail "image build failed ($rc)"; }
    build_s="$(elapsed "$t0" "$(now)")"
    echo "build time: ${build_s} s"
fi
size="$("$ENGINE" image inspect --format '{{.Size}}' "$image")"
echo "image: $image  size: $((size / 1000000)) MB"
"$ENGINE" image inspect --format '{{json .Config.Labels}}' "$image"

# ------------------------------------------------------------------------------------------
# 2. smoke test: entrypoint, version, environment, as a non-root uid
log "smoke test"
"$ENGINE" run --rm -u "$run_uid" "$image" --version
"$ENGINE" run --rm -u "$run_uid" --entrypoint python "$image" -c '
import os, sys, tempfile
import synflow, nipype, bids, matplotlib
assert os.environ["SYNFLOW_IN_CONTAINER"] == "1" and os.environ["PYTHONNOUSERSITE"] == "1"
assert os.environ["OMP_NUM_THREADS"] == "1"
home = os.environ["HOME"]
assert os.access(home, os.W_OK), f"HOME {home} not writable for uid {os.getuid()}"
assert os.access(os.environ["MPLCONFIGDIR"], os.W_OK), "MPLCONFIGDIR not writable"
print(f"uid={os.getuid()} python={sys.version.split()[0]} synflow={synflow.__version__} "
      f"nipype={nipype.__version__} matplotlib={matplotlib.__version__}: HOME writable")
'
# Every file of the source package must be in the installed one: package data missing
# from pyproject.toml's [tool.setuptools.package-data] only shows up in a wheel install.
# (git's view of the tree: tracked and untracked files, minus what .gitignore excludes)
if [[ -n "${GIT_REF:-}" ]]; then
    git ls-tree -r --name-only "$GIT_REF" synflow | sort -u >"$tmp/src-files"
elif git rev-parse --git-dir >/dev/null 2>&1; then
    git ls-files --cached --others --exclude-standard synflow | sort -u >"$tmp/src-files"
else
    find synflow -type f ! -name '*.py[cod]' ! -path '*/__pycache__/*' | sort >"$tmp/src-files"
fi
"$ENGINE" run --rm --entrypoint python "$image" -c '
import pathlib, synflow
root = pathlib.Path(synflow.__file__).parent
for f in sorted(root.rglob("*")):
    if f.is_file() and "__pycache__" not in f.parts:
        print("synflow/" + f.relative_to(root).as_posix())
' | sort >"$tmp/img-files"
missing="$(comm -23 "$tmp/src-files" "$tmp/img-files")"
if [[ -z "$missing" ]]; then
    echo "all $(wc -l <"$tmp/src-files") files of synflow/ are installed"
else
    msg="files of synflow/ missing from the installed package (add them to
[tool.setuptools.package-data] in pyproject.toml):
$missing"
    # STRICT_PACKAGE_DATA=0 reports it and goes on (to test the rest meanwhile).
    if [[ "${STRICT_PACKAGE_DATA:-1}" == 1 ]]; then fail "$msg"; fi
    echo "WARNING: $msg" >&2
    package_warning=1
fi
# No compiler may be left in the final image.
compilers="$("$ENGINE" run --rm --entrypoint sh "$image" -c \
    'for c in gcc cc c++ g++ clang gfortran; do command -v "$c"; done' || true)"
[[ -z "$compilers" ]] || fail "compiler(s) in the final image: $compilers"
echo "no compiler in the image"

# ------------------------------------------------------------------------------------------
# 3. demo dataset, generated on the host (falls back to the image when the host lacks the
#    dependencies); the container only ever sees it read-only.
log "demo dataset"
mkdir -p "$tmp/bids" "$tmp/out" "$tmp/work"
gen='import sys; from synflow.data.demo import make_demo_dataset; make_demo_dataset(sys.argv[1])'
if ! PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" python3 -c "$gen" "$tmp/bids" 2>"$tmp/gen.err"; then
    echo "host generation failed ($(tail -n 1 "$tmp/gen.err")); generating inside the image"
    "$ENGINE" run --rm -v "$tmp/bids:/gen" --entrypoint python "$image" -c "$gen" /gen
fi
find "$tmp/bids" -type f | sed "s|$tmp/||" | sort | head -n 20
# The run uid must be able to write the output and work dirs (and only those).
if [[ $(id -u) -eq 0 ]]; then
    chown -R "$run_uid" "$tmp/out" "$tmp/work"
else
    chmod 0777 "$tmp/out" "$tmp/work"
fi
chmod -R a+rX "$tmp/bids"

# ------------------------------------------------------------------------------------------
# 4. the demo run, as users run it.  Docker's own `-w` is not used: it would clash with the
#    app's -w (fmriprep#1731).
log "demo run"
cmd=("$ENGINE" run --rm -u "$run_uid"
     -v "$tmp/bids:/data:ro" -v "$tmp/out:/out" -v "$tmp/work:/work"
     "$image" /data /out participant -w /work --nprocs "$nprocs" "${extra_args[@]}")
echo "${cmd[*]}"
t0="$(now)"
set +e
"${cmd[@]}" >"$tmp/run.log" 2>&1
rc=$?
set -e
run_s="$(elapsed "$t0" "$(now)")"
tail -n 25 "$tmp/run.log"
echo "exit code: $rc   run time: ${run_s} s"
[[ $rc -eq 0 ]] || fail "demo run exited with $rc"

# ------------------------------------------------------------------------------------------
# 5. outputs
log "outputs"
desc="$(find "$tmp/out" -maxdepth 2 -name dataset_description.json | head -n 1)"
[[ -n "$desc" ]] || fail "no dataset_description.json under the output dir"
python3 - "$desc" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
assert d.get("DatasetType") == "derivative", d
assert any(g.get("Name", "").lower() == "synflow" for g in d.get("GeneratedBy", [])), d
print("dataset_description.json:", json.dumps({k: d[k] for k in ("Name", "DatasetType")}))
PY
deriv="$(dirname "$desc")"
subjects=$(find "$tmp/bids" -maxdepth 1 -type d -name 'sub-*' -printf '%f\n' | sort)
[[ -n "$subjects" ]] || fail "demo dataset has no subjects"
for sub in $subjects; do
    report="$(find "$deriv" -maxdepth 2 -name "$sub.html" | head -n 1)"
    [[ -n "$report" ]] || fail "$sub: no $sub.html report"
    n_xfm=$(find "$deriv/$sub" -name '*_xfm.*' | wc -l)
    (( n_xfm > 0 )) || fail "$sub: no *_xfm.* transforms"
    echo "$sub: report ${report#"$tmp/"}, $n_xfm transform file(s):"
    find "$deriv/$sub" -name '*_xfm.*' -printf '    %P (%s bytes)\n' | sort
done
# Files must belong to the run uid, not root (Docker's classic pitfall with `-u`).
owners=$(find "$tmp/out" -type f -printf '%u:%g\n' | sort -u | tr '\n' ' ')
echo "output owned by: $owners"
[[ "$owners" != *root* ]] || fail "outputs owned by root"

# The registration itself: each series' DIPY-layout mapping, read back inside the image
# (inputs and outputs read-only), scored against the demo's known truth.  Affine alone
# leaves ~2.5 mm; SyN on the demo gets ~1.4-1.9 mm with the default settings.
log "registration error against the demo's truth (max mean: ${MAX_ERROR_MM:-2.25} mm)"
score='
import sys
from pathlib import Path
from synflow.align import read_mapping
from synflow.cli.demo import pull_points
from synflow.data import TEMPLATE_SPACE
from synflow.data.demo import demo_registration_error
from synflow.interfaces.bids import build_derivative_name, derivative_dir, parse_entities
bids, deriv, limit = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
worst, n = 0.0, 0
for dwi in sorted(bids.glob("sub-*/**/dwi/*_dwi.nii.gz")):
    ent = parse_entities(dwi)
    f = derivative_dir(deriv, dwi, "dwi") / build_derivative_name(
        dwi, "xfm", ".nii.gz", from_="dwiref", to=TEMPLATE_SPACE, mode="image", desc="dipy")
    err = demo_registration_error(bids / "sourcedata" / "truth", ent["sub"],
                                  pull_points(read_mapping(f)),
                                  session=ent.get("ses"), run=ent.get("run"))
    mean, p95 = err["mean"], err["p95"]
    print(f"  {dwi.name}: end-point error mean {mean:.2f} mm, p95 {p95:.2f} mm")
    worst, n = max(worst, err["mean"]), n + 1
assert n, "no series scored"
assert worst <= limit, f"mean end-point error {worst:.2f} mm > {limit} mm"
'
"$ENGINE" run --rm -u "$run_uid" -v "$tmp/bids:/data:ro" -v "$deriv:/out:ro" \
    --entrypoint python "$image" -c "$score" /data /out "${MAX_ERROR_MM:-2.25}" ||
    fail "registration error check failed"

# ------------------------------------------------------------------------------------------
# 5b. as Apptainer runs it: read-only image, another uid, HOME not writable, MPLCONFIGDIR
#     where docker/synflow.def's %environment puts it.  One participant, short schedule,
#     with the QC report (matplotlib).
log "Apptainer-like run (--read-only image, uid 4343, one participant)"
mkdir -p "$tmp/out_ro" "$tmp/work_ro"
if [[ $(id -u) -eq 0 ]]; then chown 4343:4343 "$tmp/out_ro" "$tmp/work_ro"
else chmod 0777 "$tmp/out_ro" "$tmp/work_ro"; fi
sub1="$(head -n 1 <<<"$subjects")"
set +e
"$ENGINE" run --rm --read-only --tmpfs /tmp -u 4343:4343 \
    -e MPLCONFIGDIR=/tmp/synflow-matplotlib-4343 \
    -e HOME=/nonexistent \
    -v "$tmp/bids:/data:ro" -v "$tmp/out_ro:/out" -v "$tmp/work_ro:/work" \
    "$image" /data /out participant -w /work --participant-label "${sub1#sub-}" \
    --level-iters 4 4 2 --nprocs "$nprocs" >"$tmp/ro.log" 2>&1
rc=$?
set -e
[[ $rc -eq 0 ]] || { tail -n 30 "$tmp/ro.log"; fail "read-only run exited with $rc"; }
[[ -f "$tmp/out_ro/$sub1.html" ]] || fail "read-only run: no $sub1.html"
n_xfm=$(find "$tmp/out_ro/$sub1" -name '*_xfm.h5' | wc -l)
(( n_xfm > 0 )) || fail "read-only run: no *_xfm.h5"
echo "read-only image, uid 4343: exit 0, $sub1.html and $n_xfm .h5 transform(s) written"

# ------------------------------------------------------------------------------------------
# 6. bad input: the data not mounted -> non-zero exit with a bind-mount hint, before work.
log "run without the data mounted"
set +e
"$ENGINE" run --rm -u "$run_uid" -v "$tmp/out:/out" "$image" /data /out participant \
    -w /tmp/work >"$tmp/nomount.log" 2>&1
rc=$?
set -e
tail -n 8 "$tmp/nomount.log"
# 66 = EX_NOINPUT (a required input is missing), as the CLI documents.
[[ $rc -eq 66 ]] || fail "a run without /data mounted exited with $rc (expected 66)"
grep -q -- '/data does not exist inside the container' "$tmp/nomount.log" ||
    fail "no message naming the missing path /data"
grep -q -E -- '-v /host/path/to/data:/data:ro' "$tmp/nomount.log" &&
    grep -q -E -- '-B /host/path/to/data:/data:ro' "$tmp/nomount.log" ||
    fail "no docker -v / apptainer -B bind hint"
echo "exit $rc, names /data, gives the -v and -B bind hints: ok"

log "summary"
build_report="skipped"
[[ -n "${build_s:-}" ]] && build_report="${build_s}s"
echo "engine=$ENGINE image=$image size=$((size / 1000000))MB build=$build_report" \
     "demo_run=${run_s}s exit=0 run_uid=$run_uid subjects=$(wc -w <<<"$subjects")" \
     "read_only_run=ok no_mount=exit66+hint"
if [[ "${package_warning:-0}" == 1 ]]; then
    echo "PASS, with WARNING: package data missing from the wheel (see above)"
else
    echo "PASS"
fi
