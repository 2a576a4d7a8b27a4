#!/usr/bin/env bash
# The test suite: services and Chromium up, environment installed, then pytest (arguments pass through).
set -euo pipefail
cd "$(dirname "$0")/../.."
ops/scripts/services.sh
ops/scripts/browser.sh
ops/scripts/bootstrap.sh dev,demo
exec .venv/bin/python -m pytest "$@"
