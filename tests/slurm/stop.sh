#!/usr/bin/env bash
# Stop the cluster that tests/slurm/start.sh started in $1: slurmd, slurmctld, munged (by their pid files).
set -uo pipefail
D=$(realpath -m "${1:?usage: stop.sh SCRATCH_DIR}")
pids=()
for f in "$D/slurmd.pid" "$D/slurmctld.pid" "$D/munge/munged.pid"; do
  [ -s "$f" ] && pid=$(cat "$f") && kill "$pid" 2>/dev/null && pids+=("$pid")
done
for _ in $(seq 50); do   # up to 5 s for a clean exit, then SIGKILL
  alive=0; for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && [ "$(ps -o stat= -p "$p")" != Z ] && alive=1; done
  [ $alive = 0 ] && break; sleep 0.1
done
for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done
if [ -L /etc/slurm/slurm.conf ] && [ "$(readlink /etc/slurm/slurm.conf)" = "$D/slurm.conf" ]; then
  rm -f /etc/slurm/slurm.conf
fi
exit 0
