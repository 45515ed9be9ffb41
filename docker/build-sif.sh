#!/usr/bin/env bash
# Build the Apptainer image (.sif) of synflow from the locally built Docker/podman image,
# check it (`apptainer test`), and optionally run the demo dataset in it and compare the
# outputs with the same run under the Docker/podman image (sha256 of every derivative file).
#
# Apptainer where it is installed: plain `apptainer build`.  Where it is not (Debian 12 has
# no apptainer package), as root: a Debian sid root filesystem with apptainer from sid
# (debootstrap, reused when it exists), entered with unshare + pivot_root (Apptainer refuses
# a plain chroot as a "weak chrooted environment").  See docker/README.md, "Apptainer".
#
# Usage: docker/build-sif.sh            (from anywhere; the image must exist: podman build ...)
# Env:
#   IMAGE        image to convert (default localhost/synflow:0.1.0)
#   ENGINE       docker | podman: saves the image and does the comparison run
#                (default: docker if it answers, else podman)
#   OUT_DIR      archive, .sif, demo data and outputs (default /var/tmp/synflow-sif;
#                big files: ~600 MB archive + ~250 MB .sif; never put it inside the repository)
#   SIF          the image to write (default $OUT_DIR/synflow.sif)
#   DEF          recipe (default docker/synflow.def)
#   APPTAINER    native | sid (default: native if `apptainer` is on PATH, else sid)
#   SID_ROOT     the sid root filesystem (default /var/tmp/synflow-apptainer-sid)
#   MIRROR       Debian mirror for debootstrap (default http://deb.debian.org/debian)
#   DEMO=0       only build and test the .sif (default 1: also the demo runs and comparison)
#   DEMO_ARGS    extra synflow arguments of every demo run (default "--level-iters 4 4 2")
#   RUN_UID      unprivileged uid:gid for the demo runs (default 4242:4242 as root, else yours)
#   NPROCS       --nprocs of the demo runs (default 2)
#   REUSE_SIF=1  keep an existing $SIF (skip the save and the build)
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
image="${IMAGE:-localhost/synflow:0.1.0}"
out_dir="${OUT_DIR:-/var/tmp/synflow-sif}"
sif="${SIF:-$out_dir/synflow.sif}"
def="${DEF:-$repo/docker/synflow.def}"
sid_root="${SID_ROOT:-/var/tmp/synflow-apptainer-sid}"
mirror="${MIRROR:-http://deb.debian.org/debian}"
nprocs="${NPROCS:-2}"
read -r -a demo_args <<<"${DEMO_ARGS:---level-iters 4 4 2}"
if [[ -n "${RUN_UID:-}" ]]; then run_uid="$RUN_UID"
elif [[ $(id -u) -eq 0 ]]; then run_uid="4242:4242"
else run_uid="$(id -u):$(id -g)"; fi

