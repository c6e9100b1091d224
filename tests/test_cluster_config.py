"""Cluster-scoped profiles in the config (issue 20): the ``[cluster]`` table with
Kubernetes' defaults, the profile keys, the validators (the timing inequality with its
numbers, two renewals before fencing, no ``match``, min = max, a shared Redis), and
``workerguard check`` printing the margin. Per-host profiles are unchanged."""

from __future__ import annotations

import importlib.util
import re
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest
import redis

from tests.conftest import Workspace
from tests.support import HERE, cli_env, run_cli
from workerguard.config import parse_config
from workerguard.config.load import Config
from workerguard.config.schema import ClusterSettings, Profile
from workerguard.errors import ConfigError, InvalidRequest

REDIS = '[guard]\nredis_url = "redis://127.0.0.1:6399/0"\n'
SCRAPER = '[profiles.scraper]\ncommand = ["python3", "-m", "scraper"]\nscope = "cluster"\n'


def _load(body: str) -> Config:
    return parse_config(tomllib.loads(body), "wg.toml", environ={})


def _error(body: str) -> str:
    with pytest.raises(ConfigError) as info:
        _load(body)
    return str(info.value)


def test_the_cluster_table_defaults_are_kubernetes_leader_election_with_its_margin():
    cluster = ClusterSettings()
    assert (cluster.lease_seconds, cluster.renew_deadline, cluster.renew_period) == (15, 10, 2)
    assert (cluster.kill_budget, cluster.clock_drift, cluster.claim_stagger) == (1, 0.01, 0.25)
    timing = cluster.timing()
    assert timing.overlap_bound() == pytest.approx(11.21, abs=0.01)
    assert timing.margin() == pytest.approx(3.79, abs=0.01)


def test_a_cluster_profile_runs_all_its_slots_at_most_one_per_host_by_default():
    config = _load(REDIS + SCRAPER + "max_workers = 3\nhosts = ['scrape-01', 'scrape-0[2-5]']\n")
    scraper = config.profile("scraper")
    assert scraper.is_cluster and (scraper.min_workers, scraper.max_workers) == (3, 3)
    assert (scraper.max_per_host, scraper.guarantee) == (1, "at_most")
    assert scraper.hosts == ("scrape-01", "scrape-0[2-5]")
    assert config.timing(scraper) == config.cluster.timing()


def test_a_profile_may_have_its_own_lease_and_renew_deadline():
    config = _load(REDIS + "[cluster]\nrenew_period = 1.0\n" + SCRAPER
                   + "lease_seconds = 30.0\nrenew_deadline = 20.0\nguarantee = 'at_least'\n")
    timing = config.timing(config.profile("scraper"))
    assert (timing.lease, timing.renew_deadline, timing.renew_period) == (30, 20, 1)
    assert config.profile("scraper").guarantee == "at_least"


def test_per_host_profiles_are_unchanged_and_refuse_the_cluster_keys():
    config = _load('[profiles.rpa]\ncommand = ["x"]\nmin_workers = 2\n')
    rpa = config.profile("rpa")
    assert rpa.scope == "host" and not rpa.is_cluster and (rpa.min_workers, rpa.max_workers) == (2, 2)
    for line in ('hosts = ["a"]', "max_per_host = 2", 'guarantee = "at_least"', "lease_seconds = 20.0",
                 "renew_deadline = 5.0"):
        key = line.split()[0]
        assert _error(f'[profiles.rpa]\ncommand = ["x"]\n{line}\n') == (
            f'wg.toml: profile \'rpa\': {key}: is only used with scope = "cluster"')


@pytest.mark.parametrize(("table", "field", "numbers"), [
    ("lease_seconds = 10.0\nrenew_deadline = 9.0", "lease_seconds",
     "10 must exceed (1+0.01)*(9/(1-0.01)+1) = 10.19 s"),
    ("clock_drift = 0.2", "lease_seconds", "= 16.20 s (inequality I"),
    ("renew_period = 4.0", "renew_deadline", "10 must be at least 2*renew_period + the lease "
                                             "client's socket timeout = 12 s"),
])
def test_cluster_timings_that_break_the_inequality_are_refused_with_their_numbers(
        table: str, field: str, numbers: str):
    text = _error(REDIS + f"[cluster]\n{table}\n")  # refused even before a cluster profile
    assert text.startswith(f"wg.toml: [cluster]: {field}: ") and numbers in text, text
    assert len(text.splitlines()) == 1


