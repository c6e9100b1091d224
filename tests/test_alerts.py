"""The alert rules of docs/operations.md, as written, fire on what a real guard exports.

A real ``Guard`` with its ``GuardMetrics`` hook sweeps a crash-looping profile and a paused
one; its ``/metrics`` text (``generate_latest``) becomes the input series of a
``promtool test rules`` case (Prometheus' own rule evaluator, from Debian's
``prometheus`` package), held for 20 minutes, as a guard restarted into that state would
export them. The rules are read from the document, so a rule edited there is the rule
tested here. The cluster rules read the lease metrics of a real cluster loop (a
``ClusterLoop`` whose rounds the test runs) against the real Redis.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Workspace
from tests.support import poll_for
from workerguard.ops.metrics import GuardMetrics
from workerguard.policy.guard import Guard

DOCS = Path(__file__).resolve().parents[1] / "docs" / "operations.md"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None and not os.environ.get("CI"),
    reason="promtool not installed (Debian: apt install prometheus; CI installs it)")


def documented_rules() -> str:
    section = DOCS.read_text(encoding="utf-8").split("## What to alert on", 1)[1]
    match = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert match is not None, "docs/operations.md: no yaml block under 'What to alert on'"
    return match.group(1)


def scraped_series(registry: CollectorRegistry) -> list[dict[str, str]]:
    """Every workerguard sample as a promtool input series, its value held 20 minutes."""
    series = []
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            if not sample.name.startswith("workerguard_"):
                continue
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            series.append({"series": f"{sample.name}{{{labels}}}", "values": f"{sample.value:g}x20"})
    return series


def promtool_test(tmp_path: Path, series: list[dict[str, str]], expected: list[dict[str, Any]]) -> str:
    (tmp_path / "rules.yml").write_text(documented_rules())
    case = {"rule_files": ["rules.yml"], "evaluation_interval": "1m",
            "tests": [{"interval": "1m", "input_series": series, "alert_rule_test": expected}]}
    (tmp_path / "test.yml").write_text(json.dumps(case))  # JSON is YAML
    done = subprocess.run([PROMTOOL or "promtool", "test", "rules", "test.yml"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@needs_promtool
def test_a_crash_looping_profile_after_a_guard_restart_fires_and_a_paused_one_does_not(
        workspace: Workspace, redis_client, tmp_path: Path):
    workspace.add_profile("crashy", "--exit-code", "3", start_retries=1, backoff_max=600)
    workspace.add_profile("calm")
    config = workspace.config()
    Guard(redis_client, config).stop_all("calm", requested_by="test")  # paused before the restart
    metrics = GuardMetrics(config, CollectorRegistry())  # the restarted guard's metrics
    # a frozen clock: the second sweep is inside the 1 s backoff however long the first took
    guard = Guard(redis_client, config, hooks=[metrics], clock=lambda: 1000.0)
    results = {r.profile: r.action for r in guard.sweep(requested_by="startup")}
    assert results == {"crashy": "start_failed", "calm": "paused"}
    assert {r.profile: r.action for r in guard.sweep(requested_by="beat")}["crashy"] == "backoff"
    host = {"host": workspace.host_id}
    crashy = {**host, "profile": "crashy"}
    promtool_test(tmp_path, scraped_series(metrics.registry), [
        {"eval_time": "10m", "alertname": "WorkerguardBelowMin", "exp_alerts": [{"exp_labels": crashy}]},
        {"eval_time": "15m", "alertname": "WorkerguardBackoff", "exp_alerts": [{"exp_labels": crashy}]},
        {"eval_time": "10m", "alertname": "WorkerguardAboveMax", "exp_alerts": []},
    ])


@needs_promtool
def test_a_guard_that_never_sweeps_fires_no_sweep(workspace: Workspace, tmp_path: Path):
    workspace.add_profile()
    workspace.guard_settings["sweep_interval"] = 60
    metrics = GuardMetrics(workspace.config(), CollectorRegistry())
    series = scraped_series(metrics.registry)
    [stamp] = [s for s in series if s["series"].startswith("workerguard_last_sweep_timestamp_seconds")]
    # promtool's clock starts at 0: the guard started then, and never swept
    stamp["values"] = "0x20"
    promtool_test(tmp_path, series, [
        {"eval_time": "2m", "alertname": "WorkerguardNoSweep", "exp_alerts": []},
        {"eval_time": "4m", "alertname": "WorkerguardNoSweep",
         "exp_alerts": [{"exp_labels": {"host": workspace.host_id}}]},
    ])


@pytest.fixture
def cluster_loop(workspace: Workspace, redis_client) -> Iterator[Callable[[int], tuple[Any, GuardMetrics]]]:
    """A real cluster loop (no thread: a test runs its rounds) of a guard whose only
    profile is the cluster profile ``demo`` of ``slots`` slots, at most one per host, with
    its ``GuardMetrics`` hook: this one host can hold only one slot. Its lease files go
    at the end."""
    from tests.cluster_bed import TIMINGS
    from workerguard.ops.cluster_loop import ClusterLoop
    from workerguard.workers.leashed import lease_dir

    def make(slots: int) -> tuple[Any, GuardMetrics]:
        body = workspace.sleeper_profile(scope="cluster", max_workers=slots)
        del body["match"]  # a cluster profile cannot adopt
        workspace.profiles["demo"] = body
        workspace.cluster = dict(TIMINGS)
        config = workspace.config()
        metrics = GuardMetrics(config, CollectorRegistry())
        loop = ClusterLoop(config, redis_client, heal=lambda profile, why: None, hooks=[metrics])
        return loop, metrics

    yield make
    shutil.rmtree(lease_dir(workspace.config().settings.runtime_dir, workspace.host_id),
                  ignore_errors=True)


def _holding(loop: Any, count: int) -> None:
    poll_for(lambda: loop.round() is not None and sum(
        len(loop.leases.held(p.name)) for p in loop.profiles) == count,
        timeout=30, interval=0.1, message=f"the loop to hold {count} slot(s)")


@needs_promtool
def test_a_cluster_profile_below_n_fires_and_a_full_or_stopped_one_does_not(
        workspace: Workspace, redis_client, cluster_loop, tmp_path: Path):
    loop, metrics = cluster_loop(2)
    _holding(loop, 1)  # max_per_host 1: the second slot needs another host
    below = scraped_series(metrics.registry)
    demo = {"profile": "demo"}  # summed over the fleet: the host label is gone
    promtool_test(tmp_path, below, [
        {"eval_time": "1m", "alertname": "WorkerguardClusterBelowN", "exp_alerts": []},
        {"eval_time": "3m", "alertname": "WorkerguardClusterBelowN",
         "exp_alerts": [{"exp_labels": demo}]},
        {"eval_time": "10m", "alertname": "WorkerguardSelfFenced", "exp_alerts": []},
    ])
    # a second host holding the other slot: the same series under another host label
    other = [{**s, "series": s["series"].replace(workspace.host_id, "other-host")} for s in below]
    promtool_test(tmp_path, below + other, [
        {"eval_time": "10m", "alertname": "WorkerguardClusterBelowN", "exp_alerts": []}])
    redis_client.set("workerguard:cluster:demo:paused", "1")  # `workerguard stop demo`
    loop.round()
    paused = scraped_series(metrics.registry)
    assert {"series": f'workerguard_cluster_paused{{host="{workspace.host_id}",profile="demo"}}',
            "values": "1x20"} in paused
    promtool_test(tmp_path, paused, [
        {"eval_time": "10m", "alertname": "WorkerguardClusterBelowN", "exp_alerts": []}])


@needs_promtool
def test_a_lease_lost_behind_the_holders_back_fires_self_fenced(workspace: Workspace,
                                                                redis_client, cluster_loop,
                                                                tmp_path: Path):
    loop, metrics = cluster_loop(1)
    _holding(loop, 1)
    before = scraped_series(metrics.registry)
    redis_client.delete("workerguard:cluster:demo:slot:0")  # the lease gone: fenced at once
    fences = metrics.self_fences.labels(workspace.host_id, "demo", "lost")
    poll_for(lambda: loop.round() is not None and fences._value.get() == 1, timeout=30,
             interval=0.1, message="the fence counted")
    after = {s["series"]: s["values"] for s in scraped_series(metrics.registry)}
    # 5 minutes as before the loss, then 15 as after: the counter's step falls at minute 5
    series = [{"series": s["series"], "values": f"{s['values'].split('x')[0]}x4 "
               f"{after[s['series']].split('x')[0]}x15"} for s in before if s["series"] in after]
    mine = {"host": workspace.host_id, "profile": "demo", "reason": "lost"}
    assert any(s["series"].startswith("workerguard_self_fences_total")
               and s["series"].endswith('reason="lost"}') and s["values"] == "0x4 1x15"
               for s in series), series
    promtool_test(tmp_path, series, [
        {"eval_time": "4m", "alertname": "WorkerguardSelfFenced", "exp_alerts": []},
        {"eval_time": "8m", "alertname": "WorkerguardSelfFenced",
         "exp_alerts": [{"exp_labels": mine}]},
    ])
