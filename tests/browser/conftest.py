"""Browser fixtures: the real API (uvicorn in a thread) on the session database, and headless Chromium.

Chromium is Debian's (/usr/bin/chromium), driven by Playwright without `playwright install`; when it is
absent every browser test skips with the reason. Registry rows are written straight to the database (the
API's admin routes are tested elsewhere); calls are opened through `hotline.intake.open_or_attach`, the
same function the alert engine uses, so the queue changes the browser sees are the real ones.
"""

from __future__ import annotations

import json
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import uvicorn
from psycopg.rows import dict_row
from pydantic import SecretStr

from api.app import create_app
from carewatch.settings import Settings

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
PASSWORD = "correct horse battery staple"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=30_000)
        yield b
        b.close()


@pytest.fixture(scope="session")
def api_url(database_url: str) -> Iterator[str]:
    """The whole API app (static pages included) served by uvicorn on a free port for the session."""
    port = _free_port()
    settings = Settings(
        database_url=database_url,
        secret_key=SecretStr(secrets.token_urlsafe(32)),
        api_host="127.0.0.1",
        api_port=port,
        login_attempts_per_minute=1000,
    )
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=2,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.05)
    assert server.started, "API did not start within 20 s"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@dataclass
class World:
    """Rows one test created: its residents, users and helpers to open calls."""

    url: str
    uid: str

    def connect(self) -> psycopg.Connection[dict[str, Any]]:
        return psycopg.connect(self.url, autocommit=True, row_factory=dict_row)

    def user(self, role: str, name: str, display: str = "") -> str:
        from api.auth import hash_password

        username = f"{name}_{self.uid}"
        with self.connect() as c:
            c.execute(
                "INSERT INTO users (username, display_name, password_hash, role) VALUES (%s, %s, %s, %s)",
                (username, display or username, hash_password(PASSWORD), role),
            )
        return username

    def link(self, username: str, resident_id: int) -> None:
        with self.connect() as c:
            c.execute(
                "INSERT INTO family_links (user_id, resident_id) "
                "SELECT id, %s FROM users WHERE username = %s",
                (resident_id, username),
            )

    def resident(
        self,
        name: str,
        *,
        dementia: bool = False,
        lives_alone: bool = True,
        care_notes: dict[str, str] | None = None,
        access: str = "",
        contacts: tuple[tuple[str, str, str], ...] = (),
    ) -> int:  # type: ignore[assignment]
        with self.connect() as c:
            row = c.execute(
                """INSERT INTO residents (name, date_of_birth, address, district, home_lat, home_lon,
                                          geofence_m,
                                          lives_alone, dementia, care_notes)
                   VALUES (%s, %s, %s, %s, 31.2304, 121.4737, 150, %s, %s, %s) RETURNING id""",
                (
                    name,
                    date(1939, 5, 17),
                    "18 Wukang Road, flat 602",
                    "Xuhui",
                    lives_alone,
                    dementia,
                    json.dumps(care_notes or {}),
                ),
            ).fetchone()
            assert row is not None
            rid = int(row["id"])
            if access:
                c.execute(
                    "INSERT INTO resident_access (resident_id, access_notes) VALUES (%s, %s)", (rid, access)
                )
            for pos, (cname, relation, phone) in enumerate(contacts):
                c.execute(
                    """INSERT INTO contacts (resident_id, position, name, relation, phone, kind)
                       VALUES (%s, %s, %s, %s, %s, 'family')""",
                    (rid, pos, cname, relation, phone),
                )
        return rid

    def history(self, resident_id: int, *, hours: int = 24, step_min: int = 10, wander: bool = False) -> None:
        """Readings for the charts: wristband vitals and steps, room presence, a fall event, a trail.

        Rollups are written alongside the raw rows, as ingest does, so every chart resolution has data.
        """
        wb, ir = f"wb-{resident_id}-{self.uid}", f"ir-{resident_id}-{self.uid}"
        now = datetime.now(UTC).replace(second=0, microsecond=0)
        rooms = ["bedroom", "kitchen", "living_room", "bathroom"]
        cols = (
            "device_id",
            "ts",
            "seq",
            "resident_id",
            "hr",
            "spo2",
            "battery",
            "worn",
            "steps",
            "lat",
            "lon",
            "acc_m",
            "room",
            "presence",
        )
        tele: list[dict[str, Any]] = []
        mins: list[tuple[Any, ...]] = []
        hours_acc: dict[datetime, list[int]] = {}
        n = hours * 60 // step_min
        for i in range(n):
            ts = now - timedelta(minutes=step_min * (n - i))
            hr, spo2, steps = 68 + (i * 7) % 17, 95 + (i % 4), i * 30
            tele.append(
                {
                    "device_id": wb,
                    "ts": ts,
                    "seq": i,
                    "hr": hr,
                    "spo2": spo2,
                    "battery": 80,
                    "worn": True,
                    "steps": steps,
                }
            )
            tele.append(
                {"device_id": ir, "ts": ts, "seq": i, "room": rooms[(i // 3) % len(rooms)], "presence": True}
            )
            mins.append((resident_id, ts, hr, hr, hr, 1, spo2, spo2, spo2, 1, 1, steps))
            acc = hours_acc.setdefault(ts.replace(minute=0), [999, 0, 0, 0, 999, 0, 0, 0, 0, 0])
            acc[0], acc[1], acc[2], acc[3] = min(acc[0], hr), max(acc[1], hr), acc[2] + hr, acc[3] + 1
            acc[4], acc[5], acc[6], acc[7] = min(acc[4], spo2), max(acc[5], spo2), acc[6] + spo2, acc[7] + 1
            acc[8], acc[9] = acc[8] + 1, max(acc[9], steps)
        if wander:  # walking away north-east, out of the 150 m geofence
            for k in range(12):
                tele.append(
                    {
                        "device_id": wb,
                        "ts": now - timedelta(minutes=12 - k),
                        "seq": 100_000 + k,
                        "worn": True,
                        "lat": 31.2304 + k * 0.0002,
                        "lon": 121.4737 + k * 0.00015,
                        "acc_m": 10.0,
                    }
                )
        rollup = """INSERT INTO {} (resident_id, bucket, hr_min, hr_max, hr_sum, hr_n, spo2_min, spo2_max,
                                    spo2_sum, spo2_n, motion_n, steps_max)
                    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"""
        with self.connect() as c:
            c.execute(
                "INSERT INTO devices (id, kind, resident_id) VALUES (%s, 'wristband', %s)", (wb, resident_id)
            )
            c.execute(
                "INSERT INTO devices (id, kind, resident_id, room) "
                "VALUES (%s, 'presence_sensor', %s, 'home')",
                (ir, resident_id),
            )
            with c.cursor() as cur:
                cur.executemany(
                    f"INSERT INTO telemetry ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))})",
                    [tuple({**t, "resident_id": resident_id}.get(k) for k in cols) for t in tele],
                )
                cur.executemany(rollup.format("vitals_1m"), mins)
                cur.executemany(
                    rollup.format("vitals_1h"), [(resident_id, k, *v) for k, v in hours_acc.items()]
                )
            c.execute(
                "INSERT INTO events (device_id, ts, seq, resident_id, type, confidence) "
                "VALUES (%s, %s, 1, %s, 'fall', 0.94)",
                (wb, now - timedelta(seconds=30), resident_id),
            )

    def open_call(
        self,
        resident_id: int,
        *,
        priority: int = 1,
        rule: str = "fall",
        title: str = "Fall detected",
        target_s: int = 60,
        age_s: int = 0,
    ) -> int:
        """Raise an alert and open its call the way the alert engine does (hotline.intake)."""
        from hotline.intake import open_or_attach

        now = datetime.now(UTC) - timedelta(seconds=age_s)
        with self.connect() as c:
            row = c.execute(
                """INSERT INTO alerts (resident_id, device_id, rule, priority, opened_at, last_seen_at, title)
                   VALUES (%s, NULL, %s, %s, %s, %s, %s) RETURNING id""",
                (resident_id, rule, priority, now, now, title),
            ).fetchone()
            assert row is not None
            ref = open_or_attach(
                c,
                resident_id=resident_id,
                alert_id=int(row["id"]),
                priority=priority,
                rule=rule,
                title=title,
                event_at=now,
                late=False,
                now=now,
                answer_target_s=target_s,
            )
        return ref.call_id


@pytest.fixture
def world(database_url: str, uid: str) -> World:
    return World(database_url, uid)


@pytest.fixture
def shots() -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    return SHOTS


@pytest.fixture
def sign_in(api_url: str) -> Any:
    """Open a page (/console/ or /family/) and sign in through its form."""

    def go(page: Any, path: str, username: str) -> None:
        page.goto(f"{api_url}{path}")
        page.get_by_test_id("username").fill(username)
        page.get_by_test_id("password").fill(PASSWORD)
        page.get_by_test_id("login-submit").click()

    return go


@pytest.fixture
def signed_in(browser: Any, sign_in: Any) -> Any:
    """`with signed_in(user, path, viewport=..., locale=...) as page:` a new browser context signed in to
    `path` as `user`; no uncaught page error may occur before the block ends."""

    @contextmanager
    def open_page(user: str, path: str, **context: Any) -> Iterator[Any]:
        ctx = browser.new_context(**{"locale": "en-US", **context})
        try:
            page = ctx.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            sign_in(page, path, user)
            yield page
            assert errors == []
        finally:
            ctx.close()

    return open_page
