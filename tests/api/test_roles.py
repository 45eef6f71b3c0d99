"""Every role against every endpoint, generated from the app's routes and a declared table.

A route missing from ALLOWED fails `test_every_route_is_declared`, so a new endpoint cannot be forgotten.
Routes of other packages (hotline.views) are checked against the roles their own dependency declares.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient

from api.app import create_app
from api.deps import ROLES

from .conftest import User

A, S, OP, F = "admin", "supervisor", "operator", "family"
EVERYONE = frozenset(ROLES)
PUBLIC = frozenset({"public"})

ALLOWED: dict[tuple[str, str], frozenset[str]] = {
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("POST", "/api/v1/auth/token"): PUBLIC,
    ("POST", "/api/v1/auth/refresh"): PUBLIC,
    ("GET", "/api/v1/auth/me"): EVERYONE,
    ("GET", "/api/v1/users"): frozenset({A}),
    ("POST", "/api/v1/users"): frozenset({A}),
    ("GET", "/api/v1/users/{user_id}"): frozenset({A}),
    ("POST", "/api/v1/users/{user_id}/disable"): frozenset({A}),
    ("POST", "/api/v1/users/{user_id}/enable"): frozenset({A}),
    ("POST", "/api/v1/users/{user_id}/password"): frozenset({A}),
    ("PUT", "/api/v1/users/{user_id}/residents"): frozenset({A}),
    ("GET", "/api/v1/residents"): EVERYONE,
    ("POST", "/api/v1/residents"): frozenset({A}),
    ("GET", "/api/v1/residents/{resident_id}"): EVERYONE,
    ("PATCH", "/api/v1/residents/{resident_id}"): frozenset({A}),
    ("GET", "/api/v1/residents/{resident_id}/contacts"): frozenset({A, S, OP}),
    ("PUT", "/api/v1/residents/{resident_id}/contacts"): frozenset({A}),
    ("PUT", "/api/v1/residents/{resident_id}/access"): frozenset({A}),
    ("POST", "/api/v1/residents/{resident_id}/access-reveal"): frozenset({S, OP}),
    ("GET", "/api/v1/devices"): frozenset({A, S}),
    ("POST", "/api/v1/devices"): frozenset({A}),
    ("GET", "/api/v1/devices/{device_id}"): frozenset({A, S}),
    ("PATCH", "/api/v1/devices/{device_id}"): frozenset({A}),
    ("POST", "/api/v1/devices/{device_id}/revoke"): frozenset({A}),
    ("POST", "/api/v1/devices/{device_id}/rotate-secret"): frozenset({A}),
    ("GET", "/api/v1/residents/{resident_id}/status"): EVERYONE,
    ("GET", "/api/v1/residents/{resident_id}/vitals"): EVERYONE,
    ("GET", "/api/v1/residents/{resident_id}/events"): EVERYONE,
    ("GET", "/api/v1/residents/{resident_id}/alerts"): EVERYONE,
    ("GET", "/api/v1/residents/{resident_id}/calls"): EVERYONE,
    ("GET", "/api/v1/residents/{resident_id}/presence"): EVERYONE,
    ("GET", "/api/v1/residents/{resident_id}/location"): EVERYONE,
    ("GET", "/api/v1/residents/{resident_id}/activity"): EVERYONE,
    ("GET", "/api/v1/access-log"): frozenset({A}),
    ("GET", "/api/v1/live"): EVERYONE,
    # welfare.views (declared here too: services, visits, rescue timeline, supervision)
    ("GET", "/api/v1/welfare/providers"): frozenset({A, S, OP}),
    ("POST", "/api/v1/welfare/providers"): frozenset({A, S}),
    ("GET", "/api/v1/welfare/requests"): EVERYONE,
    ("POST", "/api/v1/welfare/requests"): frozenset({A, S, OP}),
    ("GET", "/api/v1/welfare/requests/{request_id}"): frozenset({A, S, OP}),
    ("POST", "/api/v1/welfare/requests/{request_id}/assign"): frozenset({A, S, OP}),
    ("POST", "/api/v1/welfare/requests/{request_id}/cancel"): frozenset({A, S, OP}),
    ("POST", "/api/v1/welfare/orders/{order_id}/actions"): frozenset({A, S, OP}),
    ("POST", "/api/v1/welfare/orders/{order_id}/rating"): EVERYONE,
    ("GET", "/api/v1/welfare/visits"): frozenset({A, S, OP}),
    ("POST", "/api/v1/welfare/visits/schedule"): frozenset({A, S, OP}),
    ("POST", "/api/v1/welfare/visits/{visit_id}/record"): frozenset({A, S, OP}),
    ("POST", "/api/v1/welfare/alerts/{alert_id}/visit"): frozenset({A, S, OP}),
    ("GET", "/api/v1/welfare/calls/{call_id}/timeline"): EVERYONE,
    ("GET", "/api/v1/welfare/supervision"): frozenset({A, S}),
}


def _declared(route: APIRoute) -> frozenset[str] | None:
    """Roles from the route's require_roles dependency (None: the route has none, i.e. public)."""
    for dep in route.dependant.dependencies:
        roles = getattr(dep.call, "allowed_roles", None)
        if roles is not None:
            return frozenset(roles)
    return None


