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
#   PIP_CA_BUNDLE  CA bundle handed to pip as the `pip_ca` build secret (default: $PIP_CERT,
#                  $SSL_CERT_FILE or $REQUESTS_CA_BUNDLE when set; needed behind a proxy that
#                  re-signs HTTPS)
#   RUN_UID        uid:gid to run as (default: yours, or 4242:4242 when you are root)
#   NPROCS         --nprocs for the demo run (default 2)
#   NO_CACHE=1     build without the layer cache (to measure a from-scratch build)
#   KEEP=1         keep the temporary directory with the dataset and outputs
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

tmp="$(mktemp -d "${TMPDIR:-/tmp}/synflow-image-test.XXXXXX")"
cleanup() {
    if [[ "${KEEP:-0}" == 1 ]]; then echo "kept $tmp"; return; fi
    # Outputs belong to $run_uid; as a non-root user podman may need its user namespace to
    # delete them, hence the fallback.
    rm -rf "$tmp" 2>/dev/null || { [[ $ENGINE == podman ]] && podman unshare rm -rf "$tmp"; } || true
}
trap cleanup EXIT

version="$(sed -n 's/^__version__ = "\(.*\)"/\1/p' synflow/__init__.py)"

# ------------------------------------------------------------------------------------------
# 1. build
if [[ $build == 1 ]]; then
    build_args=(
        -f docker/Dockerfile -t "$image"
        --build-arg "VERSION=$version"
        --build-arg "BUILD_DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
        --build-arg "VCS_REF=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    )
    [[ -n "${SYNFLOW_BASE:-}" ]] && build_args+=(--build-arg "BASE=$SYNFLOW_BASE")
    [[ "${NO_CACHE:-0}" == 1 ]] && build_args+=(--no-cache)
    # A proxy that re-signs HTTPS: pip in the build must trust the same CA as this host.
    # As a secret it is mounted for the pip RUN steps only and never lands in a layer.
    ca="${PIP_CA_BUNDLE:-${PIP_CERT:-${SSL_CERT_FILE:-${REQUESTS_CA_BUNDLE:-}}}}"
    [[ -n "$ca" && -s "$ca" ]] && build_args+=(--secret "id=pip_ca,src=$ca")
    # Proxy variables are predefined build args in Docker and podman: pass them on if set.
    for var in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
        [[ -n "${!var:-}" ]] && build_args+=(--build-arg "$var=${!var}")
    done
    [[ $ENGINE == docker ]] && export DOCKER_BUILDKIT=1   # RUN --mount=type=secret
    log "build: $ENGINE build ${build_args[*]} ."
    t0="$(now)"
    # Full log to a file, only the step headers on screen.
    set +e
    "$ENGINE" build "${build_args[@]}" . 2>&1 | tee "$tmp/build.log" |
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
if git rev-parse --git-dir >/dev/null 2>&1; then
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
if "$ENGINE" run --rm --entrypoint sh "$image" -c 'command -v gcc cc g++ >/dev/null'; then
    fail "a compiler is present in the final image"
fi

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

# ------------------------------------------------------------------------------------------
# 6. bad input: the data not mounted -> non-zero exit with a bind-mount hint, before work.
log "run without the data mounted"
set +e
"$ENGINE" run --rm -u "$run_uid" -v "$tmp/out:/out" "$image" /data /out participant \
    -w /tmp/work >"$tmp/nomount.log" 2>&1
rc=$?
set -e
tail -n 8 "$tmp/nomount.log"
[[ $rc -ne 0 ]] || fail "a run without /data mounted succeeded"
if grep -q -E -- '-v |-B |bind' "$tmp/nomount.log"; then
    echo "exit $rc with a bind-mount hint: ok"
else
    echo "WARNING: exit $rc but no bind-mount hint (CLI does not call container_mount_hint yet)"
fi

log "summary"
build_report="skipped"
[[ -n "${build_s:-}" ]] && build_report="${build_s}s"
echo "engine=$ENGINE image=$image size=$((size / 1000000))MB build=$build_report" \
     "demo_run=${run_s}s exit=0 run_uid=$run_uid subjects=$(wc -w <<<"$subjects")"
if [[ "${package_warning:-0}" == 1 ]]; then
    echo "PASS, with WARNING: package data missing from the wheel (see above)"
else
    echo "PASS"
fi