log() { printf '\n== %s\n' "$*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

if [[ -z "${ENGINE:-}" ]]; then
    if command -v docker >/dev/null && docker info >/dev/null 2>&1; then ENGINE=docker
    elif command -v podman >/dev/null; then ENGINE=podman
    else ENGINE=""; fi
fi
mode="${APPTAINER:-$(command -v apptainer >/dev/null && echo native || echo sid)}"
case "$mode" in native | sid) ;; *) fail "APPTAINER must be native or sid, not $mode" ;; esac
case "$out_dir" in "$repo" | "$repo"/*) fail "OUT_DIR $out_dir is inside the repository" ;; esac
mkdir -p "$out_dir"
out_dir="$(cd "$out_dir" && pwd)"
case "$sif" in /*) ;; *) sif="$PWD/$sif" ;; esac
[[ "$(dirname "$sif")" == "$out_dir" ]] ||
    fail "SIF must be in OUT_DIR ($out_dir): it is the folder the sid sandbox sees"

# ------------------------------------------------------------------------------------------
# Apptainer itself: native, or from a Debian sid root filesystem.
setup_sid() {
    [[ $(id -u) -eq 0 ]] || fail "no apptainer on PATH; the sid route needs root (debootstrap, pivot_root)"
    command -v debootstrap >/dev/null || fail "apt-get install debootstrap"
    if [[ ! -x "$sid_root/usr/bin/apptainer" ]]; then
        log "Debian sid root filesystem with apptainer in $sid_root"
        [[ -e "$sid_root/usr" ]] || debootstrap --variant=minbase sid "$sid_root" "$mirror"
        cp /etc/resolv.conf "$sid_root/etc/resolv.conf"
        # sid's Release file can be past its Valid-Until date on a snapshot mirror.
        chroot "$sid_root" apt-get -o Acquire::Check-Valid-Until=false update
        DEBIAN_FRONTEND=noninteractive chroot "$sid_root" apt-get install -y apptainer
        chroot "$sid_root" apt-get clean
    fi
    # A passwd/group entry for the unprivileged uid (Apptainer looks the user up).
    local uid="${run_uid%%:*}" gid="${run_uid##*:}"
    grep -q "^[^:]*:[^:]*:$gid:" "$sid_root/etc/group" ||
        echo "synflow$gid:x:$gid:" >>"$sid_root/etc/group"
    grep -q "^[^:]*:[^:]*:$uid:" "$sid_root/etc/passwd" ||
        echo "synflow$uid:x:$uid:$gid::/tmp:/bin/sh" >>"$sid_root/etc/passwd"
}

# in_sid CMD...: run CMD in the sid root, in a private mount namespace, with $out_dir
# bound at the same path.  pivot_root (not chroot): Apptainer refuses a chroot.
in_sid() {
    unshare --mount --propagation private --fork -- /bin/sh -c '
        set -e
        root=$1; bind=$2; shift 2
        mount --bind "$root" "$root"
        mount -t proc proc "$root/proc"
        mount --rbind /sys "$root/sys"
        mount --rbind /dev "$root/dev"
        mkdir -p "$root$bind" "$root/.oldroot"
        mount --bind "$bind" "$root$bind"
        cd "$root"
        pivot_root . .oldroot
        cd /
        umount -l /.oldroot
        exec env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM="${TERM:-dumb}" "$@"
    ' sh "$sid_root" "$out_dir" "$@"
}

# Apptainer run as root asks for every capability; in a container sandbox without
# CAP_SYS_RESOURCE in the bounding set (bit 24 of CapBnd) that fails with "Requesting
# capability set ... while permitted capability set is ...", unless it drops it itself.
root_caps=()
capbnd="$(awk '/^CapBnd:/ { print $2 }' /proc/self/status)"
if [[ $(id -u) -eq 0 ]] && (( (0x$capbnd >> 24 & 1) == 0 )); then
    root_caps=(--drop-caps CAP_SYS_RESOURCE)
    echo "no CAP_SYS_RESOURCE here (CapBnd $capbnd): apptainer runs as root get ${root_caps[*]}"
fi

# ap [--uid] SUBCOMMAND ARGS...: apptainer SUBCOMMAND ARGS, as root or (--uid) as $run_uid.
ap() {
    local as=() caps=("${root_caps[@]}") sub
    if [[ "${1:-}" == --uid ]]; then
        shift
        as=(setpriv --reuid "${run_uid%%:*}" --regid "${run_uid##*:}" --clear-groups
            env HOME=/tmp)
        caps=()
    fi
    sub=$1
    shift
    case "$sub" in inspect | version) caps=() ;; esac
    if [[ $mode == native ]]; then
        if [[ ${#as[@]} -gt 0 && $(id -u) -ne 0 ]]; then as=(); fi   # already unprivileged
        "${as[@]}" apptainer "$sub" "${caps[@]}" "$@"
    else
        in_sid "${as[@]}" apptainer "$sub" "${caps[@]}" "$@"
    fi
}

[[ $mode == sid ]] && setup_sid
log "apptainer ($mode): $(ap version)"

# ------------------------------------------------------------------------------------------
# 1. archive of the image (Bootstrap: docker-archive) and the .sif
archive="$out_dir/synflow-docker.tar"
export APPTAINER_CACHEDIR="$out_dir/cache" APPTAINER_TMPDIR="$out_dir/tmp"
if [[ "${REUSE_SIF:-0}" == 1 && -s "$sif" ]]; then
    log "REUSE_SIF=1: not rebuilding $sif"
    build_s="reused"
else
    [[ -n "$ENGINE" ]] || fail "no docker/podman to save $image from"
    log "$ENGINE save $image -> $archive"
    rm -f "$archive"
    if [[ $ENGINE == podman ]]; then podman save --format docker-archive -o "$archive" "$image"
    else docker save -o "$archive" "$image"; fi
    echo "archive: $(( $(stat -c %s "$archive") / 1000000 )) MB"
    cp "$def" "$out_dir/synflow.def"

    log "apptainer build $sif"
    mkdir -p "$APPTAINER_CACHEDIR" "$APPTAINER_TMPDIR"
    t0="$(now)"
    # --notest: %test runs separately below (`apptainer build` has no --drop-caps, and without
    # CAP_SYS_RESOURCE the built-in test fails as root).
    if [[ $mode == sid ]]; then
        in_sid env APPTAINER_CACHEDIR="$APPTAINER_CACHEDIR" APPTAINER_TMPDIR="$APPTAINER_TMPDIR" \
            apptainer build --force --notest --build-arg "ARCHIVE=$archive" "$sif" "$out_dir/synflow.def"
    else
        apptainer build --force --notest --build-arg "ARCHIVE=$archive" "$sif" "$out_dir/synflow.def"
    fi
    build_s="$(elapsed "$t0" "$(now)")s"
fi
sif_mb=$(( $(stat -c %s "$sif") / 1000000 ))
echo "build: $build_s   sif: $sif ($sif_mb MB)"

log "apptainer test"
ap test "$sif"
ap inspect --labels "$sif" | grep -E 'version|created|revision' || true
ap run --cleanenv "$sif" --version

if [[ "${DEMO:-1}" != 1 ]]; then
    echo "PASS (build + test; DEMO=0)"
    exit 0
fi

# ------------------------------------------------------------------------------------------
# 2. the demo dataset (generated by the image itself) and the same run three times:
#    $ENGINE as $run_uid, apptainer as root (if root), apptainer as $run_uid.
demo="$out_dir/demo"
rm -rf "$demo"
mkdir -p "$demo/bids"
log "demo dataset"
ap exec --cleanenv -B "$demo/bids:/gen" "$sif" python -c \
    'import sys; from synflow.data.demo import make_demo_dataset; make_demo_dataset(sys.argv[1])' /gen
chmod -R a+rX "$demo"

declare -A secs
run_demo() {   # run_demo NAME CMD...  (outputs in $demo/NAME/{out,work})
    local name=$1 rc t0
    shift
    mkdir -p "$demo/$name/out" "$demo/$name/work"
    [[ $name == *root* ]] || chown -R "$run_uid" "$demo/$name" 2>/dev/null ||
        chmod -R a+rwX "$demo/$name"
    echo "$name: $*"
    t0="$(now)"
    set +e
    "$@" >"$demo/$name.log" 2>&1
    rc=$?
    set -e
    secs[$name]="$(elapsed "$t0" "$(now)")"
    echo "$name: exit $rc in ${secs[$name]} s"
    [[ $rc -eq 0 ]] || { tail -n 30 "$demo/$name.log"; fail "$name demo run exited with $rc"; }
}
args=(/data /out participant -w /work --nprocs "$nprocs" "${demo_args[@]}")
log "demo runs: synflow ${args[*]}"
runs=()
if [[ -n "$ENGINE" ]]; then
    run_demo engine "$ENGINE" run --rm -u "$run_uid" -v "$demo/bids:/data:ro" \
        -v "$demo/engine/out:/out" -v "$demo/engine/work:/work" "$image" "${args[@]}"
    runs+=(engine)
fi
binds() { echo "-B $demo/bids:/data:ro -B $demo/$1/out:/out -B $demo/$1/work:/work"; }
if [[ $(id -u) -eq 0 ]]; then
    # shellcheck disable=SC2046
    run_demo apptainer-root ap run --cleanenv $(binds apptainer-root) "$sif" "${args[@]}"
    runs+=(apptainer-root)
fi
# shellcheck disable=SC2046
run_demo apptainer-uid ap --uid run --cleanenv $(binds apptainer-uid) "$sif" "${args[@]}"
runs+=(apptainer-uid)

# ------------------------------------------------------------------------------------------
# 3. identical outputs: a sha256 manifest of every output file per run; the first run is
#    the reference.  Images, transforms, tables, dataset_description.json: raw bytes.  What
#    legitimately differs between runs is normalised first: the JSON sidecars' "*_seconds"
#    timings (QC.syn_seconds) are dropped; the SVG figures' <dc:date> is dropped and matplotlib's random
#    element ids (clip paths, images, markers) are renumbered in order of appearance.  Left
#    out: logs/ (named after the run's time and a UUID) and the HTML reports (run times, dates).
manifest='
import hashlib, json, os, re, sys
root = sys.argv[1]
ids = re.compile(rb"\b(?:p|m|image)[0-9a-f]{10}\b")
for dirpath, dirs, files in os.walk(root):
    dirs.sort()
    for name in sorted(files):
        path = os.path.join(dirpath, name)
        rel = os.path.relpath(path, root)
        if rel.startswith("logs" + os.sep) or name.endswith(".html"):
            continue
        data, how = open(path, "rb").read(), "raw"
        if name.endswith(".json") and name != "dataset_description.json":
            def drop(v):
                if isinstance(v, dict):
                    return {k: drop(x) for k, x in v.items() if not k.endswith("_seconds")}
                return [drop(x) for x in v] if isinstance(v, list) else v
            data, how = json.dumps(drop(json.loads(data)), sort_keys=True).encode(), "json-no-timings"
        elif name.endswith(".svg"):
            data = re.sub(rb"<dc:date>[^<]*</dc:date>", b"", data)
            seen = {}
            data = ids.sub(lambda m: seen.setdefault(m.group(0), b"id%d" % len(seen)), data)
            how = "svg-normalised"
        print(hashlib.sha256(data).hexdigest(), how, rel)
'
log "outputs: sha256 of every output file (logs/ and *.html left out; see the script)"
for r in "${runs[@]}"; do
    python3 -c "$manifest" "$demo/$r/out" >"$demo/$r.sha256"
done
ref="${runs[0]}"
status=0
for r in "${runs[@]:1}"; do
    if diff -q "$demo/$ref.sha256" "$demo/$r.sha256" >/dev/null; then
        echo "$r: all $(wc -l <"$demo/$r.sha256") files identical to $ref" \
             "($(grep -c ' raw ' "$demo/$r.sha256") byte for byte, the others after normalising)"
    else
        echo "$r: differs from $ref:"
        diff "$demo/$ref.sha256" "$demo/$r.sha256" | sed 's/^/    /' | head -n 40
        status=1
    fi
done
owners=$(find "$demo/apptainer-uid/out" -type f -printf '%u:%g\n' | sort -u | tr '\n' ' ')
echo "apptainer-uid outputs owned by: $owners"

log "summary"
timing=""
for r in "${runs[@]}"; do timing+=" $r=${secs[$r]}s"; done
echo "apptainer=$mode build=${build_s} sif=${sif_mb}MB files=$(wc -l <"$demo/$ref.sha256")" \
     "demo:$timing"
[[ $status -eq 0 ]] || fail "outputs differ between the runs"
echo "PASS"
