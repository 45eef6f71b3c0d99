"""compose.yaml cannot run here (no Docker), so these tests hold it to the code instead.

Every CAREWATCH_* variable must be a Settings field and parse as one, every command a CLI subcommand,
every volume, secret, mounted file and dependency declared, the broker config wired the way the API
writes the password file, no secret written in the file, and both deployment shapes complete.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from carewatch import broker
from carewatch.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text("utf-8"))
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
ENV_EXAMPLE = ROOT / ".env.example"
# The CLI subcommands issue 2 asks for; replaced by `carewatch --help` once carewatch/cli.py exists.
DOCUMENTED_SUBCOMMANDS = {"demo", "ingest", "alerts", "api", "sim", "migrate", "create-admin"}
# Long-running services that legitimately have no health endpoint.
NO_HEALTHCHECK = {"sim"}
ONE_SHOT = {"migrate", "emqx-grant"}
# A profile that only makes sense together with another one.
PROFILE_NEEDS = {"demo": {"single"}}
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def _interpolate(text: str) -> str:
    """Resolve ${VAR}, ${VAR:-default}, ${VAR:?msg} as compose would with a filled-in .env."""

    def repl(match: re.Match[str]) -> str:
        name, op, arg = match.groups()
        if op in (":-", "-"):
            return arg
        return f"value-of-{name.lower().replace('_', '-')}"

    return _VAR.sub(repl, text.replace("$$", "\0")).replace("\0", "$")


def _is_built_here(service: dict[str, Any]) -> bool:
    return "build" in service


def _profiles(name: str) -> set[str]:
    return set(SERVICES[name].get("profiles") or [])


def _active(profiles: set[str]) -> set[str]:
    """Services started by `COMPOSE_PROFILES=<profiles> docker compose up`."""
    return {n for n in SERVICES if not _profiles(n) or _profiles(n) & profiles}


SHAPES = {"single": {"single"}, "demo": {"single", "demo"}, "cluster": {"cluster"}}


def _cli_parser() -> argparse.ArgumentParser | None:
    if importlib.util.find_spec("carewatch.cli") is None:
        return None
    from carewatch import cli

    parser: argparse.ArgumentParser = cli.build_parser()
    return parser


def _subcommands() -> dict[str, argparse.ArgumentParser | None]:
    """Subcommand -> its parser, from the real CLI (the documented list until carewatch/cli.py exists)."""
    parser = _cli_parser()
    if parser is None:
        return dict.fromkeys(DOCUMENTED_SUBCOMMANDS)
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert actions, "carewatch has no subcommands"
    return dict(actions[0].choices)


def _mounts(service: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            yield str(volume["source"]), str(volume["target"])
        else:
            source, target = str(volume).split(":")[:2]
            yield source, target


def _mqtt_urls() -> Iterator[tuple[str, str]]:
    for name, service in SERVICES.items():
        url = _env(service).get("CAREWATCH_MQTT_URL")
        if url:
            yield name, url


def test_every_carewatch_variable_is_a_settings_field() -> None:
    fields = {f"CAREWATCH_{name.upper()}" for name in Settings.model_fields}
    used = {key for service in SERVICES.values() for key in _env(service) if key.startswith("CAREWATCH_")}
    assert used, "no CAREWATCH_* variables found"
    assert used <= fields, f"not Settings fields: {sorted(used - fields)}"
    # Compose-level variables must not look like settings the code would ignore.
    compose_vars = {m.group(1) for m in _VAR.finditer((ROOT / "compose.yaml").read_text())}
    assert not {v for v in compose_vars if v.startswith("CAREWATCH_")} - fields


@pytest.mark.parametrize("name", [n for n, s in SERVICES.items() if _is_built_here(s)])
def test_service_environment_parses_as_settings(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(__import__("os").environ):
        if key.startswith("CAREWATCH_"):
            monkeypatch.delenv(key)
    for key, value in _env(SERVICES[name]).items():
        monkeypatch.setenv(key, _interpolate(value))
    settings = Settings()
    assert settings.database_url and settings.database_url.startswith("postgresql://")
    assert urlsplit(settings.database_url).hostname == "db"
    if SERVICES[name]["command"][0] == "api":
        assert settings.api_host == "0.0.0.0"
        assert settings.secret_key is not None
        assert f"{settings.api_port}" in [str(p) for p in SERVICES[name].get("expose", [])]
    if settings.metrics_port is not None:
        assert str(settings.metrics_port) in [str(p) for p in SERVICES[name].get("expose", [])]


def test_every_command_is_a_carewatch_subcommand() -> None:
    subcommands = _subcommands()
    built = [n for n, s in SERVICES.items() if _is_built_here(s)]
    assert {"migrate", "api", "ingest", "alerts", "sim"} <= {SERVICES[n]["command"][0] for n in built}
    for name in built:
        command = SERVICES[name]["command"]
        assert isinstance(command, list) and command[0] in subcommands, f"{name}: {command}"
        assert SERVICES[name]["image"] == SERVICES["api"]["image"], "one image for every service"


def test_every_command_parses_with_the_cli() -> None:
    """Options given in compose (e.g. the simulator's) must exist in the real CLI."""
    subcommands = _subcommands()
    for service in SERVICES.values():
        if _is_built_here(service):
            parser = subcommands[service["command"][0]]
            if parser is None:
                pytest.skip("carewatch/cli.py not written yet")
            parser.parse_args(service["command"][1:])


def test_images_are_pinned_to_a_major_version() -> None:
    expected = {
        "db": r"timescale/timescaledb:2\.\d+(\.\d+)?-pg17",
        "mosquitto": r"eclipse-mosquitto:2(\.\d+)*",
        "emqx-1": r"emqx/emqx:5\.\d+(\.\d+)?",
        "emqx-2": r"emqx/emqx:5\.\d+(\.\d+)?",
        "proxy": r"caddy:2(\.\d+)*",
        "proxy-cluster": r"caddy:2(\.\d+)*",
    }
    for name, pattern in expected.items():
        assert re.fullmatch(pattern, SERVICES[name]["image"]), (name, SERVICES[name]["image"])
    for name, service in SERVICES.items():
        assert service.get("image"), f"{name} has no image"
        assert ":latest" not in service["image"]


def test_dockerfile_builds_a_non_root_image_with_healthcheck() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.MULTILINE)
    assert "--constraint constraints.txt" in text and "COPY pyproject.toml constraints.txt" in text
    users = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    assert "HEALTHCHECK" in text
    assert re.search(r'^ENTRYPOINT \["carewatch"\]', text, re.MULTILINE)
    pyproject = (ROOT / "pyproject.toml").read_text()
    packages = re.search(r"include = \[([^\]]*)\]", pyproject)
    assert packages
    for pattern in re.findall(r'"(\w+)\*"', packages.group(1)):
        assert f"COPY {pattern}/ {pattern}/" in text, f"package {pattern} not copied into the image"
    # the probe compose relies on is the one the image ships
    copied = re.search(r"COPY deploy/healthcheck.py (\S+)", text)
    assert copied and (ROOT / "deploy" / "healthcheck.py").exists()
    for name, service in SERVICES.items():
        test = (service.get("healthcheck") or {}).get("test")
        if _is_built_here(service) and test:
            assert copied.group(1) in test, name
    # same uid as eclipse-mosquitto's user: the api rewrites the broker's files and signals it
    assert "--uid 1883" in text
    assert "1883:1883" in (ROOT / "deploy" / "mosquitto" / "prepare-auth.sh").read_text()


