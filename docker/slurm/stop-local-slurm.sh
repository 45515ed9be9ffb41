#!/usr/bin/env bash
# Stop the single-node SLURM test cluster started by start-local-slurm.sh.
# Only the daemons whose pid files are in STATE_DIR are signalled (never by name), so a
# system slurmd/munged or another test cluster keeps running.
#
# Usage: docker/slurm/stop-local-slurm.sh [STATE_DIR] [--purge]
#   --purge   also delete STATE_DIR (config, logs, spool)
set -euo pipefail

state="$(realpath -m "${1:-/tmp/synflow-slurm}")"
purge="${2:-}"

stop_pid() {    # stop_pid NAME PIDFILE: TERM, wait up to 10 s, then KILL
    local name="$1" pidfile="$2" pid
    [[ -f "$pidfile" ]] || return 0
    pid="$(cat "$pidfile")"
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        if kill -0 "$pid" 2>/dev/null; then
            echo "stop-local-slurm: $name ($pid) ignored TERM, killing" >&2
            kill -KILL "$pid" || true
        fi
    fi
    rm -f "$pidfile"
}

# Cancel what is still queued so slurmd does not leave job steps behind.
if [[ -f "$state/etc/slurm.conf" ]] && command -v scancel >/dev/null; then
    SLURM_CONF="$state/etc/slurm.conf" timeout 10 scancel --full --quiet --partition=debug \
        2>/dev/null || true
fi
stop_pid slurmd "$state/slurmd.pid"
stop_pid slurmctld "$state/slurmctld.pid"
stop_pid munged "$state/munge/munged.pid"

if [[ "$purge" == "--purge" ]]; then
    rm -rf "$state"
fi
echo "local SLURM cluster in $state stopped"
