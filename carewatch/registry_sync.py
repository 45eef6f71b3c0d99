"""Keep mosquitto's password file and ACL in step with the device registry.

Rendered from the devices table (enabled devices with a secret only), written atomically, then the
broker is told to re-read them (SIGHUP), so an enrolled device can connect at once and a revoked one
cannot reconnect.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from carewatch.broker import SERVICE_USERS, render_acl, render_passwd, write_atomic

log = logging.getLogger(__name__)


def read_passwd(passwd_file: Path) -> dict[str, str]:
    """username -> hash from an existing mosquitto password file (missing file: empty)."""
    try:
        text = passwd_file.read_text()
    except FileNotFoundError:
        return {}
    entries: dict[str, str] = {}
    for line in text.splitlines():
        user, sep, hashed = line.partition(":")
        if sep and user and not user.startswith("#"):
            entries[user] = hashed.strip()
    return entries


def service_accounts_from(passwd_file: Path) -> dict[str, str]:
    """The service users (ingest, alerts, ...) already in the file, so a re-render keeps them."""
    return {u: h for u, h in read_passwd(passwd_file).items() if u in SERVICE_USERS}


def sighup_pid_file(pid_file: Path) -> Callable[[], None]:
    def reload() -> None:
        try:
            pid = int(pid_file.read_text().strip())
            os.kill(pid, signal.SIGHUP)
        except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError) as exc:
            log.warning("broker reload: could not signal the pid in %s: %s", pid_file, exc)

    return reload


def sync_broker(
    conn: psycopg.Connection[Any],
    passwd_file: Path,
    acl_file: Path,
    *,
    service_accounts: dict[str, str],
    reload: Callable[[], None] | None,
    pid_file: Path | None = None,
) -> int:
    """Render passwd + ACL from the registry and reload the broker; returns the number of devices."""
    rows = conn.execute(
        "SELECT id, secret_hash FROM devices WHERE enabled AND secret_hash IS NOT NULL ORDER BY id"
    ).fetchall()
    devices: list[tuple[str, str]] = []
    for row in rows:
        device_id, hashed = (row["id"], row["secret_hash"]) if isinstance(row, dict) else (row[0], row[1])
        if device_id in service_accounts:  # a device may never impersonate a service account
            continue
        devices.append((str(device_id), str(hashed)))
    entries = sorted(service_accounts.items()) + devices
    service_users = sorted(set(SERVICE_USERS) | set(service_accounts))
    write_atomic(passwd_file, render_passwd(entries))
    write_atomic(acl_file, render_acl([d for d, _ in devices], service_users=service_users))
    if reload is None and pid_file is not None:
        reload = sighup_pid_file(pid_file)
    if reload is not None:
        reload()
    log.info("broker: %d device credentials written, broker reloaded=%s", len(devices), reload is not None)
    return len(devices)
