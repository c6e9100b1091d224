"""Prometheus metrics of a real guard worker (WORKERGUARD_METRICS_PORT), scraped over HTTP."""

from __future__ import annotations

import urllib.request
from collections import defaultdict

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import CeleryHarness, Workspace
from tests.support import cli_env, free_port, poll_for, run_cli
from workerguard.config import load_config
from workerguard.ops.metrics import GuardMetrics
from workerguard.policy.outcome import Action, Outcome
from workerguard.store.backoff import Backoff
from workerguard.workers.model import Instance

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples: Samples = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name][tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[name].get(tuple(sorted(labels.items())), float("nan"))


def reachable(port: int) -> Samples | None:
    try:
        return scrape(port)
    except OSError:
        return None


@pytest.mark.celery
def test_a_guard_worker_serves_metrics_of_its_actions_and_sweeps(workspace: Workspace,
                                                                 harness: CeleryHarness):
    workspace.add_profile(min_workers=1, max_workers=1, stop_adopted=True)
    port = free_port()
    harness.start_worker(WORKERGUARD_METRICS_PORT=str(port))
    poll_for(lambda: reachable(port), timeout=20, message="the metrics endpoint")
    mine = {"host": workspace.host_id, "profile": "demo"}

    assert harness.call("workerguard.ensure", "demo").result["action"] == "started"
    manual = workspace.hand_started()
    poll_for(lambda: manual.pid in harness.call("workerguard.status", "demo").result["running"])
    assert harness.call("workerguard.enforce", "demo").result["action"] == "stopped_extras"
    after_enforce = scrape(port)
    assert value(after_enforce, "workerguard_instances", **mine) == 1
    assert harness.call("workerguard.stop_all", "demo").result["action"] == "stopped_all"
    after_stop = scrape(port)
    assert value(after_stop, "workerguard_instances", **mine) == 0
    assert value(after_stop, "workerguard_paused", **mine) == 1
    assert harness.call("workerguard.ensure", "demo").result["action"] == "started"
    harness.client_app().send_task("workerguard.sweep")  # routed to the broadcast exchange

    def swept() -> Samples | None:
        found = scrape(port)
        count = value(found, "workerguard_sweep_duration_seconds_count", host=workspace.host_id)
        return found if count >= 1 else None

    samples = poll_for(swept, timeout=20, interval=0.1, message="a sweep in the metrics")
    assert samples is not None

    assert value(samples, "workerguard_instances", **mine) == 1
    assert value(samples, "workerguard_paused", **mine) == 0
    assert value(samples, "workerguard_backoff", **mine) == 0
    assert value(samples, "workerguard_starts_total", **mine) == 2
    assert value(samples, "workerguard_stops_total", **mine) == 2  # the extra, then stop_all
    assert value(samples, "workerguard_pauses_total", **mine) == 1
    assert value(samples, "workerguard_start_failures_total", **mine) == 0
    assert value(samples, "workerguard_min_workers", **mine) == 1
    assert value(samples, "workerguard_max_workers", **mine) == 1
    assert value(samples, "workerguard_lock_wait_seconds_count", **mine) == 4
    assert value(samples, "workerguard_lock_wait_seconds_sum", **mine) < 5
    assert value(samples, "workerguard_last_sweep_timestamp_seconds", host=workspace.host_id) > 0
    assert value(samples, "workerguard_sweep_interval_seconds", host=workspace.host_id) == 30
    assert "process_resident_memory_bytes" in samples


def test_metrics_with_prefork_are_refused_with_a_clear_message(workspace: Workspace):
    workspace.add_profile()
    config = str(workspace.write_config())
    done = run_cli("worker", "--pool", "prefork", "--config", config,
                   env=cli_env(WORKERGUARD_METRICS_PORT=str(free_port())), timeout=30)
    assert done.returncode == 2
    assert "--pool prefork" in done.stderr and "--pool threads" in done.stderr


def test_metrics_port_comes_from_the_environment_and_is_checked(workspace: Workspace):
    workspace.add_profile()
    path = workspace.write_config()
    assert load_config(path, environ={}).settings.metrics_port is None
    assert load_config(path, environ={"WORKERGUARD_METRICS_PORT": "9808"}).settings.metrics_port == 9808
    from workerguard.errors import ConfigError

    for bad in ("0", "70000", "x"):
        with pytest.raises(ConfigError, match=r"METRICS_PORT|metrics_port"):
            load_config(path, environ={"WORKERGUARD_METRICS_PORT": bad})


def result(action: Action, *, running: tuple[int, ...] = (), started: tuple[int, ...] = (),
           dry_run: bool = False, backoff: dict[str, float] | None = None,
           error: str | None = None) -> Outcome:
    return Outcome(host="h1", profile="demo", action=action, time=1000.0,
                   running=tuple(Instance("demo", pid, 100) for pid in running),
                   started=tuple(started), dry_run=dry_run, error=error,
                   backoff=Backoff(int(backoff["failures"]), backoff["next_attempt"])
                   if backoff else None)


def test_failed_starts_backoff_and_dry_runs_are_counted_right(workspace: Workspace):
    workspace.add_profile()
    metrics = GuardMetrics(workspace.config(), CollectorRegistry())
    labels = {"host": "h1", "profile": "demo"}
    metrics.acted("ensure", result("start_failed", backoff={"failures": 3, "next_attempt": 1001.0}))
    metrics.acted("ensure", result("started", started=(7,), running=(7,), dry_run=True))
    registry = metrics.registry
    assert registry.get_sample_value("workerguard_start_failures_total", labels) == 1
    assert registry.get_sample_value("workerguard_backoff", labels) == 1
    assert registry.get_sample_value("workerguard_starts_total", labels) == 0  # not the dry run
    metrics.swept([result("backoff", backoff={"failures": 4, "next_attempt": 1002.0}),
                   result("error", error="lock timeout")], 0.25, "timer")
    sweeps = {t: registry.get_sample_value("workerguard_sweeps_total", {"host": metrics.host, "trigger": t})
              for t in ("timer", "beat")}
    assert sweeps == {"timer": 1, "beat": 0}
    assert registry.get_sample_value("workerguard_errors_total", labels) == 1
    assert registry.get_sample_value("workerguard_backoff", labels) == 1
    metrics.acted("ensure", result("started", started=(8,), running=(8,)))
    assert registry.get_sample_value("workerguard_starts_total", labels) == 1
    assert registry.get_sample_value("workerguard_backoff", labels) == 0
    assert registry.get_sample_value("workerguard_instances", labels) == 1


def test_metrics_without_prometheus_client_give_an_install_hint(workspace: Workspace,
                                                                  monkeypatch: pytest.MonkeyPatch):
    import sys

    from workerguard.errors import ConfigError
    from workerguard.ops.runners import start_metrics

    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "workerguard.ops.metrics", raising=False)
    workspace.add_profile()
    workspace.guard_settings["metrics_port"] = 1
    hint = r"prometheus_client is not installed: pip install 'workerguard\[ops\]'"
    with pytest.raises(ConfigError, match=hint):
        start_metrics(workspace.config(), "threads")


