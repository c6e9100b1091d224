"""The documentation: a short README, a configuration reference generated from the models
(every key documented), and a site that builds with warnings as errors.

The reference is written by the MkDocs hook docs/hooks/config_reference.py; these tests
import it by path (docs/ is not a package) and need no MkDocs. The build test needs it:
it skips without MkDocs, except in CI (``CI`` set), which installs the docs extra and
where a skip would hide a broken site.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from workerguard.config.schema import ENV_PREFIX, Profile, Settings
from workerguard.probes.spec import AnyProbe

ROOT = Path(__file__).resolve().parent.parent
HOOK = ROOT / "docs" / "hooks" / "config_reference.py"
README = ROOT / "README.md"
README_LIMIT = 250
"""Lines: what a newcomer reads before the docs take over (issue 18)."""


@pytest.fixture(scope="module")
def hook() -> ModuleType:
    spec = importlib.util.spec_from_file_location("config_reference_hook", HOOK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def reference(hook: ModuleType) -> str:
    text: str = hook.reference_markdown()
    return text


def _section(text: str, heading: str) -> str:
    """The part of ``text`` under the ``## heading`` up to the next ``## ``."""
    start = text.index(f"## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else None]


def _row(section: str, key: str) -> list[str]:
    found = re.search(rf"^\| `{re.escape(key)}` \|(.*)\|$", section, re.M)
    assert found, f"no row for {key!r}"
    return [cell.strip() for cell in found.group(1).split(" | ")]


@pytest.mark.parametrize("key", list(Settings.model_fields))
def test_every_guard_setting_is_in_the_reference_with_its_variable_and_docstring(
        hook: ModuleType, reference: str, key: str):
    row = _row(_section(reference, "`[guard]`"), key)
    assert f"`{ENV_PREFIX}{key.upper()}`" in row
    assert row[-1] not in ("", hook.NO_DESCRIPTION), f"[guard] {key}: write its attribute docstring"


@pytest.mark.parametrize("key", list(Profile.model_fields))
def test_every_profile_key_is_in_the_reference_with_its_docstring(
        hook: ModuleType, reference: str, key: str):
    row = _row(_section(reference, "`[profiles.NAME]`"), key)
    assert row[-1] not in ("", hook.NO_DESCRIPTION), f"profile {key}: write its attribute docstring"


def test_every_probe_key_is_in_the_reference(reference: str):
    probes = _section(reference, "`[profiles.NAME.probe]`")
    for kind in AnyProbe.__args__:
        for key in kind.model_fields:
            assert re.search(rf"^\| `{key}` \|", probes, re.M), f"{kind.__name__}.{key}"


def test_the_reference_shows_defaults_and_bounds(reference: str):
    guard, profile = _section(reference, "`[guard]`"), _section(reference, "`[profiles.NAME]`")
    assert _row(guard, "lock_expire")[:3] == ["integer", "`10`", "> 0"]
    assert _row(profile, "max_workers")[2] == ">= 1; <= 1000"
    assert "one of `\"newest\"`, `\"oldest\"`" in _row(profile, "keep")[2]
    assert _row(profile, "command")[1] == "required"


def test_a_field_without_a_docstring_is_shown_as_such(hook: ModuleType):
    from pydantic import BaseModel

    class Documented(BaseModel):
        told: int = 1
        """Documented."""
        untold: int = 2

    rows = hook._table(Documented, Documented.model_json_schema())
    assert rows[2].endswith("| Documented. |")
    assert rows[3].endswith(f"| {hook.NO_DESCRIPTION} |")


def test_the_callers_page_gets_the_readme_snippets_as_tested(hook: ModuleType):
    readme = README.read_text(encoding="utf-8")
    copied = hook.snippets_markdown(readme)
    blocks = re.findall(r"<!-- snippet: [\w-]+ -->\n(```.*?```)", readme, re.S)
    assert len(blocks) == 3
    assert all(block in copied for block in blocks)
    assert hook.SNIPPETS_MARK in (ROOT / "docs" / "callers.md").read_text(encoding="utf-8")
    assert hook.REFERENCE_MARK in (ROOT / "docs" / "config-reference.md").read_text(encoding="utf-8")


def test_the_readme_stays_short_and_keeps_the_two_commands():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) < README_LIMIT
    assert "workerguard up --config examples/workerguard.toml" in text
    assert "\npython -m pytest -q " in text  # the command CI runs


def test_every_page_is_in_the_nav():
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    pages = {p.name for p in (ROOT / "docs").glob("*.md")}
    listed = set(re.findall(r"^  - [^:]+: (\S+\.md)$", nav, re.M))
    assert listed == pages


def test_the_site_builds_with_warnings_as_errors(tmp_path: Path):
    if importlib.util.find_spec("mkdocs") is None:
        if os.environ.get("CI"):
            pytest.fail("CI installs the docs extra (pip install -e '.[docs]'): mkdocs is missing")
        pytest.skip("mkdocs is not installed: pip install -e '.[docs]'")
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                          cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    reference = (site / "config-reference" / "index.html").read_text(encoding="utf-8")
    assert "WORKERGUARD_REDIS_URL" in reference and "generated: config reference" not in reference
    callers = (site / "callers" / "index.html").read_text(encoding="utf-8")
    assert "send_task" in callers and "generated: README snippets" not in callers


def _cluster_toml_blocks(text: str) -> list[str]:
    return [b for b in re.findall(r"```toml\n(.*?)```", text, re.S) if 'scope = "cluster"' in b]


def test_the_fleet_config_snippets_load_and_the_figures_derived_from_them_are_right():
    """The cluster configuration of the README's Fleet chapter (with the ``redis_url`` its
    deploy line asks for) and of docs/fleet.md load as written; the figures the two pages
    derive from the default timings are the ones the code computes."""
    import tomllib

    from workerguard.config.load import parse_config

    readme = README.read_text(encoding="utf-8")
    fleet = (ROOT / "docs" / "fleet.md").read_text(encoding="utf-8")
    [in_readme], [in_fleet] = _cluster_toml_blocks(readme), _cluster_toml_blocks(fleet)
    guard = '[guard]\nredis_url = "redis://redis.internal:6379/0"\n'
    for where, block in (("README.md", guard + in_readme), ("docs/fleet.md", in_fleet)):
        config = parse_config(tomllib.loads(block), where, environ={})
        [profile] = config.profiles.values()
        assert (profile.scope, profile.max_workers) == ("cluster", 1), where
        timing = config.timing(profile)
        assert (timing.lease, timing.renew_deadline, timing.renew_period) == (15, 10, 2), where

    cluster, stop_timeout = config.cluster, profile.stop_timeout
    rho, lease, deadline = cluster.clock_drift, cluster.lease_seconds, cluster.renew_deadline
    period, kill = cluster.renew_period, cluster.kill_budget
    flat_readme = " ".join(readme.split())
    assert f"defaults {timing.overlap_bound():.2f} s < {lease:g} s" in flat_readme
    flat_fleet = " ".join(fleet.split())
    assert f"margin {timing.margin():.2f} s" in flat_fleet
    assert f"≤ {lease * (1 + rho) + 0.005:.1f} s + {cluster.claim_stagger:g} s per rank" in flat_fleet
    grace = min(stop_timeout, cluster.fence_grace)
    hard = deadline / (1 - rho) + kill
    assert f"(defaults: {deadline - grace:g} s and {hard:.1f} s after `s`)" in flat_fleet
    assert f"= {(deadline - period - 2) * 1000:g} keeps `F + P < D`" in flat_fleet
    assert f"within `D - P` ({deadline - period:g} s with the defaults" in flat_fleet
