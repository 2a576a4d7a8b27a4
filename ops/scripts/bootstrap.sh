#!/usr/bin/env bash
# Create .venv and install blendq into it (skipped when pyproject.toml has not changed).
# Usage: ops/scripts/bootstrap.sh [extras]   e.g. "dev" or "dev,demo"
set -euo pipefail
cd "$(dirname "$0")/../.."
extras="${1:-}"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null || python=python3

if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
stamp=".venv/.blendq-installed"
want="$(sha256sum pyproject.toml | cut -c1-16)-${extras}"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  # torch is pinned to the CPU wheel on local disk; install it first so no other package
  # can pull a CUDA build.
  .venv/bin/python -m pip install --quiet "torch==2.13.0"
  spec="."
  [ -n "$extras" ] && spec=".[${extras}]"
  .venv/bin/python -m pip install --quiet -e "$spec"
  echo "$want" > "$stamp"
fi
