#!/usr/bin/env bash
# Starts (or installs) what the tests talk to for real: PostgreSQL, and Chromium for the feed.
set -euo pipefail

if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  if command -v pg_ctlcluster >/dev/null 2>&1; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  fi
  for _ in $(seq 1 30); do
    pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null && break
    sleep 1
  done
fi
pg_isready -h 127.0.0.1 -p 5432 || { echo "PostgreSQL is not reachable on 127.0.0.1:5432" >&2; exit 1; }

if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = "0" ]; then
  apt-get update -qq >/dev/null && apt-get install -y -qq chromium >/dev/null
fi
