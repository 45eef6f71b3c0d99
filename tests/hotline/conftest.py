"""Hotline fixtures: residents, alerts, users and calls made through the real intake path."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from hotline.intake import CallRef, open_or_attach

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def add_user(conn: psycopg.Connection[Any], username: str, role: str) -> int:
    row = conn.execute(
        "INSERT INTO users (username, password_hash, role) VALUES (%s, 'x', %s) RETURNING id",
        (username, role),
    ).fetchone()
    assert row is not None
    return int(row["id"])


def add_alert(
    conn: psycopg.Connection[Any], resident_id: int, rule: str, priority: int, opened_at: datetime = T0
) -> int:
    row = conn.execute(
        """INSERT INTO alerts (resident_id, rule, priority, status, opened_at, last_seen_at, title)
           VALUES (%s, %s, %s, 'closed', %s, %s, %s) RETURNING id""",
        (resident_id, rule, priority, opened_at, opened_at, rule),
    ).fetchone()
    assert row is not None
    return int(row["id"])


@pytest.fixture
def make_call(db: psycopg.Connection[Any]) -> Callable[..., CallRef]:
    """Open (or attach to) a call for a resident the way the alert engine does."""

    def make(
        resident_id: int, *, priority: int = 1, rule: str = "fall", now: datetime = T0, target_s: int = 60
    ) -> CallRef:
        alert_id = add_alert(db, resident_id, rule, priority, now)
        with db.transaction():
            return open_or_attach(
                db,
                resident_id=resident_id,
                alert_id=alert_id,
                priority=priority,
                rule=rule,
                title=f"{rule} detected",
                event_at=now,
                late=False,
                now=now,
                answer_target_s=target_s,
            )

    return make
