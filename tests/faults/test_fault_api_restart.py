"""The api restarted while operators are connected: their live feeds (SSE) reconnect with Last-Event-ID
and miss no call created while the api was down."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx

from tests.support import Publisher, add_device, add_resident, wait_for

from .conftest import System, connect, iso, operator_token, probe, residents_with_wristbands


class ResumingFeed:
    """An operator's live feed as a browser's EventSource behaves: on a dropped stream it reconnects
    (bounded) with the last id it saw in Last-Event-ID."""

    def __init__(self, base: str, token: str) -> None:
        self.url = f"{base}/api/v1/live"
        self.token = token
        self.events: list[tuple[int, str, dict[str, Any]]] = []
        self.connects = 0
        self.resumed_from: list[str] = []
        self._stop = threading.Event()
        self._response: httpx.Response | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def last_id(self) -> int | None:
        return self.events[-1][0] if self.events else None

    def _run(self) -> None:
        deadline = time.monotonic() + 120
        while not self._stop.is_set() and time.monotonic() < deadline:
            headers = {"Authorization": f"Bearer {self.token}", "Accept": "text/event-stream"}
            if self.last_id is not None:
                headers["Last-Event-ID"] = str(self.last_id)
                self.resumed_from.append(str(self.last_id))
            timeout = httpx.Timeout(5, read=20)
            with (
                contextlib.suppress(httpx.HTTPError),
                httpx.stream("GET", self.url, headers=headers, timeout=timeout) as r,
            ):
                if r.status_code != 200:
                    time.sleep(0.3)
                    continue
                self.connects += 1
                self._response = r
                ev: dict[str, str] = {}
                for line in r.iter_lines():
                    if self._stop.is_set():
                        return
                    if not line:
                        if "data" in ev:
                            self.events.append((int(ev["id"]), ev.get("event", ""), json.loads(ev["data"])))
                        ev = {}
                    elif not line.startswith(":"):
                        key, _, value = line.partition(":")
                        ev[key] = value.lstrip(" ")
            time.sleep(0.3)  # EventSource's retry delay (the server advises 3 s; kept short here)

    def close(self) -> None:
        self._stop.set()
        if self._response is not None:
            with contextlib.suppress(Exception):  # ends the blocked read at once
                self._response.close()
        self._thread.join(25)


def test_api_restart_live_feed_resumes_and_misses_no_call(
    database_url: str, mqtt_url: str, uid: str, system_factory: Callable[..., System]
) -> None:
    with connect(database_url) as conn:
        devices = residents_with_wristbands(conn, uid, 6)
        probe_rid = add_resident(conn, f"Probe {uid}")
        add_device(conn, f"probe-{uid}", probe_rid)
        token = operator_token(conn, uid)
        system = system_factory(database_url, mqtt_url, uid)
        system.start("ingest", "alerts", "api")
        probe(conn, mqtt_url, uid, f"probe-{uid}", probe_rid, fall=True)
        rids = list(devices)
        feed = ResumingFeed(system.base, token)
        pub = Publisher(mqtt_url, f"falls-{uid}")

        def fall(i: int) -> None:
            device = devices[rids[i]]
            event = {"ts": iso(datetime.now(UTC)), "seq": i, "type": "fall"}
            pub.publish_all([(f"care/v1/{device}/event", json.dumps(event))])

        def created_for() -> set[int]:
            return {int(d["resident_id"]) for _, kind, d in feed.events if kind == "call.created"} & set(rids)

        def calls_in_db() -> set[int]:
            rows = conn.execute(
                "SELECT DISTINCT resident_id FROM calls WHERE resident_id = ANY(%s)", (rids,)
            ).fetchall()
            return {int(r["resident_id"]) for r in rows}

        try:
            wait_for(lambda: feed.connects >= 1, 20, what="the operator's feed connecting")
            for i in (0, 1):
                fall(i)
            wait_for(lambda: created_for() == set(rids[:2]), 30, what="calls 1-2 on the live feed")
            system.kill("api")  # the operator's stream breaks mid-shift
            for i in (2, 3):
                fall(i)  # calls created while no api is running
            wait_for(lambda: calls_in_db() >= set(rids[:4]), 30, what="calls 3-4 committed")
            system.start("api")  # same port: the console reconnects to the same address
            for i in (4, 5):
                fall(i)
            wait_for(
                lambda: created_for() == set(rids), 40, what=f"all six calls on the feed ({feed.events})"
            )
            time.sleep(1.0)
        finally:
            pub.close()
            feed.close()
    assert feed.connects >= 2 and feed.resumed_from, "the feed must have reconnected with Last-Event-ID"
    ids = [e[0] for e in feed.events]
    assert ids == sorted(set(ids)), "events arrive once each, in id order"
    created = [
        d["call_id"] for _, kind, d in feed.events if kind == "call.created" and d["resident_id"] in rids
    ]
    assert len(created) == len(set(created)) == 6
