#!/usr/bin/env bash
# The control panel tests: Debian Chromium for Playwright, Xvfb + the xcb libraries Qt6 needs for the pywebview
# window, and the Python side (playwright, pywebview[qt]) in .venv with torch pinned in the same pip call.
# Idempotent; bookworm and trixie (chromium pulls in its own libasound/libnss). Never runs `playwright install`:
# the tests drive /usr/bin/chromium.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../lib/apt.sh"
cd "$(dirname "$0")/../.."

pkgs=(chromium xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0 libxcb-xinerama0
      libxcb-xkb1 libxkbcommon-x11-0 libxcb-cursor0 libxcb-shape0 libxcb-randr0 libnss3 libxcomposite1 libxdamage1
      libxrandr2 libxtst6 libegl1 libgl1 libgbm1 libxkbfile1 libx11-xcb1 libxcb-xfixes0 libxcb-dri3-0 libxcb-shm0
      libxcb-sync1 libxcb-util1 libfontconfig1 libdbus-1-3 fonts-dejavu-core)
apt_install_missing "[30_panel]" "${pkgs[@]}"
[ -x /usr/bin/chromium ] || { echo "[30_panel] /usr/bin/chromium missing after install" >&2; exit 1; }

if ! .venv/bin/python -c "import playwright.sync_api, webview, PyQt6.QtWebEngineWidgets" 2>/dev/null; then
    echo "[30_panel] installing playwright and pywebview[qt] into .venv"
    retry .venv/bin/pip install -q -c .ci/constraints.txt torch==2.13.0 playwright 'pywebview[qt]'
fi
.venv/bin/python -c "from importlib.metadata import version as v; print('[30_panel] playwright', v('playwright'), 'pywebview', v('pywebview'))"
/usr/bin/chromium --version 2>/dev/null | sed 's/^/[30_panel] /'
