"""MQTT over TLS: a service given mqtts:// and CAREWATCH_MQTT_CA_FILE connects to a TLS mosquitto
listener whose certificate comes from a CA generated here, and refuses one it cannot verify."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from carewatch.broker import free_port, mosquitto_binary
from carewatch.mqtt import make_client
from carewatch.settings import Settings
from tests.support import add_device, add_resident, scalar, wait_for

from .conftest import System, connect, iso


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture
def tls_broker() -> Iterator[tuple[int, Path, Path]]:
    """mosquitto with a TLS listener; returns (port, CA certificate, an unrelated CA certificate).
    Files live in a world-readable temp dir: mosquitto started as root drops to its own user."""
    if shutil.which("openssl") is None or mosquitto_binary() is None:
        pytest.skip("openssl or mosquitto missing")
    d = Path(tempfile.mkdtemp(prefix="cw-tls-"))
    d.chmod(0o755)
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=Test CA",
        "-keyout",
        str(d / "ca.key"),
        "-out",
        str(d / "ca.crt"),
    )
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        str(d / "server.key"),
        "-out",
        str(d / "server.csr"),
    )
    (d / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl(
        "x509",
        "-req",
        "-in",
        str(d / "server.csr"),
        "-CA",
        str(d / "ca.crt"),
        "-CAkey",
        str(d / "ca.key"),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        str(d / "ext.cnf"),
        "-out",
        str(d / "server.crt"),
    )
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=Other CA",
        "-keyout",
        str(d / "other.key"),
        "-out",
        str(d / "other.crt"),
    )
    for f in d.iterdir():
        f.chmod(0o644)
    port = free_port()
    conf = d / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\ncertfile {d / 'server.crt'}\n"
        f"keyfile {d / 'server.key'}\ntls_version tlsv1.2\nlog_dest stderr\nlog_type error\n"
    )
    proc = subprocess.Popen([str(mosquitto_binary()), "-c", str(conf)], stderr=subprocess.PIPE)
    try:
        time.sleep(0.5)
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        yield port, d / "ca.crt", d / "other.crt"
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(d, ignore_errors=True)


def test_ingest_connects_to_a_tls_listener_with_the_configured_ca(
    database_url: str, uid: str, tls_broker: tuple[int, Path, Path], system_factory: Callable[..., System]
) -> None:
    port, ca, other = tls_broker
    url = f"mqtts://127.0.0.1:{port}"
    settings = Settings(mqtt_url=url, mqtt_ca_file=ca)  # the settings accept TLS for the broker ...
    assert settings.mqtt_ca_file == ca
    pg = Settings(database_url=database_url + "?sslmode=prefer" if "?" not in database_url else database_url)
    assert pg.database_url and "sslmode" in pg.database_url  # ... and for the database (libpq sslmode)

    device = f"tls-{uid}"
    with connect(database_url) as conn:
        add_device(conn, device, add_resident(conn, f"TLS {uid}"))
        system = system_factory(database_url, url, uid, CAREWATCH_MQTT_CA_FILE=str(ca))
        system.start("ingest")
        client, props, target = make_client(url, f"tls-pub-{uid}", ca_file=str(ca))
        client.connect(target.host, target.port, properties=props)
        client.loop_start()
        try:

            def stored() -> bool:
                msg = json.dumps({"ts": iso(datetime.now(UTC)), "seq": int(time.time() * 1000), "hr": 70})
                client.publish(f"care/v1/{device}/telemetry", msg, qos=1)
                n = scalar(conn, "SELECT count(*) FROM telemetry WHERE device_id = %s", (device,))
                return bool(n >= 1)

            wait_for(stored, 60, interval=0.5, what="a reading over TLS stored by ingest over TLS")
        finally:
            client.disconnect()
            client.loop_stop()
    assert "cannot connect" not in system.log("ingest").read_text()

    # A broker certificate the configured CA did not sign is refused: the client never connects.
    bad, props, target = make_client(url, f"tls-bad-{uid}", ca_file=str(other))
    with pytest.raises(Exception, match=r"(?i)certificate"):
        bad.connect(target.host, target.port, properties=props)
