"""The real server: uvicorn in its own process, the SSE live feed with family filtering and resume."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from carewatch.broker import free_port

from .conftest import SECRET, User

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    env = {
        **os.environ,
        "CAREWATCH_DATABASE_URL": database_url,
        "CAREWATCH_SECRET_KEY": SECRET,
        "CAREWATCH_API_PORT": str(port),
        "CAREWATCH_DATA_DIR": str(tmp_path_factory.mktemp("srv")),
        "CAREWATCH_LOG_LEVEL": "WARNING",
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from api.app import run; from carewatch.settings import Settings; run(Settings())",
        ],
        cwd=ROOT,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, "uvicorn exited"
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "uvicorn did not become ready"
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class Stream:
    """A minimal SSE client on a raw socket (shutdown() from the test thread ends it at once);
    events land in a queue as (id, event, data)."""

    def __init__(self, url: str, headers: dict[str, str] | None = None, params: dict[str, str] | None = None):
        parts = httpx.URL(url, params=params or {})
        self.events: queue.Queue[tuple[int, str, dict[str, Any]]] = queue.Queue()
        self.sock = socket.create_connection((parts.host, parts.port or 80), timeout=10)
        target = parts.raw_path.decode()
        lines = [f"GET {target} HTTP/1.1", f"Host: {parts.host}", "Accept: text/event-stream"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.file = self.sock.makefile("rb")
        status_line = self.file.readline().decode()
        self.status = int(status_line.split()[1])
        while self.file.readline() not in (b"\r\n", b""):
            pass  # response headers
        self.sock.settimeout(None)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        ev: dict[str, str] = {}
        with contextlib.suppress(OSError, ValueError):
            for raw in self.file:
                line = raw.decode().rstrip("\r\n")
                if line and all(c in "0123456789abcdefABCDEF" for c in line):
                    continue  # chunk-size line (uvicorn sends each SSE message as one chunk)
                if not line:
                    if "data" in ev:
                        self.events.put((int(ev["id"]), ev.get("event", ""), json.loads(ev["data"])))
                    ev = {}
                elif not line.startswith(":"):
                    key, _, value = line.partition(": ")
                    ev[key] = value

    def take(self, timeout: float = 5) -> tuple[int, str, dict[str, Any]]:
        return self.events.get(timeout=timeout)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(5)


def _emit(conn: psycopg.Connection[Any], kind: str, resident: int | None, payload: dict[str, Any]) -> int:
    row = conn.execute(
        "INSERT INTO live_events (kind, resident_id, payload) VALUES (%s, %s, %s) RETURNING id",
        (kind, resident, json.dumps(payload)),
    ).fetchone()
    assert row is not None
    return int(row["id"])


def test_live_feed(
    server: str, users: dict[str, User], resident: int, other_resident: int, conn: psycopg.Connection[Any]
) -> None:
    url = f"{server}/api/v1/live"
    assert httpx.get(url, timeout=5).status_code == 401
    assert httpx.get(url, params={"access_token": "forged"}, timeout=5).status_code == 401
    staff = Stream(url, headers=users["operator"].headers)
    family = Stream(url, params={"access_token": users["family"].token})
    try:
        assert staff.status == family.status == 200
        anonymous = Stream(url)
        assert anonymous.status == 401
        anonymous.close()
        # the hub's LISTEN connection may still be starting: probe until the feed carries an event
        deadline = time.monotonic() + 15
        while True:
            probe = _emit(conn, "probe", None, {})
            try:
                if staff.take(1)[0] == probe:
                    break
            except queue.Empty:
                assert time.monotonic() < deadline, "live feed never delivered"
        mine = _emit(
            conn,
            "call.created",
            resident,
            {"status": "queued", "priority": 1, "note": "internal: door code 1234", "operator": "li"},
        )
        theirs = _emit(conn, "call.created", other_resident, {"status": "queued"})
        got = [staff.take() for _ in range(2)]
        assert [g[0] for g in got] == [mine, theirs]
        assert got[0][2]["payload"]["note"] == "internal: door code 1234"  # staff see internal detail
        fam = family.take()
        assert fam[0] == mine and fam[1] == "call.created"
        assert fam[2]["payload"] == {"status": "queued", "priority": 1}  # no notes, no names
        with pytest.raises(queue.Empty):
            family.take(1)  # the other resident's event never reaches this family member
    finally:
        staff.close()
        family.close()
    # resume after `mine`: the server replays what came later
    resumed = Stream(url, headers={**users["supervisor"].headers, "Last-Event-ID": str(mine)})
    try:
        assert resumed.take()[0] == theirs
    finally:
        resumed.close()
    fam_resumed = Stream(
        url, params={"access_token": users["family"].token}, headers={"Last-Event-ID": str(probe)}
    )
    try:
        assert fam_resumed.take()[0] == mine
        with pytest.raises(queue.Empty):
            fam_resumed.take(1)
    finally:
        fam_resumed.close()


def test_server_headers_and_openapi(server: str) -> None:
    resp = httpx.get(f"{server}/openapi.json", timeout=5)
    assert resp.status_code == 200 and resp.headers["x-frame-options"] == "DENY"
    paths = resp.json()["paths"]
    assert "/api/v1/residents/{resident_id}/vitals" in paths
