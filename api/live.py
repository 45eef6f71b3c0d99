"""Live feed over Server-Sent Events.

One LISTEN connection per API process (``LiveHub``, a thread) fans ``live_events`` rows out to every
connected client in memory; clients resume with ``Last-Event-ID`` (rows with a greater id are replayed
from the table). Family users only get their residents' events, stripped to public fields.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import psycopg
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import StreamingResponse
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from api.deps import ALL_ROLES, CONN_TIMEOUT_S, Conn, Principal, principal_for_token, require_roles
from api.errors import Problem, problems

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1", tags=["live"], responses=problems(400))

CHANNEL = "carewatch_live"
KEEPALIVE_S = 15.0
REPLAY_MAX = 1000
QUEUE_MAX = 2000
# What a family member may see of a queue change: no notes, no operator names, nothing internal.
FAMILY_FIELDS = ("status", "priority", "title", "state", "reason")


def public_event(row: dict[str, Any], *, family: bool) -> dict[str, Any]:
    """The JSON sent for one live_events row (pure)."""
    payload = row.get("payload") or {}
    if family:
        payload = {
            k: v for k, v in payload.items() if k in FAMILY_FIELDS and isinstance(v, str | int | float)
        }
    at = row.get("at")
    return {
        "id": row["id"],
        "kind": row["kind"],
        "at": at.isoformat() if isinstance(at, datetime) else at,
        "call_id": row.get("call_id"),
        "resident_id": row.get("resident_id"),
        "payload": payload,
    }


def visible(row: dict[str, Any], principal: Principal) -> bool:
    if principal.resident_ids is None:
        return True
    rid = row.get("resident_id")
    return rid is not None and int(rid) in principal.resident_ids


def sse(row: dict[str, Any], principal: Principal) -> str:
    data = json.dumps(public_event(row, family=principal.role == "family"), separators=(",", ":"))
    return f"id: {row['id']}\nevent: {row['kind']}\ndata: {data}\n\n"


class LiveHub:
    """LISTEN carewatch_live on a dedicated connection; re-connects with back-off and, after a gap,
    re-reads rows it may have missed so clients never silently lose an event."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._subs: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Queue[dict[str, Any] | None]]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._recent: OrderedDict[int, None] = OrderedDict()
        self.last_id = 0
        self.connected = threading.Event()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="carewatch-live", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        with self._lock:
            subs = list(self._subs.values())
        for loop, queue in subs:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(queue.put_nowait, None)

    def subscribe(self) -> tuple[int, asyncio.Queue[dict[str, Any] | None]]:
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(QUEUE_MAX)
        with self._lock:
            self._subs[id(queue)] = (asyncio.get_running_loop(), queue)
        return id(queue), queue

    def unsubscribe(self, key: int) -> None:
        with self._lock:
            self._subs.pop(key, None)

    def _publish(self, row: dict[str, Any]) -> None:
        rid = int(row["id"])
        if rid in self._recent:
            return
        self._recent[rid] = None
        while len(self._recent) > 10_000:
            self._recent.popitem(last=False)
        self.last_id = max(self.last_id, rid)
        with self._lock:
            subs = list(self._subs.values())
        for loop, queue in subs:
            with contextlib.suppress(RuntimeError):  # loop closed: the client is gone
                loop.call_soon_threadsafe(_offer, queue, row)

    def _fetch(self, conn: psycopg.Connection[dict[str, Any]], ids: list[int]) -> None:
        """The notified rows, plus any later ones whose notification was coalesced or arrived meanwhile."""
        rows = conn.execute(
            "SELECT * FROM live_events WHERE id = ANY(%s) OR id > %s ORDER BY id LIMIT %s",
            (ids, max([*ids, self.last_id]), REPLAY_MAX),
        ).fetchall()
        for row in rows:
            self._publish(row)

    def _run(self) -> None:
        delay = 0.5
        first = True
        while not self._stop.is_set():
            try:
                with psycopg.connect(
                    self.url,
                    autocommit=True,
                    connect_timeout=5,
                    row_factory=dict_row,
                    application_name="carewatch-live",
                ) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    if first:
                        top = conn.execute("SELECT coalesce(max(id), 0) AS m FROM live_events").fetchone()
                        self.last_id = int(top["m"]) if top else 0
                        first = False
                    else:  # missed notifications while disconnected: read them back
                        for r in conn.execute(
                            "SELECT * FROM live_events WHERE id > %s ORDER BY id LIMIT %s",
                            (self.last_id, REPLAY_MAX),
                        ).fetchall():
                            self._publish(r)
                    self.connected.set()
                    delay = 0.5
                    while not self._stop.is_set():
                        # Queries may not run while the notifies() generator is open: collect, then read.
                        ids = [n.payload for n in conn.notifies(timeout=1.0, stop_after=1)]
                        wanted = [int(i) for i in ids if i.isdigit()]
                        if wanted:
                            self._fetch(conn, wanted)
            except psycopg.Error as exc:
                self.connected.clear()
                log.warning(
                    "live feed: database connection lost (%s); retrying in %.1fs", type(exc).__name__, delay
                )
                self._stop.wait(delay)
                delay = min(delay * 2, 10.0)


