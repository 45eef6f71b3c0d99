"""Resolve where the database and broker are: configured URLs win; otherwise embedded services are started
(embedded PostgreSQL, the system mosquitto) with their data under settings.data_dir, and reused by every
CareWatch process on this machine."""

from __future__ import annotations

import logging
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

from carewatch.broker import ManagedBroker, hash_password
from carewatch.settings import Settings

log = logging.getLogger(__name__)

SERVICE_USER = "carewatch-svc"
DEMO_BROKER_PORT = 1884


@dataclass
class Runtime:
    settings: Settings  # with database_url and mqtt_url filled in
    broker: ManagedBroker | None = None
    service_password: str | None = None

    def service_accounts(self) -> dict[str, str]:
        return service_accounts(self.settings, self.service_password)


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.3):
            return True
    except OSError:
        return False


def _service_password(data_dir: Path) -> str:
    path = data_dir / "mosquitto" / "service-password"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_text(secrets.token_urlsafe(24))
        path.chmod(0o600)
    return path.read_text().strip()


def resolve(settings: Settings, *, start_broker: bool = True, database: bool = True) -> Runtime:
    """Fill in what is not configured: the embedded PostgreSQL (unless `database` is False: the caller
    never touches the database) and the embedded broker."""
    updates: dict[str, object] = {}
    if not settings.database_url and database:
        from carewatch.embedded import embedded_postgres_url

        updates["database_url"] = embedded_postgres_url(settings.data_dir)
    elif settings.database_url:
        log.info("database: %s", _redact(settings.database_url))
    broker = None
    password = None
    if not settings.mqtt_url:
        password = _service_password(settings.data_dir)
        data = settings.data_dir / "mosquitto"
        broker = ManagedBroker(data, port=DEMO_BROKER_PORT, auth=True)
        if _port_open(DEMO_BROKER_PORT):
            log.info("broker: reusing the embedded mosquitto on port %d (data in %s)", DEMO_BROKER_PORT, data)
        elif start_broker:
            from carewatch.embedded import embedded_broker

            broker = embedded_broker(settings.data_dir, auth=True, port=DEMO_BROKER_PORT)
        updates["mqtt_url"] = f"mqtt://{SERVICE_USER}:{password}@127.0.0.1:{DEMO_BROKER_PORT}"
        updates["broker_passwd_file"] = broker.passwd_file
        updates["broker_acl_file"] = broker.acl_file
        updates["broker_pid_file"] = broker.pid_file
    else:
        from carewatch.mqtt import parse_url

        log.info("broker: %s", parse_url(settings.mqtt_url).redacted())
    return Runtime(settings.model_copy(update=updates), broker, password)


def _redact(url: str) -> str:
    from carewatch.logs import redact

    return redact(url)


def service_accounts(settings: Settings, demo_password: str | None = None) -> dict[str, str]:
    """Service users kept in the generated password file: the demo's own account, the ones in
    broker_service_passwd_file (compose mounts it), and those already in the file."""
    from carewatch.registry_sync import read_passwd, service_accounts_from

    accounts: dict[str, str] = {}
    if settings.broker_passwd_file:
        accounts.update(service_accounts_from(settings.broker_passwd_file))
    if settings.broker_service_passwd_file:
        accounts.update(read_passwd(settings.broker_service_passwd_file))
    if demo_password:
        accounts[SERVICE_USER] = hash_password(demo_password)
    return accounts


def sync_broker(runtime: Runtime) -> None:
    """Write the managed broker's password file and ACL from the registry (plus the service account)."""
    s = runtime.settings
    if not (s.broker_passwd_file and s.broker_acl_file and s.database_url):
        return
    from carewatch.db import connect
    from carewatch.registry_sync import sync_broker as sync

    broker = runtime.broker
    with connect(s.database_url, autocommit=True) as conn:
        sync(
            conn,
            s.broker_passwd_file,
            s.broker_acl_file,
            service_accounts=runtime.service_accounts(),
            reload=broker.reload if broker and broker.process else None,
            pid_file=s.broker_pid_file,
        )
