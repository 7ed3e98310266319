#!/usr/bin/env bash
# The server's page is tested in a real headless browser: Debian's chromium, driven by Playwright (a
# Python test dependency; it uses this browser, nothing is downloaded by Playwright). `make test` runs
# this first: it installs the browser when it is missing and this machine can (root with apt-get; the
# package lists are refreshed when the first try cannot find it). Without it the page test skips, or
# fails under CI=true, where it must run; so this script never stops `make test` itself.
set -uo pipefail
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's chromium for the page test (once)..."
    log=$(mktemp)
    install() { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >>"$log" 2>&1; }
    if install || { apt-get update -qq >>"$log" 2>&1 && install; }; then
        rm -f "$log"
        exit 0
    fi
    echo "apt-get could not install chromium; its last lines:"
    tail -5 "$log"
    rm -f "$log"
fi
echo "note: no chromium here; tests/test_serve_page.py skips (fails under CI=true): install Debian's chromium"
