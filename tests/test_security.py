"""Redis AUTH and TLS for broker, backend and lock; secrets never shown."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import trustme

from tests.conftest import CeleryHarness, Workspace
from tests.support import (
    HERE,
    RedisServer,
    cli_env,
    free_port,
    poll_for,
    redis_in_tmpdir,
    run_cli,
)
from workerguard.ops.connect import endpoint

PASSWORD = "s3cret-Pa55-word"


@pytest.fixture
def secure_redis(workspace: Workspace) -> Iterator[RedisServer]:
    with redis_in_tmpdir("wg-auth-", password=PASSWORD) as server:
        workspace.redis_url = server.url
        yield server


@pytest.fixture
def tls_url(workspace: Workspace, secure_redis: RedisServer, tmp_path: Path) -> str:
    """rediss:// through a TLS terminator in front of the password-protected server."""
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    ca_pem, cert_pem, key_pem = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    cert.cert_chain_pems[0].write_to_path(str(cert_pem))
    cert.private_key_pem.write_to_path(str(key_pem))
    port = free_port()
    proxy = workspace.tracker.popen(
        [sys.executable, str(HERE / "tls_proxy.py"), str(cert_pem), str(key_pem), str(port),
         str(secure_redis.port)], stdout=subprocess.PIPE, text=True)
    assert proxy.stdout is not None and proxy.stdout.readline().strip() == "ready"
    url = (f"rediss://:{PASSWORD}@localhost:{port}/0"
           f"?ssl_cert_reqs=required&ssl_ca_certs={ca_pem}")
    workspace.redis_url = url
    return url


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        assert PASSWORD not in text


def test_auth_protects_lock_state_broker_and_backend_and_the_password_never_shows(
        workspace: Workspace, harness: CeleryHarness, secure_redis: RedisServer):
    workspace.add_profile()
    config = str(workspace.write_config())
    check = run_cli("check", "--config", config, env=cli_env())
    assert check.returncode == 0 and ":***@127.0.0.1" in check.stdout
    local = run_cli("ensure", "demo", "--local", "--json", "--config", config, env=cli_env())
    assert local.returncode == 0, local.stderr
    [pid] = json.loads(local.stdout)["started"]
    harness.start_worker()
    remote = run_cli("ensure", "demo", "--config", config, env=cli_env())
    assert remote.returncode == 0 and f"already running (PIDs: {pid})" in remote.stdout
    assert_no_secret(check.stdout, check.stderr, local.stdout, local.stderr, remote.stdout,
                     remote.stderr, harness.log_tail(1_000_000))
    assert_no_secret(*psutil.Process(pid).environ().values())  # the worker never sees it


def test_a_wrong_password_is_a_clear_failure_that_touches_nothing(workspace: Workspace,
                                                                  secure_redis: RedisServer):
    workspace.add_profile()
    manual = [workspace.hand_started() for _ in range(2)]
    workspace.redis_url = secure_redis.url.replace(PASSWORD, "wrong-" + PASSWORD)
    done = run_cli("enforce", "demo", "--local", "--config", str(workspace.write_config()),
                   env=cli_env())
    assert done.returncode == 1
    assert f"redis unreachable at {endpoint(workspace.redis_url)} (AuthenticationError)" in done.stderr
    assert_no_secret(done.stdout, done.stderr)
    assert all(p.poll() is None for p in manual)


def test_tls_carries_lock_state_broker_and_backend(workspace: Workspace, harness: CeleryHarness,
                                                   tls_url: str):
    workspace.add_profile()
    config = str(workspace.write_config())
    local = run_cli("ensure", "demo", "--local", "--json", "--config", config, env=cli_env())
    assert local.returncode == 0, local.stderr
    [pid] = json.loads(local.stdout)["started"]
    harness.start_worker()
    remote = run_cli("status", "--json", "--config", config, env=cli_env())
    assert remote.returncode == 0, remote.stderr
    assert json.loads(remote.stdout)["running"] == [pid]
    assert_no_secret(local.stdout, local.stderr, remote.stdout, remote.stderr,
                     harness.log_tail(1_000_000))


def test_inspect_conf_and_flower_s_worker_page_show_no_password_and_no_profile_env(
        workspace: Workspace, harness: CeleryHarness, secure_redis: RedisServer):
    from tests.test_flower import PASSWORD as FLOWER_PASSWORD
    from tests.test_flower import USER

    token = "env-token-0f3c9"
    workspace.add_profile(env={"API_TOKEN": token})
    harness.start_worker()
    conf = harness.client_app().control.inspect(destination=[harness.node], timeout=5).conf(
        with_defaults=True)
    shown = json.dumps(conf)
    assert harness.node in conf and "broker_url" in shown
    assert PASSWORD not in shown and token not in shown and "workerguard_" not in shown

    port = free_port()
    flower = workspace.tracker.popen(
        [sys.executable, "-m", "workerguard.cli", "flower", "--config", str(workspace.config_path),
         "--port", str(port), f"--basic-auth={USER}:{FLOWER_PASSWORD}"], env=cli_env())
    page = poll_for(lambda: flower.poll() is None and _worker_page(port, harness.node),
                    timeout=60, interval=0.5, message="Flower's worker page")
    assert isinstance(page, str) and "broker_url" in page  # the Config tab is there ...
    assert PASSWORD not in page and token not in page  # ... without the secrets


def _worker_page(port: int, node: str) -> str | None:
    import base64
    import urllib.error
    import urllib.request

    from tests.test_flower import PASSWORD as FLOWER_PASSWORD
    from tests.test_flower import USER

    request = urllib.request.Request(f"http://127.0.0.1:{port}/worker/{node}")
    token = base64.b64encode(f"{USER}:{FLOWER_PASSWORD}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return str(response.read().decode())
    except (urllib.error.URLError, OSError):
        return None


def test_every_queued_command_with_a_wrong_password_prints_one_line_and_exits_1(
        workspace: Workspace, secure_redis: RedisServer):
    workspace.add_profile()
    workspace.redis_url = secure_redis.url.replace(PASSWORD, "wrong-" + PASSWORD)
    config, config_url = str(workspace.write_config()), workspace.redis_url
    for command in [("status",), ("ensure", "demo"), ("enforce", "demo"), ("stop", "demo"),
                    ("ping",), ("reload",)]:
        done = run_cli(*command, "--config", config, env=cli_env(), timeout=30)
        assert done.returncode == 1, (command, done.stderr)
        assert done.stderr == f"error: redis unreachable at {endpoint(config_url)} (AuthenticationError)\n", \
            command
        assert_no_secret(done.stdout, done.stderr)


@pytest.mark.celery
def test_a_failed_request_says_what_failed_but_shows_no_traceback_or_path(
        workspace: Workspace, harness: CeleryHarness, redis_client):
    from workerguard.tasks.caller_errors import HIDDEN

    workspace.add_profile("demo", "--exit-code", "3")  # a worker that fails at start
    harness.start_worker()
    watched = harness.watch_events()
    failed = harness.call("workerguard.ensure", "demo")
    assert failed.state == "FAILURE" and "start failed" in str(failed.result)
    meta = json.loads(redis_client.get(f"celery-task-meta-{failed.id}"))
    assert meta["traceback"] == HIDDEN
    for shown in (json.dumps(meta), json.dumps(poll_for(
            lambda: watched.of("workerguard.ensure", "task-failed"), message="the failed event"))):
        assert "site-packages" not in shown and 'File \\"' not in shown
        assert str(workspace.config_path) not in shown and str(Path(__file__).parent.parent) not in shown
