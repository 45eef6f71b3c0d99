"""Hostile requests against the real app: injection and path tricks in every resident/device/user/call
parameter (404/422, never 500, never another resident's data), oversize bodies, brute force, forged
tokens on the live feed, CORS closed by default, security headers on the public pages."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.auth import hash_password
from api.tokens import issue
from carewatch.settings import Settings
from tests.support import add_resident

from .conftest import SECRET_KEY, connect

TRICKS = [
    "1 OR 1=1",
    "1' OR '1'='1",
    "1; DROP TABLE residents; --",
    "..%2F..%2Fetc%2Fpasswd",
    "%2e%2e",
    "%00",
    "\u0661\u0662",  # Arabic-Indic digits
    "\uff11",  # fullwidth 1
    "1e309",
    "99999999999999999999999999",
    "-1",
    "0",
    "${7*7}",
    "%F0%9F%92%A5",
    "a" * 5000,
]
ROUTES = [
    "/api/v1/residents/{x}",
    "/api/v1/residents/{x}/status",
    "/api/v1/residents/{x}/events",
    "/api/v1/residents/{x}/alerts",
    "/api/v1/residents/{x}/presence",
    "/api/v1/residents/{x}/location",
    "/api/v1/residents/{x}/activity",
    "/api/v1/devices/{x}",
    "/api/v1/users/{x}",
    "/api/v1/calls/{x}",
]


@pytest.fixture(scope="module")
def world(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    settings = Settings(
        database_url=database_url,
        secret_key=SECRET_KEY,
        data_dir=tmp_path_factory.mktemp("hostile"),
        login_attempts_per_minute=3,
    )
    with connect(database_url) as conn:
        secret_name = "Zhang Secretname " + str(time.time_ns())
        mine, theirs = add_resident(conn, "Mine Hostile"), add_resident(conn, secret_name)
        ids = {}
        for role in ("admin", "family"):
            row = conn.execute(
                "INSERT INTO users (username, password_hash, role) VALUES (%s, %s, %s) RETURNING id",
                (f"h-{role}-{time.time_ns()}", hash_password("h-password-1"), role),
            ).fetchone()
            assert row is not None
            ids[role] = int(row["id"])
        conn.execute("INSERT INTO family_links (user_id, resident_id) VALUES (%s, %s)", (ids["family"], mine))
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield {
            "client": client,
            "mine": mine,
            "theirs": theirs,
            "secret_name": secret_name,
            "admin": {"Authorization": f"Bearer {issue(SECRET_KEY, ids['admin'], 0, 'access', 900)}"},
            "family": {"Authorization": f"Bearer {issue(SECRET_KEY, ids['family'], 0, 'access', 900)}"},
            "family_id": ids["family"],
        }


@pytest.mark.parametrize("route", ROUTES)
def test_injection_and_path_tricks_are_refused_cleanly(world: dict[str, Any], route: str) -> None:
    client: TestClient = world["client"]
    for role in ("admin", "family"):
        for trick in [*TRICKS, f"{world['theirs']} OR 1=1", f"{world['theirs']}' --"]:
            r = client.get(route.replace("{x}", trick), headers=world[role])
            assert r.status_code in (400, 403, 404, 405, 422), (role, trick, r.status_code, r.text[:200])
            assert world["secret_name"] not in r.text
    # "mine/../theirs" is normalised by the client to "/theirs": the family user must still not get in.
    r = client.get(route.replace("{x}", f"{world['mine']}/../{world['theirs']}"), headers=world["family"])
    assert r.status_code in (403, 404), r.status_code
    assert world["secret_name"] not in r.text


def test_family_never_reaches_another_resident_by_any_spelling(world: dict[str, Any]) -> None:
    client: TestClient = world["client"]
    theirs = world["theirs"]
    for spelling in (str(theirs), f"0{theirs}", f"+{theirs}", f"{theirs}.0", f" {theirs}"):
        for route in ROUTES[:7]:
            r = client.get(route.replace("{x}", spelling), headers=world["family"])
            assert r.status_code in (404, 422), (spelling, route, r.status_code)
            assert world["secret_name"] not in r.text


def test_injection_in_query_parameters(world: dict[str, Any]) -> None:
    client: TestClient = world["client"]
    base = f"/api/v1/residents/{world['mine']}/events"
    for params in (
        {"start": "' OR 1=1 --"},
        {"end": "2026-01-01'; DROP TABLE events; --"},
        {"limit": "10" * 20},
        {"limit": "-1"},
        {"cursor": "../../etc/passwd"},
        {"cursor": "eyJpZCI6IjEgT1IgMT0xIn0"},
        {"q": "\x00"},
    ):
        r = client.get(base, params=params, headers=world["admin"])
        assert r.status_code in (200, 400, 422), (params, r.status_code, r.text[:200])
    r = client.get(
        "/api/v1/residents", params={"limit": "1 OR 1=1", "q": "' OR 1=1"}, headers=world["family"]
    )
    assert r.status_code in (200, 422) and world["secret_name"] not in r.text


def test_oversize_body_is_413(world: dict[str, Any]) -> None:
    client: TestClient = world["client"]
    body = b'{"name": "' + b"x" * 300_000 + b'"}'
    r = client.post(
        "/api/v1/residents", content=body, headers={**world["admin"], "Content-Type": "application/json"}
    )
    assert r.status_code == 413 and r.headers["content-type"].startswith("application/problem+json")


def test_login_brute_force_is_rate_limited(world: dict[str, Any]) -> None:
    client: TestClient = world["client"]
    codes = [
        client.post(
            "/api/v1/auth/token", data={"username": "brute-victim", "password": f"guess{i}"}
        ).status_code
        for i in range(6)
    ]
    assert codes[:3] == [401, 401, 401] and codes[-1] == 429, codes


def test_live_feed_and_pages_need_a_valid_token(world: dict[str, Any]) -> None:
    client: TestClient = world["client"]
    now = int(time.time())
    forged = jwt.encode({"sub": str(world["family_id"]), "exp": now + 600}, "not-the-key", algorithm="HS256")
    expired = issue(SECRET_KEY, world["family_id"], 0, "access", 900, now=now - 3600)
    unsigned = jwt.encode({"sub": str(world["family_id"]), "exp": now + 600}, None, algorithm="none")
    for token in (forged, expired, unsigned, "garbage", ""):
        assert client.get("/api/v1/live", params={"access_token": token}).status_code == 401
        assert client.get("/api/v1/live", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    for page in ("/console/", "/family/"):
        r = client.get(page)
        assert r.status_code == 200, page  # public static files ...
    for data in (
        "/api/v1/residents",
        "/api/v1/calls",
        "/api/v1/auth/me",
        f"/api/v1/residents/{world['mine']}/status",
    ):
        assert client.get(data).status_code == 401, data  # ... but every data request needs a token


def test_cors_closed_and_security_headers_on_pages(world: dict[str, Any]) -> None:
    client: TestClient = world["client"]
    evil = {"Origin": "https://evil.example"}
    assert (
        "access-control-allow-origin"
        not in client.get("/api/v1/residents", headers={**evil, **world["admin"]}).headers
    )
    pre = client.options(
        "/api/v1/residents",
        headers={
            **evil,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert "access-control-allow-origin" not in pre.headers
    for page in ("/console/", "/family/"):
        h = client.get(page).headers
        assert "default-src" in h["content-security-policy"], page
        assert h["x-frame-options"] == "DENY"
        assert h["x-content-type-options"] == "nosniff"
        assert h["referrer-policy"]
