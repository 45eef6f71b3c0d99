"""The production deploy/mosquitto/mosquitto.conf, run by the real mosquitto binary.

Docker is not available here, so the test rewrites only the container paths and ports, then checks what
the compose deployment relies on: the file parses (every directive exists in this Mosquitto 2), anonymous
clients are refused, the generated password file and ACL are enforced, devices connect over TLS, and a
SIGHUP to the pid in the pid file (what the api does) enrols and revokes a device without a restart.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import ssl
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from carewatch import broker

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "deploy" / "mosquitto" / "mosquitto.conf"
PREPARE = ROOT / "deploy" / "mosquitto" / "prepare-auth.sh"

pytestmark = pytest.mark.skipif(
    broker.mosquitto_binary() is None or shutil.which("openssl") is None, reason="needs mosquitto and openssl"
)


@dataclass
class ProdBroker:
    base: Path
    plain_port: int
    tls_port: int
    process: subprocess.Popen[bytes]

    @property
    def auth(self) -> Path:
        return self.base / "auth"

    def write_auth(self, users: dict[str, str], devices: list[str]) -> None:
        """What carewatch.registry_sync does: render both files, replace them atomically."""
        broker.write_atomic(
            self.auth / "passwd", broker.render_passwd((u, broker.hash_password(p)) for u, p in users.items())
        )
        broker.write_atomic(self.auth / "acl", broker.render_acl(devices))

    def sighup_from_pid_file(self) -> None:
        pid = int((self.auth / "mosquitto.pid").read_text().strip())
        assert pid == self.process.pid
        os.kill(pid, signal.SIGHUP)
        time.sleep(0.5)

    def log(self) -> str:
        return (self.base / "mosquitto.log").read_text(errors="replace")


def _free_port() -> int:
    return broker.free_port()


def _make_cert(directory: Path) -> None:
    directory.mkdir(parents=True)
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(directory / "server.key"),
            "-out",
            str(directory / "server.crt"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )


def _chown_tree(path: Path, user: str) -> None:
    info = pwd.getpwnam(user)
    for item in [path, *path.rglob("*")]:
        os.chown(item, info.pw_uid, info.pw_gid)


@pytest.fixture
def prod_broker() -> Iterator[ProdBroker]:
    # The production config drops root to the user mosquitto, which must reach every file: a temporary
    # directory opened to others, not the checkout (which may sit inside a 0700 directory).
    base = Path(tempfile.mkdtemp(prefix="carewatch-prodconf-"))
    base.chmod(0o755)
    process: subprocess.Popen[bytes] | None = None
    try:
        process, prod = _start(base)
        yield prod
    finally:
        if process is not None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        shutil.rmtree(base, ignore_errors=True)


def _start(base: Path) -> tuple[subprocess.Popen[bytes], ProdBroker]:
    (base / "data").mkdir(parents=True)
    _make_cert(base / "certs")
    owner = f"{os.getuid()}:{os.getgid()}"
    # The compose entrypoint: creates empty passwd/acl owned by the broker's user, then execs.
    subprocess.run(
        ["sh", str(PREPARE), "true"],
        check=True,
        timeout=30,
        env={**os.environ, "MOSQUITTO_AUTH_DIR": str(base / "auth"), "MOSQUITTO_AUTH_OWNER": owner},
    )
    assert (base / "auth" / "passwd").read_text() == "" and (base / "auth" / "acl").exists()
    plain, tls = _free_port(), _free_port()
    text = CONF.read_text()
    for container, host in (
        ("/mosquitto/certs/", base / "certs"),
        ("/mosquitto/auth/", base / "auth"),
        ("/mosquitto/data/", base / "data"),
    ):
        text = text.replace(container, f"{host}/")
    text = text.replace("listener 1883\n", f"listener {plain} 127.0.0.1\n")
    text = text.replace("listener 8883\n", f"listener {tls} 127.0.0.1\n")
    directives = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert str(base) in text and not any("/mosquitto/" in line for line in directives)
    conf = base / "mosquitto.conf"
    conf.write_text(text)
    if os.geteuid() == 0 and broker._user_exists("mosquitto"):
        _chown_tree(base, "mosquitto")  # mosquitto drops root privileges to this user, as in the image
    binary = broker.mosquitto_binary()
    assert binary
    with open(base / "mosquitto.log", "wb") as log_file:
        process = subprocess.Popen(
            [binary, "-c", str(conf)], stdout=log_file, stderr=log_file, start_new_session=True
        )
    try:
        broker._wait_port(tls, process)
        broker._wait_port(plain, process)
    except BaseException:
        process.kill()
        process.wait(5)
        raise
    return process, ProdBroker(base, plain, tls, process)


def _connect(
    port: int, user: str | None, password: str | None, *, client_id: str, ca: Path | None = None
) -> bool:
    """True when the broker accepts the CONNECT, False when it refuses it."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    if user:
        client.username_pw_set(user, password)
    if ca:
        client.tls_set_context(ssl.create_default_context(cafile=str(ca)))
    result: list[bool] = []
    done = threading.Event()

    def on_connect(c: mqtt.Client, u: object, flags: object, reason: object, props: object) -> None:
        result.append(not getattr(reason, "is_failure", True))
        done.set()

    def on_disconnect(c: mqtt.Client, u: object, flags: object, reason: object, props: object) -> None:
        if not result:
            result.append(False)
        done.set()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.connect("127.0.0.1", port, keepalive=10)
    client.loop_start()
    try:
        assert done.wait(10), "no CONNACK within 10 s"
        return result[0]
    finally:
        client.disconnect()
        client.loop_stop()