def test_healthcheck_probe_targets(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("healthcheck", ROOT / "deploy" / "healthcheck.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.probe_url({"CAREWATCH_METRICS_PORT": "9101"}) == "http://127.0.0.1:9101/metrics"
    assert module.probe_url({"CAREWATCH_API_PORT": "8000"}) == "http://127.0.0.1:8000/readyz"
    assert module.probe_url({}) == "http://127.0.0.1:8000/readyz"


def test_dockerignore_keeps_secrets_and_state_out() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".git", ".env", "var", "deploy/tls", "secrets", "tests"):
        assert entry in ignored


def test_named_volumes_secrets_and_bind_mounts_exist() -> None:
    declared = set(COMPOSE.get("volumes") or {})
    used: set[str] = set()
    for name, service in SERVICES.items():
        for source, _target in _mounts(service):
            if source.startswith(("./", "/")):
                assert (ROOT / source).exists(), f"{name}: bind mount {source} missing from the repo"
            else:
                assert source in declared, f"{name}: volume {source} not declared"
                used.add(source)
        for secret in service.get("secrets") or []:
            secret_name = secret["source"] if isinstance(secret, dict) else secret
            assert secret_name in COMPOSE["secrets"], f"{name}: secret {secret_name} not declared"
    assert declared == used, f"declared but unused volumes: {declared - used}"
    for secret in COMPOSE["secrets"].values():
        assert secret["file"].startswith("./secrets/"), "secret files live in ./secrets (dockerignored)"


def test_dependencies_exist_and_are_started_with_their_dependents() -> None:
    for name, service in SERVICES.items():
        depends = service.get("depends_on") or {}
        for dep, spec in depends.items() if isinstance(depends, dict) else ((d, {}) for d in depends):
            assert dep in SERVICES, f"{name} depends on unknown {dep}"
            own = _profiles(name)
            available = own | {p for o in own for p in PROFILE_NEEDS.get(o, set())}
            assert not _profiles(dep) or _profiles(dep) & available, f"{name} -> {dep}: profile mismatch"
            if dep in ONE_SHOT:
                assert spec.get("condition") == "service_completed_successfully", (name, dep)
    pid = SERVICES["api"].get("pid")
    assert pid == "service:mosquitto"


def test_long_running_services_have_restart_policy_and_healthcheck() -> None:
    for name, service in SERVICES.items():
        if name in ONE_SHOT:
            assert service.get("restart") == "no", name
            continue
        assert service.get("restart") in ("unless-stopped", "always"), name
        health = service.get("healthcheck") or {}
        if name in NO_HEALTHCHECK:
            continue
        assert health.get("test") and not health.get("disable"), f"{name} has no healthcheck"


def test_published_ports_do_not_collide_and_private_ones_stay_private() -> None:
    for shape, profiles in SHAPES.items():
        seen: dict[str, str] = {}
        for name in sorted(_active(profiles)):
            for port in SERVICES[name].get("ports") or []:
                published = str(port).rsplit(":", 1)[0] + ("/udp" if str(port).endswith("/udp") else "")
                assert published not in seen, f"{shape}: {name} and {seen[published]} both publish {port}"
                seen[published] = name
        host_ports = {p.split(":")[-1].split("/")[0] for p in seen if not p.startswith("127.0.0.1:")}
        assert {"443", "8883"} <= host_ports, f"{shape}: HTTPS and MQTT/TLS must be published"
        assert not host_ports & {"1883", "5432", "8000"}, f"{shape}: internal port published: {host_ports}"


def test_no_literal_secrets_in_compose() -> None:
    secretish = re.compile(r"PASSWORD|SECRET|COOKIE|TOKEN|_KEY$")
    for name, service in SERVICES.items():
        for key, value in _env(service).items():
            if secretish.search(key) and key != "CAREWATCH_BROKER_SERVICE_PASSWD_FILE":
                assert re.fullmatch(r"\$\{[A-Z0-9_]+(:\?[^}]*)?\}", value), f"{name}: {key} is a literal"
            for url in re.findall(r"\w+://\S+", value):
                password = urlsplit(url.replace("${", "{").replace("}", "")).password
                if password is not None:
                    assert re.search(r"\$\{[A-Z0-9_]+:\?", value), f"{name}: {key} has a literal password"
    text = (ROOT / "compose.yaml").read_text()
    assert "CHANGE_ME" not in text and "changeme" not in text.lower()


def test_every_compose_variable_is_in_env_example() -> None:
    example = dict(
        line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines() if line and line[0] != "#"
    )
    text = (ROOT / "compose.yaml").read_text()
    for match in _VAR.finditer(text):
        name, op, _ = match.groups()
        if op in (":?", "?") or op is None:
            assert name in example, f"${{{name}}} is required but missing from .env.example"
    for name, value in example.items():
        if re.search(r"PASSWORD|SECRET|COOKIE|_KEY$", name):
            assert value == "CHANGE_ME", f".env.example must not carry a real {name}"
    assert set(example["COMPOSE_PROFILES"].split(",")) <= {
        p for s in SERVICES.values() for p in s.get("profiles", [])
    }


def test_mqtt_urls_use_service_accounts_and_brokers_of_their_shape() -> None:
    found = 0
    for name, url in _mqtt_urls():
        parts = urlsplit(_interpolate(url))
        assert parts.scheme == "mqtt" and parts.port == 1883, (name, url)
        brokers = {
            n
            for n in _active(
                _profiles(name) | {p for o in _profiles(name) for p in PROFILE_NEEDS.get(o, set())}
            )
            if SERVICES[n]["image"].startswith(("eclipse-mosquitto", "emqx/"))
        }
        assert parts.hostname in brokers, f"{name}: {parts.hostname} is not a broker of its shape"
        if name != "sim":  # devices bring their own credentials
            assert parts.username in broker.SERVICE_USERS, (name, parts.username)
            found += 1
    assert found >= 9


# ---------------------------------------------------------------------------------------------------
# Mosquitto (profile single)
# ---------------------------------------------------------------------------------------------------


def _mosquitto_conf() -> tuple[Path, dict[str, list[str]]]:
    mounts = dict((t, s) for s, t in _mounts(SERVICES["mosquitto"]))
    command = SERVICES["mosquitto"]["command"]
    conf_in_container = command[command.index("-c") + 1]
    path = ROOT / mounts[conf_in_container]
    options: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.strip().partition(" ")
            options.setdefault(key, []).append(value)
    return path, options


def test_mosquitto_config_is_locked_down_and_persistent() -> None:
    _, options = _mosquitto_conf()
    assert options["allow_anonymous"] == ["false"]
    assert options["persistence"] == ["true"]
    assert options["per_listener_settings"] == ["false"]
    assert sorted(options["listener"]) == ["1883", "8883"]
    assert options.get("certfile") and options.get("keyfile"), "TLS listener needs certificates"
    mosquitto_mounts = {t: s for s, t in _mounts(SERVICES["mosquitto"])}
    for key in ("certfile", "keyfile"):
        directory = str(Path(options[key][0]).parent)
        assert directory in mosquitto_mounts, f"{key} is not under a mounted folder"
    assert options["persistence_location"][0].rstrip("/") in mosquitto_mounts


def test_api_writes_the_files_mosquitto_reads() -> None:
    _, options = _mosquitto_conf()
    api_env = _env(SERVICES["api"])
    assert api_env["CAREWATCH_BROKER_PASSWD_FILE"] == options["password_file"][0]
    assert api_env["CAREWATCH_BROKER_ACL_FILE"] == options["acl_file"][0]
    assert api_env["CAREWATCH_BROKER_PID_FILE"] == options["pid_file"][0]
    broker_mounts = {t: s for s, t in _mounts(SERVICES["mosquitto"])}
    api_mounts = {t: s for s, t in _mounts(SERVICES["api"])}
    auth_dir = str(Path(options["password_file"][0]).parent)
    assert broker_mounts[auth_dir] == api_mounts[auth_dir], "api and broker must share the auth volume"
    assert not broker_mounts[auth_dir].startswith("./"), "a named volume, not a folder of the repo"
    script = (ROOT / "deploy/mosquitto/prepare-auth.sh").read_text()
    assert f'"${{MOSQUITTO_AUTH_DIR:-{auth_dir}}}"' in script


def test_mosquitto_tuning_matches_broker_py_and_is_explained() -> None:
    path, options = _mosquitto_conf()
    tuning = dict(line.split(" ", 1) for line in broker.TUNING.splitlines() if line)
    for key in (
        "max_inflight_messages",
        "max_queued_messages",
        "set_tcp_nodelay",
        "persistent_client_expiration",
        "max_packet_size",
    ):
        assert options.get(key) == [tuning[key]], f"{key}: {options.get(key)} vs broker.py {tuning[key]}"
    assert int(options["max_queued_bytes"][0]) > 0, "bound the backlog by memory in production"
    lines = path.read_text().splitlines()
    for key in ("max_inflight_messages", "max_queued_messages", "max_queued_bytes", "set_tcp_nodelay"):
        index = next(i for i, line in enumerate(lines) if line.startswith(key + " "))
        assert lines[index - 1].startswith("#"), f"{key} needs a comment saying why"
    text = path.read_text()
    for reason in ("20 unacknowledged", "1,000", "Nagle", "40 ms"):
        assert reason in text


# ---------------------------------------------------------------------------------------------------
# Profile cluster
# ---------------------------------------------------------------------------------------------------


def _by_image(profile: str, prefix: str) -> list[str]:
    return [n for n in SERVICES if profile in _profiles(n) and SERVICES[n]["image"].startswith(prefix)]


def _by_command(profile: str, command: str) -> list[str]:
    return [
        n for n in SERVICES if profile in _profiles(n) and SERVICES[n].get("command", [None])[0] == command
    ]


def test_cluster_profile_has_two_of_everything_and_a_proxy() -> None:
    emqx = _by_image("cluster", "emqx/emqx:5")
    assert len(emqx) == 2
    names = {_env(SERVICES[n])["EMQX_NODE__NAME"] for n in emqx}
    assert len(names) == 2
    for node in emqx:
        env = _env(SERVICES[node])
        seeds = set(env["EMQX_CLUSTER__STATIC__SEEDS"].strip("[]").split(","))
        assert seeds == names
        host = env["EMQX_NODE__NAME"].split("@", 1)[1]
        assert host in SERVICES[node]["networks"]["default"]["aliases"]
    for command, setting, group in (
        ("ingest", "CAREWATCH_INGEST_WORKER_ID", "CAREWATCH_INGEST_GROUP"),
        ("alerts", "CAREWATCH_ALERTS_WORKER_ID", "CAREWATCH_ALERTS_GROUP"),
    ):
        workers = _by_command("cluster", command)
        assert len(workers) == 2, command
        assert len({_env(SERVICES[w])[setting] for w in workers}) == 2, "worker ids must differ"
        assert len({_env(SERVICES[w])[group] for w in workers}) == 1, "one shared-subscription group"
        assert (
            len({urlsplit(_interpolate(_env(SERVICES[w])["CAREWATCH_MQTT_URL"])).hostname for w in workers})
            == 2
        ), "spread over both nodes"
    apis = _by_command("cluster", "api")
    assert len(apis) == 2
    assert not any("CAREWATCH_BROKER_PASSWD_FILE" in _env(SERVICES[a]) for a in apis)
    proxies = _by_image("cluster", "caddy:")
    assert len(proxies) == 1
    caddyfile = next(ROOT / s for s, t in _mounts(SERVICES[proxies[0]]) if t == "/etc/caddy/Caddyfile")
    upstreams = re.search(r"reverse_proxy ([^{]+)\{", caddyfile.read_text())
    assert upstreams
    assert sorted(upstreams.group(1).split()) == sorted(f"{a}:8000" for a in apis)


def test_single_proxy_points_at_the_api_and_streams_sse() -> None:
    caddyfile = next(ROOT / s for s, t in _mounts(SERVICES["proxy"]) if t == "/etc/caddy/Caddyfile")
    text = caddyfile.read_text()
    assert re.search(r"reverse_proxy api:8000\b", text)
    for path in (caddyfile, ROOT / "deploy/caddy/Caddyfile.cluster"):
        assert "flush_interval -1" in path.read_text(), "SSE must not be buffered"


def test_emqx_config_matches_compose_and_the_registry_hash() -> None:
    import inspect

    hocon = (ROOT / "deploy/emqx/base.hocon").read_text()
    mounts = {t: s for s, t in _mounts(SERVICES["emqx-1"])}
    assert mounts["/opt/emqx/etc/base.hocon"] == "./deploy/emqx/base.hocon"
    acl_path = re.search(r'type = file, enable = true, path = "([^"]+)"', hocon)
    assert acl_path and mounts[acl_path.group(1)] == "./deploy/emqx/acl.conf"
    for cert in re.findall(r'(?:certfile|keyfile) = "([^"]+)"', hocon):
        assert str(Path(cert).parent) in mounts
    bootstrap = re.search(r'bootstrap_file = "([^"]+)"', hocon)
    targets = [s["target"] for s in SERVICES["emqx-1"]["secrets"] if isinstance(s, dict)]
    assert bootstrap and bootstrap.group(1) in {f"/run/secrets/{t}" for t in targets}
    # EMQX_AUTHENTICATION__2__PASSWORD must land on the PostgreSQL authenticator (the 2nd in the chain)
    backends = re.findall(r"backend = (\w+)", hocon)
    assert backends[1] == "postgresql"
    assert "EMQX_AUTHENTICATION__2__PASSWORD" in _env(SERVICES["emqx-1"])
    default_iterations = inspect.signature(broker.hash_password).parameters["iterations"].default
    assert f"iterations = {default_iterations} }}" in hocon
    assert f"split_part(secret_hash, '$', 3) = '{default_iterations}'" in hocon
    acl = (ROOT / "deploy/emqx/acl.conf").read_text()
    assert acl.rstrip().endswith("{deny, all}.")
    for user in ("carewatch-ingest", "carewatch-alerts", "carewatch-api"):
        assert user.removeprefix("carewatch-") in acl
    csv = (ROOT / "deploy/emqx/service-users.csv.example").read_text().splitlines()
    assert csv[0] == "user_id,password,is_superuser"
    assert {line.split(",")[0] for line in csv[1:]} >= {
        "carewatch-ingest",
        "carewatch-alerts",
        "carewatch-api",
    }
