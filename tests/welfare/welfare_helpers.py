"""Welfare test helpers: a fixed clock, staff actors and provider organisations."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from hotline.service import Actor

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


def at(seconds: float = 0, *, days: float = 0) -> datetime:
    return T0 + timedelta(seconds=seconds, days=days)


def staff(conn: psycopg.Connection[Any], name: str, role: str = "operator") -> Actor:
    row = conn.execute(
        "INSERT INTO users (username, password_hash, role) VALUES (%s, 'x', %s) RETURNING id", (name, role)
    ).fetchone()
    assert row is not None
    return Actor(int(row["id"]), name, role)


def provider(conn: psycopg.Connection[Any], name: str) -> int:
    row = conn.execute("INSERT INTO provider_orgs (name) VALUES (%s) RETURNING id", (name,)).fetchone()
    assert row is not None
    return int(row["id"])
