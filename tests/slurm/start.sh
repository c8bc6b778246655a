#!/usr/bin/env bash
# Start a single-node SLURM cluster whose every file lives in $1 (a scratch folder): munged on its own socket,
# slurmctld -i (clean state) and slurmd, one node on 127.0.0.1 with this machine's CPUs and memory and two fake GPUs.
# Needs root and the Debian packages slurmctld slurmd slurm-client munge (scripts/setup-slurm.sh).
# Prints `export SLURM_CONF=...` on success; clients need that variable. Stop with tests/slurm/stop.sh $1.
set -euo pipefail
D=$(realpath -m "${1:?usage: start.sh SCRATCH_DIR}")
HERE=$(cd "$(dirname "$0")" && pwd)
[ "$(id -u)" = 0 ] || { echo "start.sh: must run as root (slurmd runs jobs as any user)" >&2; exit 2; }
for bin in munged slurmctld slurmd sinfo; do
  command -v $bin >/dev/null || { echo "start.sh: $bin not found; run scripts/setup-slurm.sh" >&2; exit 2; }
done

mkdir -p "$D"/{state,spool,log,fakegpu,munge}
chmod 755 "$D"
for i in 0 1; do [ -c "$D/fakegpu/nvidia$i" ] || mknod "$D/fakegpu/nvidia$i" c 195 $i; done

runuser -u munge -- test -x "$D" || { echo "start.sh: user munge cannot enter $D (a parent folder is private)" >&2; exit 2; }
# munged refuses group/world-writable folders and a key it does not own: give it a private copy and folder
install -o munge -g munge -m 700 -d "$D/munge"
install -o munge -g munge -m 400 /etc/munge/munge.key "$D/munge/munge.key"
runuser -u munge -- munged --force --socket="$D/munge/munge.socket" --key-file="$D/munge/munge.key" \
  --pid-file="$D/munge/munged.pid" --log-file="$D/munge/munged.log" --seed-file="$D/munge/munged.seed"
chmod 755 "$D/munge"   # clients (any user) must reach the socket

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
CTLD_PORT=$(free_port); SLURMD_PORT=$(free_port)
while [ "$SLURMD_PORT" = "$CTLD_PORT" ]; do SLURMD_PORT=$(free_port); done
CPUS=$(nproc)
MEM_MB=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)   # slurmd drains a node that claims more
sed -e "s|@D@|$D|g" -e "s|@HOST@|$(hostname)|g" -e "s|@CPUS@|$CPUS|g" -e "s|@MEM_MB@|$MEM_MB|g" \
    -e "s|@CTLD_PORT@|$CTLD_PORT|g" -e "s|@SLURMD_PORT@|$SLURMD_PORT|g" "$HERE/slurm.conf.in" > "$D/slurm.conf"
sed -e "s|@D@|$D|g" "$HERE/gres.conf.in" > "$D/gres.conf"
export SLURM_CONF="$D/slurm.conf"

# some tools strip SLURM_CONF before calling srun; never replace a real installation's config
if [ ! -e /etc/slurm/slurm.conf ] || [ -L /etc/slurm/slurm.conf ]; then
  mkdir -p /etc/slurm && ln -sfn "$D/slurm.conf" /etc/slurm/slurm.conf
fi

slurmctld -i
slurmd
for _ in $(seq 100); do   # ~20 s at most; usually idle within a second
  if sinfo -h -o '%T' 2>/dev/null | grep -qx idle; then echo "export SLURM_CONF=$SLURM_CONF"; exit 0; fi
  sleep 0.2
done
echo "start.sh: the node did not become idle; logs in $D/log" >&2
sinfo -N -l >&2 || true
tail -n 20 "$D/log/slurmctld.log" "$D/log/slurmd.log" >&2 || true
exit 1
