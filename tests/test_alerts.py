"""The alert rules of docs/operations.md, as written, fire on what a real guard exports.

A real ``Guard`` with its ``GuardMetrics`` hook sweeps a crash-looping profile and a paused
one; its ``/metrics`` text (``generate_latest``) becomes the input series of a
``promtool test rules`` case (Prometheus' own rule evaluator, from Debian's
``prometheus`` package), held for 20 minutes, as a guard restarted into that state would
export them. The rules are read from the document, so a rule edited there is the rule
tested here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Workspace
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
    guard = Guard(redis_client, config, hooks=[metrics])
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
