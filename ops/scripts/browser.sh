#!/usr/bin/env bash
# Install Debian's Chromium for the auditor-page tests: Playwright drives this system
# browser, so no `playwright install` download is needed.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
  exit 0
fi
echo "installing chromium" >&2
export DEBIAN_FRONTEND=noninteractive
# A fresh machine may have no package lists yet, or lists older than the mirror's Chromium.
apt-get update -qq
# A font too: on a bare machine every glyph in the screenshots would be a box.
apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
