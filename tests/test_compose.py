"""docker-compose.yml, checked without a Docker engine: its structure, and that every
command it runs is the one docs/operations.md documents and works outside Docker too."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from tests.support import cli_env, run_cli
from workerguard.cli import main

ROOT = Path(__file__).resolve().parent.parent
IMAGE_ROOT = "/app"  # the Dockerfile's WORKDIR: the repository is copied there
ENV = {"REDIS_PASSWORD": "0123abcd", "FLOWER_USER": "ops", "FLOWER_PASSWORD": "pw-flower"}
_VARIABLE = re.compile(r"\$\{(\w+)(?::([-?])([^}]*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}`` and ``$$``."""
    def value(m: re.Match[str]) -> str:
        name, op, arg = m.groups()
        if env.get(name):
            return env[name]
        if op == "?":
            raise KeyError(f"{name}: {arg}")
        return arg if op == "-" else ""

    return _VARIABLE.sub(value, text).replace("$$", "$")


def compose(env: dict[str, str] = ENV) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(interpolate((ROOT / "docker-compose.yml").read_text(), env))
    return loaded


def local_env(service: dict[str, Any]) -> dict[str, str]:
    """The service's environment, with image paths mapped to this checkout."""
    return cli_env(**{k: str(v).replace(IMAGE_ROOT + "/", f"{ROOT}/")
                      for k, v in service.get("environment", {}).items()})


def parses(argv: list[str]) -> None:
    """``argv`` is a valid ``workerguard`` command line (parsed by click, not run)."""
    assert argv[0] == "workerguard", argv
    with click.Context(main, info_name="workerguard") as ctx:
        command = main.get_command(ctx, argv[1])
        assert command is not None, argv
        with command.make_context(argv[1], argv[2:], parent=ctx):
            pass


def test_services_redis_guard_one_beat_and_flower():
    services = compose()["services"]
    assert set(services) == {"redis", "guard", "beat", "flower"}
    redis, guard, beat, flower = (services[n] for n in ("redis", "guard", "beat", "flower"))

    assert "--appendonly yes" in redis["command"][-1]
    assert '--requirepass "$REDIS_PASSWORD"' in redis["command"][-1]
    assert redis["environment"]["REDIS_PASSWORD"] == ENV["REDIS_PASSWORD"]
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]  # REDISCLI_AUTH
    assert redis["environment"]["REDISCLI_AUTH"] == ENV["REDIS_PASSWORD"]
    assert redis["ports"] == ["127.0.0.1:6379:6379"]

    for service in (guard, beat, flower):
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        assert service["environment"]["WORKERGUARD_REDIS_URL"] == "redis://:0123abcd@redis:6379/0"
        assert service["init"] is True  # spawned processes are reaped
        assert "deploy" not in service and "scale" not in service
    assert [n for n, s in services.items() if "beat" in s.get("command", [])] == ["beat"]
    assert guard["command"] == ["workerguard", "worker"]
    assert guard["healthcheck"]["test"][:3] == ["CMD", "workerguard", "ping"]
    assert guard["environment"]["WORKERGUARD_METRICS_PORT"] == "9808"
    assert guard["ports"] == ["127.0.0.1:9808:9808"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"] == "ops:pw-flower"
    assert all(p.startswith("127.0.0.1:") for p in flower["ports"])

    text = (ROOT / "docker-compose.yml").read_text()
    assert not re.search(r"redis://:[^$]", text), "passwords come from variables, never literals"


def test_a_password_is_required():
    with pytest.raises(KeyError, match="REDIS_PASSWORD"):
        compose({"FLOWER_PASSWORD": "x"})
    with pytest.raises(KeyError, match="FLOWER_PASSWORD"):
        compose({"REDIS_PASSWORD": "x"})


def test_every_command_is_the_one_the_docs_document_and_parses():
    page = (ROOT / "docs" / "operations.md").read_text()
    services = compose()["services"]
    commands = [s["command"] for n, s in services.items() if n != "redis"]
    commands.append(services["guard"]["healthcheck"]["test"][1:])
    for argv in commands:
        assert f"\n{' '.join(argv)}" in page, f"docs/operations.md does not document {' '.join(argv)!r}"
        parses(argv)
    with pytest.raises(click.UsageError):
        parses(["workerguard", "worker", "--pool", "gevent"])  # the check can fail


def test_the_compose_config_passes_check_outside_docker(tmp_path):
    guard = compose()["services"]["guard"]
    env = local_env(guard)
    assert env["WORKERGUARD_CONFIG"] == f"{ROOT}/examples/compose.toml"
    env["WORKERGUARD_HOME"] = str(tmp_path)  # the image's /var/lib/workerguard
    done = run_cli("check", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith("ok\n")
    assert "redis: redis://:***@redis:6379/0" in done.stdout  # the password never shows
    assert "host_id: compose" in done.stdout
    assert "demo: python3 demo_worker.py  workers 1..1" in done.stdout
    assert (ROOT / "examples" / "demo_worker.py").exists()


def test_the_dockerfile_matches_the_compose_paths():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"WORKDIR {IMAGE_ROOT}" in dockerfile
    assert "COPY examples ./examples" in dockerfile
    assert "'.[ops]'" in dockerfile  # Flower, prometheus-client, rich
    assert f"WORKERGUARD_CONFIG={IMAGE_ROOT}/examples/compose.toml" in dockerfile
