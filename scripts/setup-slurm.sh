#!/usr/bin/env bash
# Install SLURM (controller, node daemon, client commands) and munge from Debian, for the single-node test cluster of
# tests/slurm (tests/test_slurm.py). Idempotent: installs only what is missing; starts no service (the tests do).
set -euo pipefail
if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
PKGS="slurmctld slurmd slurm-client munge"
missing=$(for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
if [ -n "$missing" ]; then
  echo "[setup-slurm] apt-get install" $missing
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi
echo "[setup-slurm] ready: slurm $(dpkg-query -W -f '${Version}' slurmctld), munge $(dpkg-query -W -f '${Version}' munge)"
