"""The database goes away and comes back: 503 problem bodies meanwhile, recovery without a restart."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path

import psycopg
from fastapi.testclient import TestClient

from api.app import create_app

from .conftest import User, make_settings


class Proxy:
    """A TCP forwarder we can cut and restore, standing in for a database outage."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._listener: socket.socket | None = None
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        if self._listener:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() on Linux
            self._listener.close()
            self._listener = None
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


def test_503_while_down_then_recovers(database_url: str, tmp_path: Path, users: dict[str, User]) -> None:
    info = psycopg.conninfo.conninfo_to_dict(database_url)
    proxy = Proxy((str(info.get("host") or "127.0.0.1"), int(info.get("port") or 5432)))
    proxy.start()
    url = psycopg.conninfo.make_conninfo(database_url, host="127.0.0.1", port=str(proxy.port))
    headers = users["operator"].headers
    try:
        with TestClient(create_app(make_settings(url, tmp_path))) as client:
            assert client.get("/readyz").status_code == 200
            assert client.get("/api/v1/residents", headers=headers).status_code == 200
            proxy.stop()
            ready = client.get("/readyz")
            assert ready.status_code == 503
            assert ready.headers["content-type"].startswith("application/problem+json")
            assert "database" in ready.json()["detail"]
            down = client.get("/api/v1/residents", headers=headers)
            assert down.status_code == 503, down.text
            assert down.json()["title"] == "Service unavailable" and down.headers["retry-after"]
            assert client.get("/healthz").status_code == 200  # alive, just not ready
            proxy.start()
            deadline = time.monotonic() + 30
            while client.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline, "did not recover"
                time.sleep(0.5)
            assert client.get("/api/v1/residents", headers=headers).status_code == 200
    finally:
        proxy.stop()
