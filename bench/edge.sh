#!/usr/bin/env bash
# Edge benchmark: edge vs nginx reverse proxy, pass-through and streaming, with wrk.
# Installs nginx-light and wrk from Debian when missing. Loopback only.
#   bench/edge.sh [--seconds 10] [--workers N]
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
for p in nginx-light wrk; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# Debian starts nginx as a service on install; the bench runs its own copies.
if command -v systemctl >/dev/null 2>&1; then systemctl stop nginx 2>/dev/null || true; fi
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
exec "$PY" bench/edgebench.py "$@"
