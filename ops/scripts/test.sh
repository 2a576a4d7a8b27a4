#!/usr/bin/env bash
# The test suite: services and Chromium up, environment installed, then pytest (arguments pass through).
set -euo pipefail
cd "$(dirname "$0")/../.."
ops/scripts/services.sh
ops/scripts/browser.sh
ops/scripts/bootstrap.sh dev,demo
# BLENDQ_TEST_WORKERS=N runs test files side by side in N processes (pytest-xdist, a file
# per process, each with its own database and RabbitMQ vhost). On the 2-core machine it
# did not shorten the suite (30 minutes either way: the cores, not waiting, bound it) and
# the demo-model tests ran past their timeouts, so one process is the default.
workers="${BLENDQ_TEST_WORKERS:-0}"
if [ "$workers" = "0" ]; then
  exec .venv/bin/python -m pytest "$@"
fi
exec .venv/bin/python -m pytest -n "$workers" --dist loadfile "$@"