@pytest.mark.celery
def test_a_guard_worker_serves_the_lease_metrics_of_a_cluster_profile(workspace: Workspace,
                                                                      harness: CeleryHarness,
                                                                      redis_client):
    from tests.cluster_bed import TIMINGS, instances

    body = workspace.sleeper_profile(scope="cluster", max_workers=1)
    del body["match"]
    workspace.profiles["demo"] = body
    workspace.cluster = dict(TIMINGS)
    port = free_port()
    harness.start_worker(WORKERGUARD_METRICS_PORT=str(port))
    mine = {"host": workspace.host_id, "profile": "demo"}
    [first] = poll_for(lambda: instances(workspace.token), timeout=60, message="the instance")

    def holding() -> Samples | None:
        found = reachable(port)
        return found if found and value(found, "workerguard_leases_held", **mine) == 1 \
            and value(found, "workerguard_lease_renewals_total", **mine, result="ok") >= 1 else None

    samples = poll_for(holding, timeout=30, message="the lease metrics")
    assert samples is not None
    assert value(samples, "workerguard_cluster_slots", **mine) == 1
    assert value(samples, "workerguard_lease_claims_total", **mine, result="won") == 1
    assert value(samples, "workerguard_fencing_token", **mine, slot="0") == first.token
    assert value(samples, "workerguard_self_fences_total", **mine, reason="lost") == 0
    redis_client.delete("workerguard:cluster:demo:slot:0")  # the lease lost behind its back
    poll_for(lambda: value(scrape(port), "workerguard_self_fences_total", **mine,
                           reason="lost") == 1, timeout=30, message="the fence counted")
    # Who sees the loss first is a race: the renewal (lease_renewals_total{result="lost"}) or
    # the claim planning's read of the holders; either way the fence is counted once.
    after = scrape(port)
    assert value(after, "workerguard_lease_renewals_total", **mine, result="lost") <= 1
    assert value(after, "workerguard_self_fences_total", **mine, reason="lost") == 1
    [again] = poll_for(lambda: [i for i in instances(workspace.token) if i.pid != first.pid],
                       timeout=60, message="the slot claimed again")
    assert again.token > first.token