def _offer(queue: asyncio.Queue[dict[str, Any] | None], row: dict[str, Any]) -> None:
    try:
        queue.put_nowait(row)
    except asyncio.QueueFull:  # a stuck client: end its stream; it resumes with Last-Event-ID
        with contextlib.suppress(asyncio.QueueEmpty):
            while True:
                queue.get_nowait()
        queue.put_nowait(None)


def _replay(pool: ConnectionPool[Conn], principal: Principal, after: int) -> list[dict[str, Any]]:
    with pool.connection(timeout=CONN_TIMEOUT_S) as conn:
        ids = None if principal.resident_ids is None else sorted(principal.resident_ids)
        return conn.execute(
            "SELECT * FROM live_events WHERE id > %s AND (%s::bigint[] IS NULL OR resident_id = ANY(%s)) "
            "ORDER BY id LIMIT %s",
            (after, ids, ids, REPLAY_MAX),
        ).fetchall()


def _still_allowed(pool: ConnectionPool[Conn], key: str, token: str) -> bool:
    try:
        with pool.connection(timeout=CONN_TIMEOUT_S) as conn:
            principal_for_token(conn, key, token)
        return True
    except Problem:
        return False
    except (PoolTimeout, psycopg.OperationalError):
        return True  # the database blinked: keep the stream, the client will catch up by id


@router.get(
    "/live",
    summary="Live feed (Server-Sent Events)",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
            "description": "event stream: 'id', 'event' (kind) and JSON 'data' per change",
        }
    },
    description="Auth by bearer header or ?access_token= (EventSource cannot set headers). "
    "Resume with Last-Event-ID. A ': keep-alive' comment is sent every 15 s.",
)
async def live(
    request: Request,
    access_token: str | None = Query(
        default=None, max_length=4096, description="Bearer token for EventSource."
    ),
    last_event_id: str | None = Header(default=None, alias="Last-Event-ID", max_length=20),
    principal: Principal = Depends(require_roles(*ALL_ROLES, query_token=True)),
) -> StreamingResponse:
    hub: LiveHub | None = getattr(request.app.state, "live_hub", None)
    if hub is None:
        raise Problem(503, "Service unavailable", "the live feed is not running")
    after: int | None = None
    if last_event_id:
        try:
            after = int(last_event_id)
        except ValueError as exc:
            raise Problem(400, "Bad request", "Last-Event-ID must be the id of an event") from exc
    token = request.headers.get("authorization", "").partition(" ")[2].strip() or access_token or ""
    pool: ConnectionPool[Conn] = request.app.state.pool
    key: str = request.app.state.signing_key
    keepalive: float = getattr(request.app.state, "live_keepalive_s", KEEPALIVE_S)
    sub_key, queue = hub.subscribe()
    try:
        backlog = await asyncio.to_thread(_replay, pool, principal, after) if after is not None else []
    except BaseException:
        hub.unsubscribe(sub_key)
        raise

    async def stream() -> AsyncIterator[str]:
        sent: set[int] = set()
        try:
            yield "retry: 3000\n\n"
            for old in backlog:
                sent.add(int(old["id"]))
                yield sse(old, principal)
            while True:
                try:
                    item: dict[str, Any] | None = await asyncio.wait_for(queue.get(), timeout=keepalive)
                except TimeoutError:
                    if await request.is_disconnected():
                        return
                    if not await asyncio.to_thread(_still_allowed, pool, key, token):
                        yield "event: revoked\ndata: {}\n\n"
                        return
                    yield ": keep-alive\n\n"
                    continue
                if item is None:
                    return
                rid = int(item["id"])
                if rid in sent or (after is not None and rid <= after):
                    continue
                if visible(item, principal):
                    yield sse(item, principal)
        finally:
            hub.unsubscribe(sub_key)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
