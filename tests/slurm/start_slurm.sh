#!/usr/bin/env bash
# A one-node Slurm on loopback for the `cluster` tests: munged, slurmctld and slurmd as root, this machine's
# CPUs in one partition `debug`, select/cons_tres, proctrack/linuxproc, no cgroups, no accounting database.
# Its own slurm.conf lives in the state folder (SLURM_CONF points there), so /etc/slurm is left alone.
#
#   tests/slurm/start_slurm.sh start [STATE_DIR]   prints `export SLURM_CONF=...` on its last line
#   tests/slurm/start_slurm.sh stop  [STATE_DIR]
#
# Exit status 3 when Slurm or munge is not installed (Debian: apt-get install slurm-wlm munge).
set -euo pipefail
action=${1:?usage: start_slurm.sh start|stop [STATE_DIR]}
dir=${2:-/tmp/rlsd-slurm}
conf=$dir/slurm.conf

stop() {
  for daemon in slurmd slurmctld; do
    if [ -f "$dir/$daemon.pid" ]; then
      pid=$(cat "$dir/$daemon.pid")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      rm -f "$dir/$daemon.pid"
    fi
  done
  if [ -f "$dir/munged.pid" ]; then
    kill "$(cat "$dir/munged.pid")" 2>/dev/null || true
    rm -f "$dir/munged.pid"
  fi
}

if [ "$action" = stop ]; then
  stop
  exit 0
fi
[ "$action" = start ] || { echo "unknown action '$action'; valid: start, stop" >&2; exit 2; }

for tool in munged slurmctld slurmd scontrol sinfo; do
  command -v "$tool" >/dev/null || { echo "$tool not found: apt-get install slurm-wlm munge" >&2; exit 3; }
done
[ "$(id -u)" = 0 ] || { echo "the test cluster runs its daemons as root; this is uid $(id -u)" >&2; exit 3; }

stop  # a cluster left over from an interrupted session
mkdir -p "$dir/state" "$dir/spool" "$dir/munge"
host=$(hostname -s)
cpus=$(nproc)
mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)

# munge: a key of its own and its own socket, so a system munged (if any) is untouched
key=$dir/munge/munge.key
[ -f "$key" ] || dd if=/dev/urandom of="$key" bs=1 count=1024 status=none
chmod 400 "$key"
socket=$dir/munge/munge.socket
munged --force --key-file="$key" --socket="$socket" --pid-file="$dir/munged.pid" \
  --log-file="$dir/munged.log" --seed-file="$dir/munge/seed"

cat > "$conf" <<CONF
ClusterName=rlsdtest
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=${SLURMCTLD_PORT:-16817}
SlurmdPort=${SLURMD_PORT:-16818}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$socket
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
ReturnToService=2
JobRequeue=1
KillWait=10
MinJobAge=600
SlurmdTimeout=60
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF

export SLURM_CONF=$conf
slurmctld -f "$conf"
slurmd -f "$conf"
for _ in $(seq 100); do
  if sinfo -h -o %T 2>/dev/null | grep -qx idle; then
    echo "export SLURM_CONF=$conf"
    exit 0
  fi
  sleep 0.2
done
echo "slurm did not come up within 20 s; see $dir/slurmctld.log and $dir/slurmd.log" >&2
sinfo >&2 || true
exit 1
