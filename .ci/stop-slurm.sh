#!/usr/bin/env bash
# Stop the SLURM daemons that .ci/start-slurm.sh started, by the pids in their pid files.
#   .ci/stop-slurm.sh [DIR] [--keep-munge]
set -uo pipefail

DIR="${1:-${MLAAS_SLURM_DIR:-/tmp/mlaas-slurm}}"
KEEP_MUNGE="${2:-}"

stop() {  # stop PIDFILE NAME: SIGTERM, then SIGKILL after 5 s
    local pidfile="$1" name="$2" pid
    [ -s "$pidfile" ] || return 0
    pid="$(cat "$pidfile")"
    # only a process of that name: a stale pid file must not kill someone else's process
    if [ -n "$pid" ] && [ "$(cat /proc/"$pid"/comm 2> /dev/null)" = "$name" ]; then
        kill "$pid" 2> /dev/null
        for _ in $(seq 50); do kill -0 "$pid" 2> /dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2> /dev/null && kill -9 "$pid" 2> /dev/null
    fi
    rm -f "$pidfile"
}

stop "$DIR/slurmd.pid" slurmd
stop "$DIR/slurmctld.pid" slurmctld
[ "$KEEP_MUNGE" = "--keep-munge" ] || stop "$DIR/munge/munged.pid" munged
exit 0
