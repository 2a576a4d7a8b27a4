#!/usr/bin/env bash
# The main job on the embedded default: no servers, a SQLite file, tiny models.
set -euo pipefail
cd "$(dirname "$0")/../.."
ops/scripts/bootstrap.sh
exec .venv/bin/python manage.py run ops/examples/prompts.jsonl -o "${1:-example.results.jsonl}"
