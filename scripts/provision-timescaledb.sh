#!/usr/bin/env bash
# Provision a real TimescaleDB (PostgreSQL 17 + timescaledb 2.x, Apache edition) from Debian trixie in a
# chroot, because bookworm ships no TimescaleDB and Docker does not run on CI machines.
# Idempotent: re-running reuses the chroot and only (re)starts the server.
#   usage: scripts/provision-timescaledb.sh [start|stop|status]   (env: TSDB_ROOT, TSDB_PORT)
set -euo pipefail
ROOT=${TSDB_ROOT:-/var/lib/carewatch-tsdb/root}
PORT=${TSDB_PORT:-5433}
DATA=/var/lib/postgresql/tsdata
cmd=${1:-start}

in_root() { chroot "$ROOT" /usr/sbin/runuser -u postgres -- "$@"; }
pgbin() { ls -d "$ROOT"/usr/lib/postgresql/*/bin | sed "s#^$ROOT##" | sort -V | tail -1; }

mount_proc() {
  mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
  mountpoint -q "$ROOT/dev" || mount --bind /dev "$ROOT/dev"
}

if [ "$cmd" = stop ]; then
  [ -d "$ROOT$DATA" ] && in_root "$(pgbin)/pg_ctl" -D "$DATA" -m fast stop || true
  exit 0
fi
if [ "$cmd" = status ]; then
  in_root "$(pgbin)/pg_ctl" -D "$DATA" status; exit $?
fi

if [ "$(id -u)" != 0 ]; then echo "provision-timescaledb: must run as root" >&2; exit 1; fi

if [ ! -x "$ROOT/usr/bin/pg_config" ] || ! ls "$ROOT"/usr/lib/postgresql/*/lib/timescaledb*.so >/dev/null 2>&1; then
  command -v debootstrap >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap; }
  mirror=$( (grep -hoE '^(URIs:|deb) +https?://[^ ]+' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null || true) \
    | grep -v security | head -1 | awk '{print $2}')
  mirror=${mirror:-http://deb.debian.org/debian}
  echo "provision-timescaledb: debootstrap trixie into $ROOT from $mirror (about a minute)"
  mkdir -p "$ROOT"
  debootstrap --variant=minbase --include=postgresql-17,postgresql-17-timescaledb trixie "$ROOT" "$mirror" >/tmp/tsdb-debootstrap.log 2>&1 \
    || { tail -30 /tmp/tsdb-debootstrap.log >&2; exit 1; }
fi
mount_proc
BIN=$(pgbin)
if [ ! -f "$ROOT$DATA/PG_VERSION" ]; then
  mkdir -p "$ROOT$DATA" && chroot "$ROOT" chown -R postgres:postgres /var/lib/postgresql
  in_root "$BIN/initdb" -D "$DATA" -A trust -U postgres >/dev/null
  cat >>"$ROOT$DATA/postgresql.conf" <<CONF
shared_preload_libraries = 'timescaledb'
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '/tmp'
max_connections = 200
timescaledb.telemetry_level = off
fsync = on
CONF
fi
mkdir -p "$ROOT/tmp" && chmod 1777 "$ROOT/tmp"
if ! in_root "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
  in_root "$BIN/pg_ctl" -D "$DATA" -l "$DATA/server.log" -w -t 60 start >/dev/null
fi
for _ in $(seq 1 30); do
  pg_isready -h 127.0.0.1 -p "$PORT" -q && break; sleep 1
done
# The same checkpoint settings as compose.yaml (docs/operations.md, "Database settings and why"); applied
# on every run, so a cluster made by an earlier version of this script gets them too.
psql -h 127.0.0.1 -p "$PORT" -U postgres -qAt -c "ALTER SYSTEM SET max_wal_size = '4GB'" \
  -c "ALTER SYSTEM SET checkpoint_timeout = '15min'" -c "SELECT pg_reload_conf()" >/dev/null
psql -h 127.0.0.1 -p "$PORT" -U postgres -qAtc "select 'timescaledb ' || default_version from pg_available_extensions where name='timescaledb'"
echo "provision-timescaledb: ready at postgresql://postgres@127.0.0.1:$PORT/postgres"
