#!/usr/bin/env bash
# Stop the cluster that tests/slurm/start.sh started in $1: cancel its jobs, then stop slurmd, slurmctld and munged
# (by their pid files) and any job step daemon of this cluster that outlived slurmd.
set -uo pipefail
D=$(realpath -m "${1:?usage: stop.sh SCRATCH_DIR}")
export SLURM_CONF="$D/slurm.conf"

if [ -s "$D/slurmctld.pid" ] && kill -0 "$(cat "$D/slurmctld.pid")" 2>/dev/null; then
  timeout 20 scancel --user="$(id -un)" 2>/dev/null
  for _ in $(seq 50); do   # up to 10 s for the steps to end while slurmd still runs to clean them up
    [ -z "$(timeout 10 squeue --noheader --states=running,completing,configuring 2>/dev/null)" ] && break
    sleep 0.2
  done
fi

# the step daemons of this cluster: they inherited slurmd's environment, which names this cluster's config
steps=()
for p in $(pgrep -x slurmstepd); do
  { tr '\0' '\n' < "/proc/$p/environ"; } 2>/dev/null | grep -qx "SLURM_CONF=$D/slurm.conf" && steps+=("$p")
done

pids=()
for f in "$D/slurmd.pid" "$D/slurmctld.pid" "$D/munge/munged.pid"; do
  [ -s "$f" ] && pid=$(cat "$f") && kill "$pid" 2>/dev/null && pids+=("$pid")
done
for p in "${steps[@]}"; do kill "$p" 2>/dev/null && pids+=("$p"); done
for _ in $(seq 50); do   # up to 5 s for a clean exit, then SIGKILL
  alive=0; for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && [ "$(ps -o stat= -p "$p")" != Z ] && alive=1; done
  [ $alive = 0 ] && break; sleep 0.1
done
for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done
if [ -L /etc/slurm/slurm.conf ] && [ "$(readlink /etc/slurm/slurm.conf)" = "$D/slurm.conf" ]; then
  rm -f /etc/slurm/slurm.conf
fi
exit 0
