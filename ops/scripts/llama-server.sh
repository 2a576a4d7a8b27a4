#!/usr/bin/env bash
# Install llama-cpp-python's OpenAI-compatible server into .venv: the real server the
# openai-backend tests talk to. PyPI ships only its source; the build turns off native CPU
# tuning, since the native build crashed in its AVX-512 kernels on these machines. The
# wheel is kept in ~/.cache/blendq/wheels, so a machine builds it once (about 8 minutes).
set -euo pipefail
cd "$(dirname "$0")/../.."
version="0.3.36"
wheels="${BLENDQ_WHEEL_CACHE:-$HOME/.cache/blendq/wheels}"
mkdir -p "$wheels"
wheel=$(ls "$wheels"/llama_cpp_python-"$version"-*.whl 2>/dev/null | head -n1 || true)
if [ -z "$wheel" ]; then
  echo "building llama-cpp-python $version (once per machine)" >&2
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX512=OFF -DGGML_BLAS=OFF" \
    .venv/bin/python -m pip wheel --quiet --no-cache-dir --no-deps -w "$wheels" \
    "llama-cpp-python==$version"
  wheel=$(ls "$wheels"/llama_cpp_python-"$version"-*.whl | head -n1)
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --force-reinstall \
  --no-deps "$wheel"
# Its own dependencies and those of its [server] extra.
.venv/bin/python -m pip install --quiet --disable-pip-version-check "numpy>=1.20" \
  "typing-extensions>=4.5" "diskcache>=5.6" "jinja2>=2.11" "uvicorn>=0.22" \
  "fastapi>=0.100" "pydantic-settings>=2.0" "sse-starlette>=1.6" "starlette-context>=0.3.6" \
  "PyYAML>=5.1"
