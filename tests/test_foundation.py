"""Migrations on the real server: idempotent, concurrent-safe, and on the storage path detected."""

from __future__ import annotations

import threading

import psycopg

from carewatch.migrate import migrate, migrations


def test_migrations_are_numbered_without_gaps() -> None:
    versions = [m.version for m in migrations()]
    assert versions == list(range(1, len(versions) + 1))


def test_migrate_is_idempotent_and_safe_concurrently(fresh_database_url: str) -> None:
    results: list[str] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(migrate(fresh_database_url))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(set(results)) == 1
    with psycopg.connect(fresh_database_url) as conn:
        count = conn.execute("SELECT count(*) FROM schema_migrations").fetchone()
        assert count is not None and count[0] == len(migrations())


def test_time_series_tables_match_storage(db: psycopg.Connection, storage: str) -> None:
    has_ext = db.execute("SELECT 1 AS x FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
    assert (storage == "timescaledb") == bool(has_ext)
    if storage == "timescaledb":
        rows = db.execute("SELECT hypertable_name FROM timescaledb_information.hypertables").fetchall()
        assert {r["hypertable_name"] for r in rows} >= {"telemetry", "events", "vitals_1m", "vitals_1h"}


def test_audit_log_is_append_only(db: psycopg.Connection, uid: str) -> None:
    rid = db.execute("INSERT INTO residents (name) VALUES (%s) RETURNING id", (f"r{uid}",)).fetchone()["id"]
    call = db.execute(
        "INSERT INTO calls (resident_id, priority, title, reason, event_at, target_at)"
        " VALUES (%s, 1, 'Fall', 'fall', now(), now()) RETURNING id",
        (rid,),
    ).fetchone()["id"]
    log_id = db.execute(
        "INSERT INTO call_log (call_id, actor, action) VALUES (%s, 'system', 'created') RETURNING id", (call,)
    ).fetchone()["id"]
    for statement in ("UPDATE call_log SET note = 'x' WHERE id = %s", "DELETE FROM call_log WHERE id = %s"):
        try:
            db.execute(statement, (log_id,))
        except psycopg.errors.RaiseException as exc:
            assert "append-only" in str(exc)
        else:
            raise AssertionError("audit row changed")
