"""API fixtures: a real app on the session database (TestClient), users of every role, residents."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg.rows import dict_row

from api.app import create_app
from api.auth import hash_password
from api.tokens import issue
from carewatch.settings import Settings

SECRET = "test-secret-key-" + "x" * 32
PASSWORD = "correct horse battery"
_PASSWORD_HASH = hash_password(PASSWORD)  # Argon2 is slow on purpose: hash once for all test users


def make_settings(database_url: str, data_dir: Path, **over: Any) -> Settings:
    base: dict[str, Any] = {
        "database_url": database_url,
        "secret_key": SECRET,
        "data_dir": data_dir,
        "login_attempts_per_minute": 10_000,
    }
    base.update(over)
    return Settings(**base)


@dataclass
class User:
    id: int
    username: str
    role: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture(scope="module")
def api_settings(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return make_settings(database_url, tmp_path_factory.mktemp("api"))


@pytest.fixture(scope="module")
def client(api_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(api_settings)) as c:
        yield c


@pytest.fixture(scope="module")
def conn(database_url: str) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as c:
        yield c


def new_resident(conn: psycopg.Connection[dict[str, Any]], **cols: Any) -> int:
    data = {"name": "Resident " + secrets.token_hex(3), "timezone": "Asia/Shanghai", **cols}
    keys = ", ".join(data)
    marks = ", ".join(f"%({k})s" for k in data)
    row = conn.execute(f"INSERT INTO residents ({keys}) VALUES ({marks}) RETURNING id", data).fetchone()
    assert row is not None
    return int(row["id"])


def new_user(
    conn: psycopg.Connection[dict[str, Any]],
    role: str,
    resident_ids: tuple[int, ...] = (),
    *,
    key: str = SECRET,
) -> User:
    name = f"{role}-{secrets.token_hex(4)}"
    row = conn.execute(
        "INSERT INTO users (username, password_hash, role) VALUES (%s, %s, %s) RETURNING id",
        (name, _PASSWORD_HASH, role),
    ).fetchone()
    assert row is not None
    for rid in resident_ids:
        conn.execute("INSERT INTO family_links (user_id, resident_id) VALUES (%s, %s)", (row["id"], rid))
    return User(int(row["id"]), name, role, issue(key, int(row["id"]), 0, "access", 900))


@pytest.fixture(scope="module")
def resident(conn: psycopg.Connection[dict[str, Any]]) -> int:
    return new_resident(conn, home_lat=22.28, home_lon=114.17, geofence_m=200)


@pytest.fixture(scope="module")
def other_resident(conn: psycopg.Connection[dict[str, Any]]) -> int:
    return new_resident(conn)


@pytest.fixture(scope="module")
def users(conn: psycopg.Connection[dict[str, Any]], resident: int) -> dict[str, User]:
    """One user per role; the family user is linked to `resident` only."""
    return {
        role: new_user(conn, role, (resident,) if role == "family" else ())
        for role in ("admin", "supervisor", "operator", "family")
    }


@pytest.fixture
def make_user(conn: psycopg.Connection[dict[str, Any]]) -> Callable[..., User]:
    return lambda role, resident_ids=(): new_user(conn, role, tuple(resident_ids))
