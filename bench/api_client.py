"""`carewatch api` as a real uvicorn process, an admin token for it, and an SSE reader of /api/v1/live."""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import threading
import time
from datetime import datetime
from typing import Any

import httpx
from psycopg.rows import dict_row

from api.users import create_admin
from bench.common import Env, free_port, wait_for


class Api:
    def __init__(self, env: Env) -> None:
        self.env = env
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.token = ""

    def start(self) -> Api:
        self.proc = self.env.service("api", "api", "--port", str(self.port), CAREWATCH_TOKEN_TTL_S="7200")

        def up() -> bool:
            try:
                return httpx.get(f"{self.base}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, 60, "the API to answer /readyz", interval=0.2)
        password = secrets.token_urlsafe(16)
        user = f"bench-{secrets.token_hex(3)}"
        with self.env.connect(row_factory=dict_row) as conn:
            conn.autocommit = False
            create_admin(conn, user, password)
            conn.commit()
        resp = httpx.post(
            f"{self.base}/api/v1/auth/token", data={"username": user, "password": password}, timeout=10
        )
        resp.raise_for_status()
        self.token = str(resp.json()["access_token"])
        return self

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


class LiveReader(threading.Thread):
    """Reads the SSE feed; for each call.created remembers (arrival wall time) per resident."""

    def __init__(self, api: Api) -> None:
        super().__init__(daemon=True)
        self.api = api
        self.arrived: dict[int, float] = {}
        self.event_at: dict[int, float] = {}  # live_events.at (set by the inserting transaction)
        self.connected = threading.Event()
        self.error: str | None = None
        self._client = httpx.Client(timeout=httpx.Timeout(5.0, read=None))

    def run(self) -> None:
        url = f"{self.api.base}/api/v1/live"
        try:
            with self._client.stream("GET", url, params={"access_token": self.api.token}) as resp:
                resp.raise_for_status()
                self.connected.set()
                kind = ""
                for line in resp.iter_lines():
                    if line.startswith("event:"):
                        kind = line[6:].strip()
                    elif line.startswith("data:") and kind == "call.created":
                        at = time.time()
                        data: dict[str, Any] = json.loads(line[5:])
                        rid = data.get("resident_id")
                        if rid is not None:
                            self.arrived.setdefault(int(rid), at)
                            with contextlib.suppress(TypeError, ValueError):
                                stamp = datetime.fromisoformat(str(data.get("at"))).timestamp()
                                self.event_at.setdefault(int(rid), stamp)
        except (httpx.HTTPError, RuntimeError) as exc:  # closed by stop()
            self.error = type(exc).__name__

    def stop(self) -> None:
        self._client.close()
