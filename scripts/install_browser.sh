#!/usr/bin/env bash
# Installs the headless browser the end-to-end web tests drive (tests/test_serve_browser.py):
# Debian's `chromium` package, at /usr/bin/chromium. Idempotent; does nothing (exit 0) when Chromium is
# already there, and only warns when it cannot install (not root, or no apt-get): the browser tests then
# skip with a message. No browser is downloaded by a test tool (`playwright install` does not work here).
set -euo pipefail
for exe in "${TRIFLOW3D_CHROMIUM:-}" chromium chromium-browser google-chrome; do
  if [ -n "$exe" ] && command -v "$exe" >/dev/null 2>&1; then
    echo "chromium: $(command -v "$exe")"
    exit 0
  fi
done
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null
  echo "chromium: $(command -v chromium)"
else
  echo "warning: chromium not found and cannot be installed here (needs root + apt-get);" \
    "the browser tests will skip" >&2
fi
