#!/usr/bin/env bash
# Installs tierkit into ./.venv. torch comes first as the local CPU wheel; everything else is
# installed against constraints.txt, which pins torch to that build so pip never pulls CUDA packages.
# Usage: bash scripts/install.sh [--dev] [--peers]   (--peers: NNCF and OpenVINO, for benchmarks/compare.py)
set -euo pipefail
cd "$(dirname "$0")/.."

python_bin=${PYTHON:-}
if [ -z "$python_bin" ]; then
  for candidate in python3.11 python3 python; do
    if command -v "$candidate" >/dev/null && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      python_bin=$candidate
      break
    fi
  done
fi
if [ -z "$python_bin" ]; then
  echo "error: tierkit needs Python 3.11 (none found on PATH); set PYTHON=/path/to/python3.11" >&2
  exit 2
fi

[ -x .venv/bin/python ] || "$python_bin" -m venv .venv
extras=()
for arg in "$@"; do
  case "$arg" in
    --dev) extras+=(dev) ;;
    --peers) extras+=(peers) ;;
    *) echo "error: unknown option $arg (use --dev and/or --peers)" >&2; exit 2 ;;
  esac
done
extras=$(IFS=,; echo "${extras[*]}")
[ -n "$extras" ] && extras="[$extras]"
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".${extras}"
echo "tierkit installed in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
