"""Sign-in, token lifetime and revocation, forged tokens, rate limiting, error shape and HTTP hardening."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jwt
import psycopg
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.tokens import issue, signing_key
from carewatch.settings import Settings

from .conftest import PASSWORD, SECRET, User, make_settings, new_user


def login(client: TestClient, username: str, password: str = PASSWORD) -> Any:
    return client.post("/api/v1/auth/token", data={"username": username, "password": password})


def test_login_refresh_and_me(client: TestClient, conn: psycopg.Connection[dict[str, Any]]) -> None:
    user = new_user(conn, "operator")
    resp = login(client, user.username)
    assert resp.status_code == 200, resp.text
    pair = resp.json()
    assert pair["token_type"] == "bearer" and pair["role"] == "operator" and pair["expires_in"] == 900
    me = client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {pair['access_token']}"})
    assert me.json() == {"id": user.id, "username": user.username, "role": "operator", "resident_ids": None}
    # the refresh token is not an access token, and vice versa
    assert (
        client.get(
            "/api/v1/auth/me", headers={"Authorization": f"Bearer {pair['refresh_token']}"}
        ).status_code
        == 401
    )
    assert (
        client.post("/api/v1/auth/refresh", json={"refresh_token": pair["access_token"]}).status_code == 401
    )
    new = client.post("/api/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert new.status_code == 200
    assert (
        client.get(
            "/api/v1/auth/me", headers={"Authorization": f"Bearer {new.json()['access_token']}"}
        ).status_code
        == 200
    )


def test_bad_password_and_unknown_user_look_the_same(client: TestClient, users: dict[str, User]) -> None:
    wrong = login(client, users["admin"].username, "not the password")
    unknown = login(client, "nobody-at-all", "whatever-password")
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json()["detail"] == unknown.json()["detail"]
    assert wrong.headers["content-type"].startswith("application/problem+json")


def test_expired_wrong_key_and_forged_tokens(client: TestClient, users: dict[str, User]) -> None:
    uid = users["admin"].id
    expired = issue(SECRET, uid, 0, "access", 60, now=time.time() - 3600)
    other_key = issue("some-other-key-" + "y" * 32, uid, 0, "access", 900)
    claims = {
        "sub": str(uid),
        "ver": 0,
        "typ": "access",
        "iat": int(time.time()),
        "exp": int(time.time()) + 900,
        "iss": "carewatch",
    }
    unsigned = jwt.encode(claims, key=None, algorithm="none")
    hs512 = jwt.encode(claims, SECRET, algorithm="HS512")
    tampered = users["family"].token.rsplit(".", 1)[0] + "." + users["admin"].token.rsplit(".", 1)[1]
    for token, why in [
        (expired, "expired"),
        (other_key, "invalid"),
        (unsigned, "invalid"),
        (hs512, "invalid"),
        (tampered, "invalid"),
        ("garbage", "invalid"),
    ]:
        resp = client.get("/api/v1/users", headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code == 401, (why, resp.text)
        assert why in resp.json()["detail"]


def test_disable_and_password_reset_revoke_tokens_at_once(
    client: TestClient, users: dict[str, User], conn: psycopg.Connection[dict[str, Any]]
) -> None:
    admin = users["admin"].headers
    victim = new_user(conn, "operator")
    pair = login(client, victim.username).json()
    assert client.get("/api/v1/auth/me", headers=victim.headers).status_code == 200
    assert client.post(f"/api/v1/users/{victim.id}/disable", headers=admin).json()["disabled"] is True
    for token in (victim.token, pair["access_token"]):
        resp = client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code == 401
    assert (
        client.post("/api/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]}).status_code == 401
    )
    assert login(client, victim.username).status_code == 401
    client.post(f"/api/v1/users/{victim.id}/enable", headers=admin)
    pair = login(client, victim.username).json()
    reset = client.post(
        f"/api/v1/users/{victim.id}/password", json={"password": "a brand new one"}, headers=admin
    )
    assert reset.status_code == 200
    assert (
        client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {pair['access_token']}"}).status_code
        == 401
    )
    assert login(client, victim.username).status_code == 401
    assert login(client, victim.username, "a brand new one").status_code == 200


def test_admin_cannot_disable_self(client: TestClient, users: dict[str, User]) -> None:
    resp = client.post(f"/api/v1/users/{users['admin'].id}/disable", headers=users["admin"].headers)
    assert resp.status_code == 409


def test_rate_limit_per_username_and_per_ip(
    database_url: str, tmp_path: Path, conn: psycopg.Connection[dict[str, Any]]
) -> None:
    user = new_user(conn, "operator")
    with TestClient(create_app(make_settings(database_url, tmp_path, login_attempts_per_minute=3))) as c:
        for _ in range(3):
            assert login(c, user.username, "wrong password").status_code == 401
        limited = login(c, user.username)  # even the right password is refused now
        assert limited.status_code == 429
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        assert limited.json()["status"] == 429
    with TestClient(create_app(make_settings(database_url, tmp_path, login_attempts_per_minute=3))) as c:
        codes = [login(c, f"spray-{i}", "x").status_code for i in range(5)]
        assert codes == [401, 401, 401, 429, 429]  # one client address trying many usernames


def test_generated_key_is_kept_private(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, database_url="postgresql://unused")
    key = signing_key(settings)
    assert len(key) >= 40 and signing_key(settings) == key
    assert (tmp_path / "secret_key").stat().st_mode & 0o777 == 0o600


def test_problem_bodies_and_hardening(client: TestClient, users: dict[str, User]) -> None:
    admin = users["admin"].headers
    bad = client.post(
        "/api/v1/residents", json={"name": "", "home_lat": 200, "timezone": "Mars/Base"}, headers=admin
    )
    assert bad.status_code == 422
    body = bad.json()
    assert bad.headers["content-type"].startswith("application/problem+json")
    assert {e["field"] for e in body["errors"]} == {"name", "home_lat", "timezone"}
    assert "name" in body["detail"] and body["type"].startswith("https://")
    missing = client.get("/api/v1/nothing-here")
    assert missing.status_code == 404 and missing.json()["title"] == "Not found"
    big = client.post(
        "/api/v1/residents",
        content=b"{" + b" " * 70_000 + b"}",
        headers={**admin, "Content-Type": "application/json"},
    )
    assert big.status_code == 413 and big.json()["status"] == 413
    for resp in (bad, missing, big, client.get("/healthz")):
        assert resp.headers["x-content-type-options"] == "nosniff"
        assert resp.headers["x-frame-options"] == "DENY"
        assert "default-src 'self'" in resp.headers["content-security-policy"]
        assert "http" not in resp.headers["content-security-policy"]
        assert resp.headers["referrer-policy"] == "no-referrer"
    cors = client.options(
        "/api/v1/residents",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
    )
    assert "access-control-allow-origin" not in cors.headers


def test_cors_allows_configured_origin(database_url: str, tmp_path: Path) -> None:
    settings = make_settings(database_url, tmp_path, cors_origins=["https://console.example"])
    with TestClient(create_app(settings)) as c:
        ok = c.get("/healthz", headers={"Origin": "https://console.example"})
        assert ok.headers["access-control-allow-origin"] == "https://console.example"
        other = c.get("/healthz", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


@pytest.mark.parametrize("reset", [False, True])
def test_create_admin(conn: psycopg.Connection[dict[str, Any]], client: TestClient, reset: bool) -> None:
    from api.users import UserExists, create_admin

    name = f"root-{time.time_ns()}"
    uid = create_admin(conn, name, "first password")
    assert login(client, name, "first password").json()["role"] == "admin"
    if reset:
        assert create_admin(conn, name, "second password", reset=True) == uid
        assert login(client, name, "second password").status_code == 200
        assert login(client, name, "first password").status_code == 401
    else:
        with pytest.raises(UserExists):
            create_admin(conn, name, "again password")


def test_static_pages_are_served_with_headers(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import api.app

    static = tmp_path / "static"
    (static / "console").mkdir(parents=True)
    (static / "console" / "index.html").write_text("<h1>console</h1>")
    monkeypatch.setattr(api.app, "STATIC_DIR", static)
    with TestClient(create_app(make_settings(database_url, tmp_path))) as c:
        page = c.get("/console/")
        assert page.status_code == 200 and "console" in page.text
        assert page.headers["x-frame-options"] == "DENY"
        missing = c.get("/api/v1/nope")
        assert missing.status_code == 404
        assert missing.headers["content-type"].startswith("application/problem+json")
        assert c.get("/healthz").json() == {"status": "ok"}