def test_a_profiles_own_timings_are_checked_with_the_fleets():
    text = _error(REDIS + SCRAPER + "lease_seconds = 8.0\n")
    assert text.startswith("wg.toml: profile 'scraper': lease_seconds: 8 must exceed"), text
    text = _error(REDIS + SCRAPER + "renew_deadline = 14.0\n")
    assert text.startswith("wg.toml: profile 'scraper': lease_seconds: 15 ([cluster]'s, with this "
                           "profile's own timings) must exceed"), text


@pytest.mark.parametrize(("extra", "line"), [
    ('match = "scraper"', "profile 'scraper': match: cannot be used with scope = \"cluster\""),
    ("max_workers = 2\nmin_workers = 1", "profile 'scraper': min_workers: must equal max_workers (2)"),
    ('hosts = ["scrape 01"]', "profile 'scraper': hosts: must be a list of host_id patterns"),
    ("max_per_host = 0", "profile 'scraper': max_per_host: must be > 0"),
    ('guarantee = "exactly"', "profile 'scraper': guarantee: must be one of at_most, at_least"),
    ('scope = "fleet"', "profile 'scraper': scope: must be one of host, cluster"),
])
def test_a_bad_cluster_profile_is_refused_naming_its_field(extra: str, line: str):
    body = REDIS + SCRAPER.replace('scope = "cluster"\n', "" if "scope" in extra else 'scope = "cluster"\n')
    assert line in _error(body + extra + "\n")


def test_a_cluster_profile_needs_a_redis_every_host_reaches():
    assert _error(SCRAPER) == ("wg.toml: profile 'scraper': scope: \"cluster\" needs a Redis every "
                               "host reaches: set [guard] redis_url (the embedded server serves one "
                               "host only)")


