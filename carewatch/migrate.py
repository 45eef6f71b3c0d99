"""Versioned SQL migrations: applied in order, once, under an advisory lock so many processes may race."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources

import psycopg

from carewatch.db import Storage, connect, storage

log = logging.getLogger(__name__)

LOCK_KEY = 0x43415245  # "CARE"
_HYPERTABLE = re.compile(r"^\{\{hypertable:(\w+):(\w+):([^}]+)\}\}$", re.MULTILINE)


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    found = []
    for entry in resources.files("carewatch.migrations").iterdir():
        match = re.match(r"^(\d{4})_(\w+)\.sql$", entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text("utf-8")))
    return sorted(found, key=lambda m: m.version)


def render(sql: str, store: Storage) -> str:
    """Expand {{hypertable:table:column:interval}}: a hypertable on TimescaleDB, nothing otherwise."""

    def expand(match: re.Match[str]) -> str:
        table, column, interval = match.groups()
        if store != "timescaledb":
            return f"-- {table}: plain table (TimescaleDB not available)"
        return (
            f"SELECT create_hypertable('{table}', '{column}', "
            f"chunk_time_interval => INTERVAL '{interval}', if_not_exists => TRUE);"
        )

    return _HYPERTABLE.sub(expand, sql)


def _enable_timescaledb(conn: psycopg.Connection, allow: bool) -> Storage:
    if allow:
        available = conn.execute(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"
        ).fetchone()
        if available:
            try:
                with conn.transaction():
                    conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
            except psycopg.Error as exc:  # e.g. not in shared_preload_libraries
                log.warning("timescaledb is installed but could not be enabled: %s", exc)
    return storage(conn)


def migrate(url: str, *, allow_timescaledb: bool = True) -> Storage:
    """Bring the schema up to date; idempotent and safe to call from several processes at once."""
    with connect(url, autocommit=True, application_name="carewatch-migrate") as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version int PRIMARY KEY, name text NOT NULL,"
                " storage text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            applied = {r[0]: r[1] for r in conn.execute("SELECT version, storage FROM schema_migrations")}
            if applied:
                store: Storage = storage(conn)
            else:
                store = _enable_timescaledb(conn, allow_timescaledb)
            pending = [m for m in migrations() if m.version not in applied]
            for m in pending:
                with conn.transaction():
                    conn.execute(render(m.sql, store).encode())
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name, storage) VALUES (%s, %s, %s)",
                        (m.version, m.name, store),
                    )
                log.info("migration %04d_%s applied (%s)", m.version, m.name, store)
            if not pending:
                log.debug("schema up to date (%s)", store)
            return store
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