def _routes() -> list[tuple[str, str, APIRoute]]:
    from carewatch.settings import Settings

    app = create_app(Settings(database_url="postgresql://unused", secret_key="k" * 40))
    out = []
    for ctx in iter_route_contexts(app.routes):  # flattens included routers (FastAPI >= 0.16x)
        route = ctx.original_route
        if isinstance(route, APIRoute):
            for method in sorted(set(ctx.methods or ()) - {"HEAD", "OPTIONS"}):
                out.append((method, ctx.path, route))
    return out


ROUTES = _routes()


def test_every_route_is_declared() -> None:
    ours = {(m, p) for m, p, r in ROUTES if r.endpoint.__module__.startswith(("api.", "welfare."))}
    assert ours == set(ALLOWED), f"undeclared: {ours - set(ALLOWED)}; stale: {set(ALLOWED) - ours}"
    for method, path, route in ROUTES:
        declared = _declared(route)
        expected = ALLOWED.get((method, path))
        if expected is None:  # another package's route: it must declare roles
            assert declared is not None, f"{method} {path} declares no roles"
        elif expected == PUBLIC:
            assert declared is None, f"{method} {path} should be public"
        else:
            assert declared == expected, f"{method} {path}: declared {declared}, table {expected}"


def _expected(method: str, path: str, route: APIRoute) -> frozenset[str]:
    return ALLOWED.get((method, path)) or _declared(route) or PUBLIC


def _url(path: str, resident: int) -> str:
    return (
        path.replace("{resident_id}", str(resident))
        .replace("{user_id}", "999999999")
        .replace("{device_id}", "no-such-device")
        .replace("{call_id}", "999999999")
        .replace("{request_id}", "999999999")
        .replace("{order_id}", "999999999")
        .replace("{visit_id}", "999999999")
        .replace("{alert_id}", "999999999")
    )


def _call(client: TestClient, method: str, url: str, headers: dict[str, str]) -> Any:
    body = {"json": {}} if method in ("POST", "PUT", "PATCH") else {}
    return client.request(method, url, headers=headers, **body)


CASES = [
    (m, p, r, role)
    for m, p, r in ROUTES
    for role in ROLES
    if _expected(m, p, r) != PUBLIC and not (p == "/api/v1/live" and role in _expected(m, p, r))
]


@pytest.mark.parametrize(
    ("method", "path", "route", "role"), CASES, ids=[f"{m} {p} as {role}" for m, p, _, role in CASES]
)
def test_role_matrix(
    client: TestClient,
    users: dict[str, User],
    resident: int,
    method: str,
    path: str,
    route: APIRoute,
    role: str,
) -> None:
    allowed = role in _expected(method, path, route)
    if (method, path) == ("POST", "/api/v1/auth/token"):
        pytest.skip("public")
    resp = _call(client, method, _url(path, resident), users[role].headers)
    denied_by_role = resp.status_code == 403 and "role may not use" in resp.json().get("detail", "")
    if allowed:
        assert resp.status_code != 401 and not denied_by_role, (resp.status_code, resp.text)
        assert resp.status_code < 500, resp.text
    else:
        assert denied_by_role, (resp.status_code, resp.text)
        assert resp.headers["content-type"].startswith("application/problem+json")


NEEDS_AUTH = [(m, p, r) for m, p, r in ROUTES if _expected(m, p, r) != PUBLIC]


@pytest.mark.parametrize(("method", "path", "route"), NEEDS_AUTH, ids=[f"{m} {p}" for m, p, _ in NEEDS_AUTH])
def test_no_token_is_401(client: TestClient, resident: int, method: str, path: str, route: APIRoute) -> None:
    resp = _call(client, method, _url(path, resident), {})
    assert resp.status_code == 401, resp.text
    body = resp.json()
    assert resp.headers["content-type"].startswith("application/problem+json")
    assert body["status"] == 401 and body["title"] and body["type"]
    assert resp.headers.get("www-authenticate") == "Bearer"


RESIDENT_SCOPED = [(m, p, r) for m, p, r in ROUTES if "{resident_id}" in p and F in _expected(m, p, r)]


@pytest.mark.parametrize(
    ("method", "path", "route"), RESIDENT_SCOPED, ids=[f"{m} {p}" for m, p, _ in RESIDENT_SCOPED]
)
def test_family_sees_only_linked_residents(
    client: TestClient,
    users: dict[str, User],
    resident: int,
    other_resident: int,
    method: str,
    path: str,
    route: APIRoute,
) -> None:
    family = users[F]
    other = _call(client, method, _url(path, other_resident), family.headers)
    assert other.status_code == 404, other.text
    assert other.json()["detail"] == f"resident {other_resident} does not exist"
    missing = _call(client, method, _url(path, 2**40), family.headers)
    assert missing.status_code == 404 and missing.json()["detail"] == other.json()["detail"].replace(
        str(other_resident), str(2**40)
    )  # indistinguishable from a resident that does not exist
    own = _call(client, method, _url(path, resident), family.headers)
    assert own.status_code == 200, own.text


def test_family_lists_only_linked(
    client: TestClient, users: dict[str, User], resident: int, other_resident: int
) -> None:
    listed = client.get("/api/v1/residents", headers=users[F].headers).json()
    assert [r["id"] for r in listed] == [resident]
    assert "care_notes" not in listed[0] and "address" not in listed[0]
    staff = client.get("/api/v1/residents", headers=users[OP].headers).json()
    assert {resident, other_resident} <= {r["id"] for r in staff}
