"""Part 1: ingest throughput. A QoS 1 backlog queued for stopped ingest sessions is drained by 1, 2 and 4
ingest processes; the same backlog drained by mosquitto_sub and the COPY rate of the same rows into the
same table are the limits. Then a steady offered load with publish -> visible lag measured on probes."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import Env, free_port, load_sampler, metric, say, stop_process, summary_ms, wait_for
from bench.load import Publishers, Spec, split
from bench.probe import ProbeClient, TelemetryPoller
from device_sim.fleet import Fleet, enrol_via_db, make_fleet

ACKED = "carewatch_ingest_acked_total"
PUBLISHERS = 2


def enrol(env: Env, residents: int, prefix: str, seed: int = 7) -> Fleet:
    fleet = make_fleet(residents, seed, prefix=prefix)
    with env.connect() as conn:
        enrol_via_db(conn, fleet)
    return fleet


def _devices(fleet: Fleet) -> tuple[list[str], list[str]]:
    wbs = [d.id for _r, d in fleet.devices() if d.kind == "wristband"]
    sensors = [d.id for _r, d in fleet.devices() if d.kind != "wristband"]
    return wbs, sensors


def _specs(env: Env, fleet: Fleet, count: int, tag: str, **kw: Any) -> list[Spec]:
    wbs, sensors = _devices(fleet)
    base_ms = int((datetime.now(UTC) - timedelta(days=2)).timestamp() * 1000)
    return [
        Spec(env.mqtt_url, f"bench-{tag}-{i}", w, s, count // PUBLISHERS, base_ms=base_ms, seed=i, **kw)
        for i, (w, s) in enumerate(zip(split(wbs, PUBLISHERS), split(sensors, PUBLISHERS), strict=True))
    ]


class Workers:
    """k `carewatch ingest` processes on one shared subscription, each with its own /metrics port."""

    def __init__(self, env: Env, k: int) -> None:
        self.env, self.k = env, k
        self.ports = [free_port() for _ in range(k)]
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> float:
        began = time.monotonic()
        for i, port in enumerate(self.ports):
            self.procs.append(
                self.env.service(
                    "ingest",
                    f"ingest-{self.k}-{i}",
                    CAREWATCH_INGEST_WORKER_ID=f"w{i}",
                    CAREWATCH_METRICS_PORT=str(port),
                )
            )
        return began

    def acked(self) -> list[float]:
        return [max(0.0, metric(p, ACKED)) for p in self.ports]

    def ready(self, probe: ProbeClient, device: str) -> None:
        """Every worker has subscribed: keep sending probes until each has acked one (bounded)."""
        wait_for(lambda: all(metric(p, ACKED) >= 0 for p in self.ports), 60, "ingest /metrics")
        seq = [0]

        def all_acked() -> bool:
            seq[0] += 1
            body = {"ts": int(time.time() * 1000), "seq": 10_000_000 + seq[0], "hr": 70}
            probe.publish(("ready", seq[0]), f"care/v1/{device}/telemetry", json.dumps(body).encode())
            return all(a >= 1 for a in self.acked())

        wait_for(all_acked, 60, "every ingest worker to subscribe", interval=0.2)

    def stop(self) -> None:
        for proc in self.procs:
            stop_process(proc)
            if proc in self.env.procs:
                self.env.procs.remove(proc)
        self.procs.clear()


def _truncate(env: Env) -> None:
    with env.connect() as conn:
        conn.execute("TRUNCATE telemetry, vitals_1m, vitals_1h, dead_letters")


def _raw_session(env: Env, start: bool) -> list[str]:
    assert env.broker is not None
    sub = shutil.which("mosquitto_sub") or "/usr/bin/mosquitto_sub"
    cmd = [sub, "-h", "127.0.0.1", "-p", str(env.broker.port), "-c", "-i", "bench-raw", "-q", "1"]
    cmd += ["-t", "care/v1/+/telemetry"]
    return [*cmd, "-E"] if start else cmd


def drain(env: Env, fleet: Fleet, probe_dev: str, k: int, n: int, *, raw_limits: bool) -> dict[str, Any]:
    env.restart_broker()
    _truncate(env)
    workers = Workers(env, k)
    workers.start()
    probe = ProbeClient(env.mqtt_url, f"bench-ready-{k}")
    try:
        workers.ready(probe, probe_dev)
    finally:
        probe.close()
    if raw_limits:
        subprocess.run(_raw_session(env, True), check=True, timeout=30, capture_output=True)
    workers.stop()
    say(f"drain x{k}: ingest stopped; publishing {n:,} QoS 1 messages for its persistent session(s)")
    t0 = time.monotonic()
    pub = Publishers(_specs(env, fleet, n, f"backlog{k}")).join(timeout=900)
    pub_s = time.monotonic() - t0
    if pub.acked < pub.messages:
        raise RuntimeError(f"broker acked {pub.acked} of {pub.messages} backlog messages")
    say(f"drain x{k}: {pub.messages:,} messages ({pub.rows:,} rows) queued in {pub_s:.1f}s")
    out: dict[str, Any] = {
        "workers": k,
        "messages": pub.messages,
        "rows": pub.rows,
        "publish_s": round(pub_s, 2),
    }
    if raw_limits:
        t0 = time.monotonic()
        subprocess.run(
            [*_raw_session(env, False), "-C", str(pub.messages)],
            check=True,
            timeout=900,
            stdout=subprocess.DEVNULL,
        )
        raw_s = time.monotonic() - t0
        out["raw_broker_s"] = round(raw_s, 3)
        out["raw_broker_msgs_per_s"] = round(pub.messages / raw_s)
        say(f"drain x{k}: mosquitto_sub drained it at {pub.messages / raw_s:,.0f} msg/s")
    with load_sampler() as load:
        began = workers.start()
        spy = (
            py_spy(workers.procs[0].pid, env.run_dir / "ingest-profile.txt", 20)
            if env.profile and raw_limits
            else None
        )
        first: float | None = None
        deadline = began + max(120.0, pub.messages / 500)
        done = 0.0
        last_print = began
        while time.monotonic() < deadline:
            done = sum(workers.acked())
            now = time.monotonic()
            if done > 0 and first is None:
                first = now
            if done >= pub.messages:
                break
            if now - last_print > 10:
                say(f"drain x{k}: {done:,.0f}/{pub.messages:,} acked after commit ({now - began:.0f}s)")
                last_print = now
            time.sleep(0.25)  # /metrics is served by a thread of ingest: poll it gently
        ended = time.monotonic()
    per_worker = workers.acked()
    workers.stop()
    if spy is not None:
        spy.wait(60)
        out["profile"] = str(env.run_dir / "ingest-profile.txt")
    if done < pub.messages:
        raise RuntimeError(f"ingest x{k} acked {done:.0f} of {pub.messages} before the deadline")
    with env.connect() as conn:
        rows = conn.execute("SELECT count(*) FROM telemetry WHERE seq < 10000000").fetchone()[0]  # type: ignore[index]
    total_s = ended - began
    out.update(
        {
            "drain_s": round(total_s, 3),
            "msgs_per_s": round(pub.messages / total_s),
            "rows_per_s": round(pub.rows / total_s),
            "from_first_commit_s": round(ended - (first or began), 3),
            "msgs_per_s_from_first_commit": round(pub.messages / max(1e-9, ended - (first or began))),
            "rows_stored": rows,
            "per_worker_acked": [int(a) for a in per_worker],
            "load_avg_1m": load,
        }
    )
    if rows != pub.rows:
        out["warning"] = f"expected {pub.rows} rows, found {rows}"
    say(
        f"drain x{k}: {out['msgs_per_s']:,} msg/s ({out['rows_per_s']:,} rows/s) incl. process start; "
        f"{out['msgs_per_s_from_first_commit']:,} msg/s from first commit; rows stored {rows:,}/{pub.rows:,}"
    )
    if raw_limits:
        out.update(_copy_limit(env, pub.messages))
    return out


def py_spy(pid: int, output: Path, seconds: int) -> subprocess.Popen[bytes]:
    """py-spy on a service process (collapsed stacks; numbers of a profiled run are a little lower)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    cmd = [spy, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "200"]
    cmd += ["--format", "raw", "--output", str(output), "--nonblocking"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _copy_limit(env: Env, messages: int) -> dict[str, Any]:
    """COPY the very rows ingest stored back into the same (emptied) table, from memory, in one commit."""
    buf = io.BytesIO()
    with env.connect() as conn, conn.cursor().copy("COPY (SELECT * FROM telemetry) TO STDOUT") as copy:
        for chunk in copy:
            buf.write(chunk)
    data = buf.getvalue()
    with env.connect() as conn:
        conn.execute("TRUNCATE telemetry")
        conn.execute("CHECKPOINT")
        began = time.monotonic()
        with conn.transaction(), conn.cursor().copy("COPY telemetry FROM STDIN") as copy:
            view = memoryview(data)
            for i in range(0, len(data), 1 << 20):
                copy.write(view[i : i + (1 << 20)])
        copy_s = time.monotonic() - began
        rows = conn.execute("SELECT count(*) FROM telemetry").fetchone()[0]  # type: ignore[index]
    say(f"raw COPY: {rows:,} rows in {copy_s:.2f}s = {messages / copy_s:,.0f} msg-equivalents/s")
    return {
        "raw_copy_s": round(copy_s, 3),
        "raw_copy_rows": rows,
        "raw_copy_rows_per_s": round(rows / copy_s),
        "raw_copy_msgs_per_s": round(messages / copy_s),
    }


def steady(env: Env, fleet: Fleet, probe_dev: str, rate: float, duration_s: float) -> dict[str, Any]:
    """A fixed offered load; lag = probe publish wall time -> first poll whose snapshot shows the row."""
    env.restart_broker()
    _truncate(env)
    workers = Workers(env, 1)
    workers.start()
    probe = ProbeClient(env.mqtt_url, "bench-steady-probe")
    try:
        workers.ready(probe, probe_dev)
        since_ms = int(time.time() * 1000)
        poller = TelemetryPoller(env, probe_dev, since_ms)
        poller.start()
        count = int(rate * duration_s)
        with load_sampler() as load:
            pubs = Publishers(_specs(env, fleet, count, "steady", rate=rate / PUBLISHERS, live_ts=True))
            time.sleep(1.0)  # let the load settle before the first probe
            sent = 0
            began = time.monotonic()
            while time.monotonic() - began < duration_s - 1.5 and sent < 2000:
                sent += 1
                body = {"ts": int(time.time() * 1000), "seq": sent, "hr": 72, "spo2": 97}
                probe.publish(sent, f"care/v1/{probe_dev}/telemetry", json.dumps(body).encode())
                time.sleep(0.05)
            pub = pubs.join(timeout=duration_s + 300)
            wait_for(lambda: len(poller.seen) >= sent, 60, "every probe to become visible")
        poller.stop_flag.set()
        poller.join(5)
        acked = sum(workers.acked())
    finally:
        probe.close()
        workers.stop()
    visible = [poller.seen[s][0] - probe.sent[s] for s in range(1, sent + 1)]
    received = [poller.seen[s][1] - probe.sent[s] for s in range(1, sent + 1)]
    out: dict[str, Any] = {
        "offered_msgs_per_s": rate,
        "achieved_publish_msgs_per_s": round(pub.messages / pub.wall_s),
        "ingest_acked": int(acked),
        "probes": sent,
        "publish_to_visible": summary_ms(visible),
        "publish_to_received_at": summary_ms(received),
        "poll_interval_ms": 5,
        "load_avg_1m": load,
    }
    vis, rec = summary_ms(visible), summary_ms(received)
    say(
        f"steady {rate:,.0f} msg/s: publish->visible p50 {vis['p50_ms']} ms, p99 {vis['p99_ms']} ms "
        f"(received_at p50 {rec['p50_ms']} ms)"
    )
    return out


# The sustained drain (the number) runs the shared subscription with two ingest processes, one
# per core; the scaling runs below show one, two and four on a shorter backlog.
BACKLOG_WORKERS = 2


def run(env: Env, quick: bool) -> dict[str, Any]:
    n = 20_000 if quick else 500_000
    scale_n = 20_000 if quick else 100_000
    fleet = enrol(env, 100 if quick else 1000, "dr")
    probe_fleet = enrol(env, 1, "probe", seed=99)
    probe_dev = probe_fleet.residents[0].wristband.id
    backlog = drain(env, fleet, probe_dev, BACKLOG_WORKERS, n, raw_limits=True)
    result: dict[str, Any] = {"backlog": backlog}
    result["scaling"] = [
        {k: v for k, v in drain(env, fleet, probe_dev, k, scale_n, raw_limits=False).items()}
        for k in (1, 2, 4)
    ]
    result["steady"] = steady(env, fleet, probe_dev, 1000 if quick else 2500, 6 if quick else 15)
    return result
