#!/usr/bin/env bash
# The test suite: services and Chromium up, environment installed, then pytest (arguments pass through).
set -euo pipefail
cd "$(dirname "$0")/../.."
ops/scripts/services.sh
ops/scripts/browser.sh
ops/scripts/bootstrap.sh dev,demo
# Test files run side by side in BLENDQ_TEST_WORKERS processes (pytest-xdist; each file
# stays in one, so its module fixtures are shared): most of a test's time is spent waiting
# on worker processes, not on a core. Each process has its own database and RabbitMQ vhost.
# "-n 0" (or BLENDQ_TEST_WORKERS=0) runs in one process.
exec .venv/bin/python -m pytest -n "${BLENDQ_TEST_WORKERS:-3}" --dist loadfile "$@"
