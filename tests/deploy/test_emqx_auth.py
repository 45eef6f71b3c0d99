"""The `cluster` profile's EMQX authenticates devices straight from CareWatch's registry.

EMQX is not available here, so this runs the two things it depends on against the real database: the
role script (deploy/postgres/emqx-role.sql, via psql as compose runs it) and the authenticator query
from deploy/emqx/base.hocon, executed as that role; then it checks the password the way EMQX's
emqx_passwd does for pbkdf2: lowercase hex of PBKDF2(mac_fun, password, salt, iterations) compared
with the query's password_hash.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from carewatch.broker import hash_password

ROOT = Path(__file__).resolve().parents[2]
HOCON = (ROOT / "deploy" / "emqx" / "base.hocon").read_text()
ROLE_SQL = ROOT / "deploy" / "postgres" / "emqx-role.sql"

pytestmark = pytest.mark.skipif(shutil.which("psql") is None, reason="needs psql")


def _pg_authenticator() -> dict[str, Any]:
    block = HOCON[HOCON.index("backend = postgresql") :]
    query = re.search(r'query = "(.*)"', block)
    algo = re.search(
        r"password_hash_algorithm \{ name = (\w+), mac_fun = (\w+), iterations = (\d+) \}", block
    )
    assert query and algo
    return {
        "query": query.group(1),
        "name": algo.group(1),
        "mac_fun": algo.group(2),
        "iterations": int(algo.group(3)),
    }


AUTHN = _pg_authenticator()


def _with(url: str, **overrides: str) -> str:
    return psycopg.conninfo.make_conninfo(url, **overrides)


def _run_role_script(url: str, role: str, password: str) -> None:
    result = subprocess.run(
        [
            "psql",
            url,
            "-q",
            "-v",
            f"emqx_role={role}",
            "-v",
            f"emqx_password={password}",
            "-f",
            str(ROLE_SQL),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert password not in result.stdout + result.stderr


@pytest.fixture
def emqx_role(database_url: str) -> Iterator[tuple[str, str]]:
    role, password = f"cw_emqx_{secrets.token_hex(4)}", secrets.token_urlsafe(16)
    try:
        _run_role_script(database_url, role, password)
        _run_role_script(database_url, role, password)  # idempotent (re-run = rotation)
        yield role, password
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
                conn.execute(f'DROP OWNED BY "{role}"')  # also revokes CONNECT on the database
                conn.execute(f'DROP ROLE "{role}"')


def _authenticate(conn: psycopg.Connection[Any], username: str, clientid: str, password: str) -> bool:
    """EMQX's password_based/postgresql check: no row -> ignore (refused at the end of the chain)."""
    sql = AUTHN["query"].replace("${username}", "%(username)s").replace("${clientid}", "%(clientid)s")
    row = conn.execute(sql, {"username": username, "clientid": clientid}).fetchone()
    if row is None:
        return False
    password_hash, salt = row[0], bytes(row[1])
    derived = hashlib.pbkdf2_hmac(AUTHN["mac_fun"], password.encode(), salt, AUTHN["iterations"])
    return secrets.compare_digest(derived.hex(), password_hash)


def test_emqx_query_verifies_registry_secrets(
    database_url: str, emqx_role: tuple[str, str], uid: str
) -> None:
    assert AUTHN["name"] == "pbkdf2" and AUTHN["mac_fun"] == "sha512"
    device, secret = f"wb-{uid}", secrets.token_urlsafe(32)
    disabled, disabled_secret = f"wb-off-{uid}", secrets.token_urlsafe(32)
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute(
            "INSERT INTO devices (id, kind, secret_hash) VALUES (%s, 'wristband', %s)",
            (device, hash_password(secret)),
        )
        admin.execute(
            "INSERT INTO devices (id, kind, secret_hash, enabled) VALUES (%s, 'wristband', %s, false)",
            (disabled, hash_password(disabled_secret)),
        )
    role, password = emqx_role
    with psycopg.connect(_with(database_url, user=role, password=password), autocommit=True) as conn:
        assert _authenticate(conn, device, device, secret)
        assert not _authenticate(conn, device, device, secret + "x")
        assert not _authenticate(conn, device, f"other-{uid}", secret), "client id must equal the device id"
        assert not _authenticate(conn, disabled, disabled, disabled_secret), "disabled devices are refused"
        assert not _authenticate(conn, f"nobody-{uid}", f"nobody-{uid}", secret)
        assert not _authenticate(conn, "' OR true --", "' OR true --", secret)

        # the role sees only what the authenticator needs
        for forbidden in (
            "SELECT kind FROM devices LIMIT 1",
            "SELECT 1 FROM telemetry LIMIT 1",
            "SELECT 1 FROM residents LIMIT 1",
            "SELECT 1 FROM users LIMIT 1",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(forbidden)


def test_rotated_secret_replaces_the_old_one(database_url: str, emqx_role: tuple[str, str], uid: str) -> None:
    device, old, new = f"wb-rot-{uid}", secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute(
            "INSERT INTO devices (id, kind, secret_hash) VALUES (%s, 'wristband', %s)",
            (device, hash_password(old)),
        )
        admin.execute("UPDATE devices SET secret_hash = %s WHERE id = %s", (hash_password(new), device))
    role, password = emqx_role
    with psycopg.connect(_with(database_url, user=role, password=password), autocommit=True) as conn:
        assert _authenticate(conn, device, device, new)
        assert not _authenticate(conn, device, device, old)
