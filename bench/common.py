"""What every benchmark part shares: a private tuned broker, a fresh database, service processes, the
machine description and percentiles. The bench owns everything it starts and stops it all at the end."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from carewatch.broker import ManagedBroker, free_port, mosquitto_binary
from carewatch.migrate import migrate

ROOT = Path(__file__).resolve().parent.parent
VAR = ROOT / "var" / "bench"

SERVERS = {
    "timescaledb": os.environ.get(
        "CAREWATCH_BENCH_TIMESCALEDB_URL", "postgresql://postgres@127.0.0.1:5433/postgres"
    ),
    "postgresql": os.environ.get(
        "CAREWATCH_BENCH_POSTGRESQL_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    ),
}
SECRET_KEY = secrets.token_urlsafe(32)  # this run's token signing key; never printed


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): a p99 is a value that was really observed."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def summary_ms(values_s: Sequence[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values_s]
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 50), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "max_ms": round(max(ms), 2) if ms else float("nan"),
    }


def _with_db(url: str, name: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(url)
    info["dbname"] = name
    return psycopg.conninfo.make_conninfo("", **info)


@dataclass
class Env:
    """One run's private services: a tuned mosquitto and a fresh migrated database."""

    storage_wanted: str
    server_url: str
    quick: bool
    run_dir: Path
    profile: bool = False
    database_url: str = ""
    storage: str = ""
    broker: ManagedBroker | None = None
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def mqtt_url(self) -> str:
        assert self.broker is not None
        return self.broker.url()

    def start(self) -> Env:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.broker = ManagedBroker(self.run_dir / "broker").start()
        name = f"cw_bench_{os.getpid()}_{secrets.token_hex(3)}"
        with psycopg.connect(self.server_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.database_url = _with_db(self.server_url, name)
        self.storage = migrate(self.database_url)
        if self.storage != self.storage_wanted:
            raise RuntimeError(f"asked for {self.storage_wanted} but the server gives {self.storage}")
        say(f"{self.storage}: database {name}, mosquitto on port {self.broker.port}")
        return self

    def stop(self) -> None:
        for proc in self.procs:
            stop_process(proc)
        self.procs.clear()
        if self.broker is not None:
            self.broker.stop(kill=True)
        if self.database_url:
            name = psycopg.conninfo.conninfo_to_dict(self.database_url)["dbname"]
            with (
                contextlib.suppress(psycopg.Error),
                psycopg.connect(self.server_url, autocommit=True) as conn,
            ):
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        shutil.rmtree(self.run_dir / "broker", ignore_errors=True)

    def restart_broker(self) -> None:
        """A fresh broker (empty persistence) between parts, so one part's backlog never slows the next."""
        assert self.broker is not None
        self.broker.stop(kill=True)
        shutil.rmtree(self.broker.data_dir, ignore_errors=True)
        self.broker = ManagedBroker(self.broker.data_dir).start()

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CAREWATCH_")}
        env.update(
            {
                "CAREWATCH_DATABASE_URL": self.database_url,
                "CAREWATCH_MQTT_URL": self.mqtt_url,
                "CAREWATCH_DATA_DIR": str(self.run_dir / "data"),
                "CAREWATCH_SECRET_KEY": SECRET_KEY,
                "CAREWATCH_LOG_LEVEL": "WARNING",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(extra)
        return env

    def service(self, command: str, log_name: str, *args: str, **extra: str) -> subprocess.Popen[bytes]:
        """`carewatch <command>` as its own process, as in production."""
        log_path = self.run_dir / f"{log_name}.log"
        out = open(log_path, "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            [sys.executable, "-m", "carewatch.cli", command, *args],
            env=self.env(**extra),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
        )
        out.close()
        self.procs.append(proc)
        return proc

    def log_text(self, log_name: str) -> str:
        path = self.run_dir / f"{log_name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        return psycopg.connect(self.database_url, autocommit=True, **kwargs)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def metric(port: int, name: str) -> float:
    """Sum of one Prometheus counter/gauge from a service's /metrics (0 if not served yet)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return -1.0
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {"):
            total += float(line.rsplit(" ", 1)[1])
    return total


@contextlib.contextmanager
def load_sampler() -> Iterator[list[float]]:
    """1-minute load averages seen during a part (other work on the machine skews every number)."""
    samples: list[float] = [os.getloadavg()[0]]
    yield samples
    samples.append(os.getloadavg()[0])


def machine(env: Env) -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_kb = int(line.split()[1])
    with env.connect() as conn:
        pg = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
        row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
        tsdb = str(row[0]) if row else None
        fsync = str(conn.execute("SHOW fsync").fetchone()[0])  # type: ignore[index]
        sync_commit = str(conn.execute("SHOW synchronous_commit").fetchone()[0])  # type: ignore[index]
    binary = mosquitto_binary() or "mosquitto"
    mosq = subprocess.run([binary, "-h"], capture_output=True, text=True, timeout=10).stdout.splitlines()
    libs = {}
    for dist in ("paho-mqtt", "psycopg", "psycopg-binary", "pydantic", "fastapi", "uvicorn", "httpx"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            libs[dist] = importlib.metadata.version(dist)
    return {
        "cores": os.cpu_count(),
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "cpu_model": cpu,
        "kernel": platform.release(),
        "postgresql": pg,
        "timescaledb": tsdb,
        "postgres_fsync": fsync,
        "postgres_synchronous_commit": sync_commit,
        "mosquitto": mosq[0].strip() if mosq else "unknown",
        "python": platform.python_version(),
        "libraries": libs,
    }


def dump(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")


__all__ = ["free_port"]
