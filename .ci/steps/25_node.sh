#!/usr/bin/env bash
# Node.js for tests/other_language: a client written from docs/protocol.md alone (idempotent).
# Installs nothing when node and npm are already there; `npm ci` is skipped when node_modules matches the lock file.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../lib/apt.sh"
cd "$(dirname "$0")/../.."
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    apt_install_missing "[25_node]" nodejs npm
fi
echo "[25_node] node $(node --version), npm $(npm --version)"
CLIENT=tests/other_language/node_client
if [ "$CLIENT/package-lock.json" -nt "$CLIENT/node_modules/.package-lock.json" ] \
        || [ ! -f "$CLIENT/node_modules/.package-lock.json" ]; then
    RETRY_CLEANUP="rm -rf $CLIENT/node_modules" retry npm ci --prefix "$CLIENT" --no-audit --no-fund
else
    echo "[25_node] $CLIENT/node_modules is up to date"
fi
