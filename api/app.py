"""The CareWatch HTTP API: ``create_app(settings)`` builds it, ``run(settings)`` serves it with uvicorn."""

from __future__ import annotations

import importlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles
from psycopg_pool import ConnectionPool, PoolTimeout
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import access, auth, devices, history, live, residents, users
from api.auth import RateLimiter
from api.errors import PROBLEM_JSON, Problem, ProblemModel, db_unavailable, install_handlers, problem_response
from api.tokens import signing_key
from carewatch.db import make_pool
from carewatch.settings import Settings

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
MAX_BODY = 64 * 1024
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data:; object-src 'none'; "
        b"frame-ancestors 'none'; base-uri 'self'; form-action 'self'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


class Guard:
    """ASGI middleware: security headers on every response and a request body limit (413 problem)."""

    def __init__(self, app: ASGIApp, max_body: int = MAX_BODY) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    h for h in message.get("headers", []) if h[0].lower() not in dict(SECURITY_HEADERS)
                ]
                message["headers"] = headers + SECURITY_HEADERS
            await send(message)

        too_big = self._problem()
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await too_big(scope, receive, send_with_headers)
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise _BodyTooLarge
            return message

        try:
            await self.app(scope, limited_receive, send_with_headers)
        except _BodyTooLarge:
            await too_big(scope, receive, send_with_headers)

    def _problem(self) -> Any:
        return problem_response(
            Problem(413, "Payload too large", f"request bodies are limited to {self.max_body // 1024} KiB")
        )


class _BodyTooLarge(Exception):
    pass


class Health(BaseModel):
    status: str = Field(examples=["ok"])


def _include_hotline(app: FastAPI) -> None:
    try:
        views = importlib.import_module("hotline.views")
    except ImportError as exc:
        log.info("hotline views not available (%s); queue endpoints not mounted", exc)
        return
    app.include_router(views.router, prefix="/api/v1")
    try:
        welfare = importlib.import_module("welfare.views")
    except ImportError as exc:
        log.info("welfare views not available (%s); welfare endpoints not mounted", exc)
        return
    app.include_router(welfare.router, prefix="/api/v1")


def _sync_broker_files(settings: Settings, url: str) -> None:
    """At start-up, make the broker's password file and ACL match the registry (compose, demo)."""
    if not (settings.broker_passwd_file and settings.broker_acl_file):
        return
    from carewatch.registry_sync import sync_broker
    from carewatch.runtime import service_accounts

    try:
        with psycopg.connect(url, autocommit=True) as conn:
            count = sync_broker(
                conn,
                settings.broker_passwd_file,
                settings.broker_acl_file,
                service_accounts=service_accounts(settings),
                reload=None,
                pid_file=settings.broker_pid_file,
            )
        log.info("broker credentials synced for %d devices", count)
    except (psycopg.Error, OSError) as exc:
        log.warning("broker credentials not synced at start-up: %s", type(exc).__name__)


def _command_publisher(settings: Settings) -> Any:
    """Tells a wristband that help is on the way once its call is claimed (protocol cmd topic)."""
    if not settings.mqtt_url:
        return None
    from hotline.publish import CommandPublisher

    try:
        return CommandPublisher(
            settings.mqtt_url,
            settings.mqtt_client_id_prefix,
            ca_file=str(settings.mqtt_ca_file) if settings.mqtt_ca_file else None,
        ).start(wait_s=2.0)
    except Exception as exc:  # the API serves without it; claims just do not notify devices
        log.warning("device command publisher unavailable: %s", exc)
        return None


def create_app(settings: Settings, *, pool: ConnectionPool | None = None) -> FastAPI:
    """Build the app; the lifespan opens the pool (unless one is passed in) and the live feed."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        url = settings.database_url
        if url is None:
            from carewatch.embedded import embedded_postgres_url

            url = embedded_postgres_url(Path(settings.data_dir))
        own_pool = pool is None
        app.state.pool = pool or make_pool(url, name="carewatch-api")
        hub = live.LiveHub(url)
        hub.start()
        app.state.live_hub = hub
        _sync_broker_files(settings, url)
        publisher = _command_publisher(settings)
        app.state.cmd_publisher = publisher
        try:
            yield
        finally:
            if publisher is not None:
                publisher.close()
            hub.stop()
            if own_pool:
                app.state.pool.close()

    app = FastAPI(
        title="CareWatch API",
        version="1",
        description="Registry, roles, family access, resident history and the live feed of the CareWatch "
        "home-care monitoring service. Errors are RFC 9457 problem details (application/problem+json).",
        lifespan=lifespan,
        docs_url=None,  # Swagger UI loads from a CDN, which the CSP forbids; /openapi.json is the contract
        redoc_url=None,
        responses={
            401: {"model": ProblemModel, "content": {PROBLEM_JSON: {}}, "description": "not signed in"},
            403: {"model": ProblemModel, "content": {PROBLEM_JSON: {}}, "description": "role not allowed"},
            404: {
                "model": ProblemModel,
                "content": {PROBLEM_JSON: {}},
                "description": "not found (or not yours)",
            },
            422: {"model": ProblemModel, "content": {PROBLEM_JSON: {}}, "description": "invalid input"},
            503: {
                "model": ProblemModel,
                "content": {PROBLEM_JSON: {}},
                "description": "database unavailable",
            },
        },
    )
    app.state.settings = settings
    app.state.signing_key = signing_key(settings)
    app.state.login_limiter = RateLimiter(settings.login_attempts_per_minute)
    app.state.broker_reload = None
    app.state.live_keepalive_s = live.KEEPALIVE_S
    install_handlers(app)

    @app.get("/healthz", response_model=Health, tags=["health"], summary="Liveness")
    def healthz() -> Health:
        return Health(status="ok")

    @app.get("/readyz", response_model=Health, tags=["health"], summary="Readiness: the database answers")
    def readyz(request: Request) -> Health:
        try:
            with request.app.state.pool.connection(timeout=2.0) as conn:
                conn.execute("SELECT 1")
        except (PoolTimeout, psycopg.OperationalError) as exc:
            raise db_unavailable("the database is unreachable") from exc
        return Health(status="ok")

    for module in (auth, users, residents, devices, history, access, live):
        app.include_router(module.router)
    _include_hotline(app)

    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials=False,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
        )
    app.add_middleware(Guard)
    if STATIC_DIR.is_dir():
        app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="static")
    return app


def run(settings: Settings) -> None:
    """Serve the API (the CLI's ``carewatch api``)."""
    import uvicorn

    uvicorn.run(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        log_level=settings.log_level.lower(),
        access_log=False,
        timeout_graceful_shutdown=5,  # SSE streams never end on their own
    )