def test_a_cluster_profile_is_refused_on_windows(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(sys, "platform", "win32")
    assert "profile 'scraper': scope: \"cluster\" needs a POSIX host" in _error(REDIS + SCRAPER)


def test_a_misspelt_cluster_key_is_suggested_though_not_listed():
    text = _error(REDIS + SCRAPER + "max_per_hots = 2\n")
    assert text.endswith("did you mean max_per_host?") and "guarantee" not in text


def test_check_prints_the_inequality_and_its_margin(tmp_path: Path):
    path = tmp_path / "wg.toml"
    path.write_text(REDIS + SCRAPER + "max_workers = 2\n" + '[profiles.rpa]\ncommand = ["x"]\n')
    done = run_cli("check", "--config", str(path), env=cli_env())
    assert done.returncode == 0, done.stderr
    assert "scraper: python3 -m scraper  cluster: 2 across every host that has it" in done.stdout
    assert ("inequality (I): (1+0.01)*(10/(1-0.01)+1) = 11.21 s < lease 15 s, margin 3.79 s: ok"
            in done.stdout)
    assert "rpa: x  workers 1..1  keep=newest" in done.stdout  # a per-host profile as before


@pytest.mark.parametrize(("body", "place"), [
    pytest.param(REDIS + "[cluster]\nlease_seconds = 11.0\n" + SCRAPER,
                 r"\[cluster\]: lease_seconds: 11 must exceed \(1\+0\.01\)\*\(10/\(1-0\.01\)\+1\) = "
                 r"11\.21 s .* margin -0\.21 s", id="inequality I"),
    pytest.param(REDIS + SCRAPER + "lease_seconds = 8.0\n",
                 r"profile 'scraper': lease_seconds: 8 must exceed .* = 11\.21 s .* margin -3\.21 s",
                 id="inequality I, the profile's own L"),
    pytest.param(REDIS + "[cluster]\nrenew_period = 4.0\n" + SCRAPER,
                 r"\[cluster\]: renew_deadline: 10 must be at least 2\*renew_period \+ the lease "
                 r"client's socket timeout = 12 s .*", id="D < 2P + timeout"),
    pytest.param(REDIS + SCRAPER + 'match = "scraper"\n',
                 r"profile 'scraper': match: cannot be used with scope = \"cluster\".*", id="match"),
    pytest.param(REDIS + SCRAPER + "max_workers = 2\nmin_workers = 1\n",
                 r"profile 'scraper': min_workers: must equal max_workers \(2\).*", id="min != max"),
    pytest.param(SCRAPER, r"profile 'scraper': scope: \"cluster\" needs a Redis every host "
                          r"reaches: set \[guard\] redis_url .*", id="embedded Redis"),
    pytest.param('[profiles.rpa]\ncommand = ["x"]\nmax_per_host = 2\n',
                 r"profile 'rpa': max_per_host: is only used with scope = \"cluster\"",
                 id="a cluster key on a per-host profile"),
])
def test_check_exits_2_with_one_line_naming_the_field(tmp_path: Path, body: str, place: str):
    """FLEET check F9: each violation, through the command line. (Windows, refused too,
    cannot run here: ``test_a_cluster_profile_is_refused_on_windows`` checks its line.)"""
    path = tmp_path / "wg.toml"
    path.write_text(body)
    done = run_cli("check", "--config", str(path), env=cli_env())
    assert done.returncode == 2, done
    assert re.fullmatch(rf"error: {re.escape(str(path))}: {place}\n", done.stderr), done.stderr


def test_check_gives_the_sentinel_timing_that_keeps_instances_through_a_failover(tmp_path: Path):
    path = tmp_path / "wg.toml"
    path.write_text('[guard]\nredis_url = "sentinel://10.0.0.1:26379;sentinel://10.0.0.2:26379/0"\n'
                    'sentinel_master = "wg"\nidentity = "registry"\n' + SCRAPER)
    done = run_cli("check", "--config", str(path), env=cli_env())
    assert done.returncode == 0, done.stderr
    assert "sentinel: down-after-milliseconds <= 6000" in done.stdout
    assert "warning: [cluster] replicas = 0 with Sentinel" in done.stdout
    assert 'warning: identity = "registry"' in done.stdout


def test_a_guard_starts_a_cluster_profile_only_for_a_slot_it_holds(workspace: Workspace,
                                                                   redis_client: redis.Redis):
    workspace.add_profile("solo", scope="cluster", max_workers=1)
    del workspace.profiles["solo"]["match"]  # a cluster profile cannot adopt
    guard = workspace.guard(redis_client)  # no cluster loop here: no lease is ever held
    assert guard.ensure("solo").started == ()
    [outcome] = guard.sweep()
    assert outcome.error is None and outcome.started == ()
    assert workspace.running("solo") == []
    with pytest.raises(InvalidRequest, match="run exactly max_workers"):
        guard.enforce("solo")


# the generated reference ---------------------------------------------------------------
@pytest.fixture(scope="module")
def reference() -> str:
    path = HERE.parent / "docs" / "hooks" / "config_reference.py"
    spec = importlib.util.spec_from_file_location("hook", path)
    assert spec is not None and spec.loader is not None
    hook: ModuleType = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    text: str = hook.reference_markdown()
    return text


@pytest.mark.parametrize("key", list(ClusterSettings.model_fields))
def test_every_cluster_key_is_in_the_reference_with_its_docstring(reference: str, key: str):
    section = reference[reference.index("## `[cluster]`"):]
    row = re.search(rf"^\| `{key}` \|(.*)\|$", section, re.M)
    assert row, key
    assert "(no docstring)" not in row.group(1)


def test_the_cluster_keys_of_a_profile_are_in_the_reference(reference: str):
    section = reference[reference.index("## `[profiles.NAME]`"):reference.index("## `[cluster]`")]
    for key in ("scope", "hosts", "max_per_host", "guarantee", "lease_seconds", "renew_deadline"):
        assert re.search(rf"^\| `{key}` \|", section, re.M), key
    assert set(Profile.UNLISTED_KEYS) <= set(Profile.model_fields)
