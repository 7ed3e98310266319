#!/usr/bin/env bash
# The server's page is tested in a real headless browser: Debian's chromium, driven by Playwright (a
# Python test dependency; it uses this browser, nothing is downloaded by Playwright). Installs the
# browser when it is missing and this machine can (root with apt-get); otherwise the page test skips.
set -uo pipefail
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's chromium for the page test (once)..."
    if DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 || \
       { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1; }; then
        exit 0
    fi
fi
echo "note: no chromium here; tests/test_serve_page.py will be skipped (install Debian's chromium to run it)"
