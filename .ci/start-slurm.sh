#!/usr/bin/env bash
# Start a one-node SLURM cluster (munged + slurmctld + slurmd) for the SLURM tests.
#
#   .ci/start-slurm.sh [DIR]      # DIR defaults to $MLAAS_SLURM_DIR or /tmp/mlaas-slurm
#   .ci/stop-slurm.sh  [DIR]      # stops them again, by the pids in DIR
#
# Needs root and Debian's slurm-wlm + munge (apt-get install -y slurm-wlm munge). Everything
# it writes (slurm.conf, state, spool, pid files, logs) lives in DIR. On success it writes
# DIR/env (export MLAAS_SLURM_CONF=DIR/slurm.conf) and prints the same line; on failure it
# writes the reason to DIR/error, which the SLURM test reports, and exits non-zero.
set -uo pipefail

DIR="${1:-${MLAAS_SLURM_DIR:-/tmp/mlaas-slurm}}"
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
rm -f "$DIR/error" "$DIR/env"

fail() {
    echo "$*" > "$DIR/error"
    echo "start-slurm: $*" >&2
    exit 1
}

for tool in munged munge unmunge slurmctld slurmd sinfo; do
    command -v "$tool" > /dev/null || fail "'$tool' is not installed: apt-get install -y slurm-wlm munge"
done
[ "$(id -u)" = 0 ] || fail "SLURM daemons need root here (SlurmUser=root); run as root"

# munge: a key, then munged as the munge user (its pid and log in DIR/munge)
if ! (munge -n | unmunge) > /dev/null 2>&1; then
    if [ ! -s /etc/munge/munge.key ]; then
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
        chmod 400 /etc/munge/munge.key
    fi
    mkdir -p "$DIR/munge" /var/log/munge /run/munge /var/lib/munge
    chown -R munge: /etc/munge /var/log/munge /run/munge /var/lib/munge "$DIR/munge"
    chmod 700 "$DIR/munge"
    su munge -s /bin/sh -c "munged --pid-file=$DIR/munge/munged.pid --log-file=$DIR/munge/munged.log" \
        || fail "munged did not start (see $DIR/munge/munged.log)"
    for _ in $(seq 50); do (munge -n | unmunge) > /dev/null 2>&1 && break; sleep 0.1; done
    (munge -n | unmunge) > /dev/null 2>&1 || fail "munge does not answer (see $DIR/munge/munged.log)"
fi

HOST="$(hostname -s)"
# not nproc alone: it honours OMP_NUM_THREADS, which a Dask Nanny started earlier in the
# calling process (pytest) sets to 1 -- a one-CPU node then runs one job at a time
CPUS="$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)"
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))
mkdir -p "$DIR/state" "$DIR/spool"
cat > "$DIR/slurm.conf" <<EOF
# One-node SLURM for mlaas_dask's tests (written by .ci/start-slurm.sh)
ClusterName=mlaas
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
# finished jobs: kept by slurmctld for 'scontrol show job' and written to a completion log
# that 'sacct --completion' reads (no slurmdbd here)
MinJobAge=600
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/jobcomp.log
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF="$DIR/slurm.conf"

# a previous run's daemons (same DIR) are stopped first
"$(dirname "$0")/stop-slurm.sh" "$DIR" --keep-munge > /dev/null 2>&1 || true
slurmctld -f "$SLURM_CONF" || fail "slurmctld did not start (see $DIR/slurmctld.log)"
slurmd -f "$SLURM_CONF" || fail "slurmd did not start (see $DIR/slurmd.log)"

state=""
for _ in $(seq 60); do
    state="$(sinfo -h -o %T 2> /dev/null | head -1)"
    case "$state" in idle*|mixed*|allocated*) break ;; esac
    sleep 0.5
done
case "$state" in
    idle*|mixed*|allocated*) ;;
    *) fail "the SLURM node is '${state:-not reported}' after 30 s, not idle (see $DIR/slurmctld.log, $DIR/slurmd.log)" ;;
esac

echo "export MLAAS_SLURM_CONF=$SLURM_CONF" > "$DIR/env"
echo "export MLAAS_SLURM_CONF=$SLURM_CONF"
