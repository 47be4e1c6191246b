#!/usr/bin/env bash
# A real one-node Slurm cluster on this machine, for the Slurm executor's tests and by hand:
#
#   scripts/slurm-cluster.sh start DIR [PORT]   # slurm.conf, state and logs in DIR; prints SLURM_CONF=...
#   export SLURM_CONF=DIR/slurm.conf; sinfo; sbatch --wrap 'hostname'; squeue
#   scripts/slurm-cluster.sh stop DIR           # stops this cluster's daemons (by their pid files)
#
# Debian's slurmctld, slurmd and munge (Slurm 22.05), run as root, without systemd, cgroups or
# accounting (so no sacct, as on most small clusters). munged is started once and shared. Each
# cluster takes two ports (PORT, PORT+1; default 16817), so clusters in parallel tests must differ.
set -euo pipefail

cmd=${1:?usage: slurm-cluster.sh start|stop DIR [PORT]}
dir=$(realpath -m "${2:?usage: slurm-cluster.sh start|stop DIR [PORT]}")
port=${3:-16817}

stop() {
  for daemon in slurmd slurmctld; do
    local pidfile="$dir/run/$daemon.pid"
    if [ -s "$pidfile" ]; then
      kill "$(cat "$pidfile")" 2>/dev/null || true
    fi
  done
  for daemon in slurmd slurmctld; do
    local pidfile="$dir/run/$daemon.pid"
    for _ in $(seq 50); do
      [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null || break
      sleep 0.1
    done
    rm -f "$pidfile"
  done
}

case "$cmd" in
  stop)
    stop
    exit 0
    ;;
  start) ;;
  *)
    echo "slurm-cluster.sh: unknown command $cmd (start or stop)" >&2
    exit 2
    ;;
esac

for tool in slurmctld slurmd munged sbatch; do
  if ! command -v "$tool" >/dev/null; then
    echo "slurm-cluster.sh: $tool is missing; install it: apt-get install slurmctld slurmd slurm-client munge" >&2
    exit 1
  fi
done
if [ "$(id -u)" != 0 ]; then
  echo "slurm-cluster.sh: the test cluster runs its daemons as root; run it as root" >&2
  exit 1
fi

# munge: one daemon for every cluster on the host. Tests start clusters in parallel, so the check
# and the start are done under one lock: two munged racing for the socket would fail one cluster.
start_munge() {
  munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
  if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create >/dev/null 2>&1 || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
  fi
  # A munged started by someone else (the package's init script, just after apt-get install) may
  # hold the socket and not answer yet: then this one fails to bind, and the wait below is for that one.
  runuser -u munge -- /usr/sbin/munged --force || true
  for _ in $(seq 100); do
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "slurm-cluster.sh: munged started but does not answer; see /var/log/munge/munged.log" >&2
  return 1
}
mkdir -p /run/lock
exec 9>/run/lock/trainerd-slurm-cluster-munge.lock
flock 9
start_munge
flock -u 9
exec 9>&-

mkdir -p "$dir/state" "$dir/spool" "$dir/run"
stop
host=$(hostname)
cpus=$(nproc)
cat >"$dir/slurm.conf" <<EOF
ClusterName=trainerd-test
SlurmctldHost=localhost
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
MinJobAge=300
KillWait=5
OverTimeLimit=0
SchedulerParameters=sched_interval=1
NodeName=localhost NodeHostname=$host CPUs=$cpus RealMemory=4000 State=UNKNOWN
PartitionName=debug Default=YES Nodes=localhost MaxTime=INFINITE OverSubscribe=FORCE:8 State=UP
EOF
export SLURM_CONF=$dir/slurm.conf
slurmctld -f "$SLURM_CONF" -i
slurmd -N localhost -f "$SLURM_CONF"
for _ in $(seq 100); do
  if sinfo -h -o '%t' 2>/dev/null | grep -qx 'idle\|mix\|alloc'; then
    echo "SLURM_CONF=$SLURM_CONF"
    exit 0
  fi
  sleep 0.1
done
echo "slurm-cluster.sh: the cluster in $dir did not come up; see $dir/slurmctld.log and $dir/slurmd.log" >&2
tail -5 "$dir/slurmctld.log" "$dir/slurmd.log" >&2 || true
stop
exit 1
