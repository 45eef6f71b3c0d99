"""Property-based run of the OpenAPI schema (schemathesis): no server errors, no response that contradicts
the schema. Bounded (few examples per operation) and on a database of its own, since it writes at random."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.app import create_app
from api.auth import hash_password
from api.tokens import issue
from carewatch.db import make_pool
from carewatch.migrate import migrate

from .conftest import SECRET, make_settings

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
_state: dict[str, Any] = {}
STATUS: dict[int, int] = {}


@pytest.fixture(scope="module")
def api_schema(server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    name = f"cw_test_{os.getpid()}_st_{secrets.token_hex(3)}"
    with psycopg.connect(server_url, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    url = psycopg.conninfo.make_conninfo(server_url, dbname=name)
    migrate(url)
    with psycopg.connect(url, autocommit=True) as c:
        row = c.execute(
            "INSERT INTO users (username, password_hash, role) VALUES ('st-admin', %s, 'admin') RETURNING id",
            (hash_password("st-admin-password"),),
        ).fetchone()
        assert row is not None
        c.execute("INSERT INTO residents (name) VALUES ('Fuzz Resident')")
    app = create_app(make_settings(url, Path(tmp_path_factory.mktemp("st"))))
    pool = make_pool(url, name="carewatch-st")
    app.state.pool = pool  # no lifespan under schemathesis' ASGI client: provide the pool directly
    _state.update(url=url, admin=int(row[0]))
    try:
        yield schemathesis.openapi.from_asgi("/openapi.json", app)
    finally:
        pool.close()
        with psycopg.connect(server_url, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _headers() -> dict[str, str]:
    """A token for the fuzzing admin's current token_version (fuzzed password resets revoke old ones)."""
    with psycopg.connect(_state["url"]) as c:
        row = c.execute("SELECT token_version FROM users WHERE id = %s", (_state["admin"],)).fetchone()
    assert row is not None
    return {"Authorization": f"Bearer {issue(SECRET, _state['admin'], int(row[0]), 'access', 3600)}"}


def test_api_conforms(api_schema: Any) -> None:
    """Every operation (but the endless SSE stream), a few generated requests each, as an admin."""
    failures: list[str] = []
    operations = [r.ok() for r in api_schema.get_all_operations()]
    assert len(operations) > 30
    for op in operations:
        if op.path == "/api/v1/live":
            continue

        @given(case=op.as_strategy())
        @settings(
            max_examples=6,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case: Any) -> None:
            case.headers = {**(case.headers or {}), **_headers()}  # a generated one would win otherwise
            response = case.call_and_validate(checks=CHECKS)
            STATUS[response.status_code] = STATUS.get(response.status_code, 0) + 1

        try:
            run()
        except BaseException as exc:  # collect all operations' failures, then report them together
            failures.append(f"{op.method.upper()} {op.path}: {str(exc)[:1500]}")
    assert not failures, "\n\n".join(failures)
    assert sum(n for code, n in STATUS.items() if code < 300) > 25, STATUS  # really signed in and exercised