def test_production_config_runs_locked_down_with_tls(prod_broker: ProdBroker) -> None:
    uid = uuid.uuid4().hex[:8]
    device, secret = f"wb-{uid}", "s3cret-" + uid
    service_password = "svc-" + uid
    prod_broker.write_auth({"carewatch-ingest": service_password, device: secret}, [device])
    prod_broker.sighup_from_pid_file()

    assert not _connect(prod_broker.plain_port, None, None, client_id=f"anon-{uid}")
    assert not _connect(
        prod_broker.tls_port,
        None,
        None,
        client_id=f"anon-{uid}",
        ca=prod_broker.base / "certs" / "server.crt",
    )
    assert _connect(prod_broker.plain_port, "carewatch-ingest", service_password, client_id=f"ingest-{uid}")
    assert _connect(
        prod_broker.tls_port, device, secret, client_id=device, ca=prod_broker.base / "certs" / "server.crt"
    )
    assert not _connect(
        prod_broker.tls_port, device, "wrong", client_id=device, ca=prod_broker.base / "certs" / "server.crt"
    )
    # the device port really is TLS-only: valid credentials over plain TCP are not accepted
    assert not _connect(prod_broker.tls_port, device, secret, client_id=device)
    log = prod_broker.log()
    assert secret not in log and service_password not in log
    assert "Error" not in log, log


def test_enrol_and_revoke_take_effect_on_sighup(prod_broker: ProdBroker) -> None:
    uid = uuid.uuid4().hex[:8]
    device, secret = f"ir-{uid}", "k3y-" + uid
    ca = prod_broker.base / "certs" / "server.crt"
    assert not _connect(prod_broker.tls_port, device, secret, client_id=device, ca=ca)

    prod_broker.write_auth({device: secret}, [device])
    prod_broker.sighup_from_pid_file()
    assert _connect(prod_broker.tls_port, device, secret, client_id=device, ca=ca)

    prod_broker.write_auth({}, [])
    prod_broker.sighup_from_pid_file()
    assert not _connect(prod_broker.tls_port, device, secret, client_id=device, ca=ca)
    assert prod_broker.process.poll() is None, "the broker must survive reloads"
