#!/usr/bin/env bash
# DNS benchmark: gslb vs gdnsd's geoip plugin under dnsperf, in one run.
# Installs dnsperf and gdnsd from Debian when missing. Loopback only.
#   bench/dns.sh [--seconds 15] [--clients 32] [--workers N]
set -euo pipefail
cd "$(dirname "$0")/.."
./dev debs dnsperf gdnsd bind9-dnsutils
# Debian starts gdnsd as a service on install; the bench runs its own copy.
if command -v systemctl >/dev/null 2>&1; then systemctl stop gdnsd 2>/dev/null || true; fi
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
exec "$PY" bench/dnsbench.py "$@"
