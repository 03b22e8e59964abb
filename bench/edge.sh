#!/usr/bin/env bash
# Edge benchmark: edge vs nginx reverse proxy, pass-through and streaming, with wrk.
# Installs nginx-light and wrk from Debian when missing. Loopback only.
#   bench/edge.sh [--seconds 10] [--workers N] [--only stream|h2|h3]
set -euo pipefail
cd "$(dirname "$0")/.."
./dev debs nginx-light wrk nghttp2-client
# Debian starts nginx as a service on install; the bench runs its own copies.
if command -v systemctl >/dev/null 2>&1; then systemctl stop nginx 2>/dev/null || true; fi
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
exec "$PY" bench/edgebench.py "$@"
