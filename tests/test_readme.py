"""The README's "Calling from other services and languages" snippets, run as written.

Each snippet is the fenced block after an ``<!-- snippet: NAME -->`` comment in
README.md; only the example values (URL, host, profile, Flower's port and password)
are replaced by the test's, so the README and this test cannot drift apart.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CeleryHarness, Workspace
from tests.support import cli_env, free_port, poll_for
from tests.test_flower import PASSWORD, USER, answers

pytestmark = pytest.mark.celery
README = Path(__file__).resolve().parent.parent / "README.md"
SNIPPET = re.compile(r"<!-- snippet: ([\w-]+) -->\n```(\w+)\n(.*?)```", re.S)
ONLY_CELERY = """
import sys
exec(compile(sys.argv[1], "README.md", "exec"))
assert not any(m.startswith("workerguard") for m in sys.modules), "the snippet needs workerguard"
"""


def snippets() -> dict[str, tuple[str, str]]:
    return {name: (lang, body) for name, lang, body in SNIPPET.findall(README.read_text())}


def test_the_readme_has_the_three_caller_snippets():
    assert {name: lang for name, (lang, _) in snippets().items()} == {
        "python": "python", "celery-cli": "bash", "flower-api": "bash"}


def run(lang: str, code: str) -> str:
    env = cli_env(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    argv = ([sys.executable, "-c", ONLY_CELERY, code] if lang == "python"
            else ["bash", "-euo", "pipefail", "-c", code])
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, (code, done.stdout, done.stderr)
    return done.stdout.strip().splitlines()[-1]


def test_the_readme_snippets_reach_a_real_guard_as_written(workspace: Workspace,
                                                           harness: CeleryHarness):
    workspace.add_profile("rpa-demo")
    harness.start_worker()
    port = free_port()
    flower = workspace.tracker.popen(
        [sys.executable, "-m", "workerguard.cli", "flower", "--config", str(workspace.config_path),
         "--port", str(port), f"--basic-auth={USER}:{PASSWORD}"], env=cli_env())
    poll_for(lambda: flower.poll() is None and answers(port), timeout=60, interval=0.2,
             message="Flower to answer")

    def ours(code: str) -> str:
        return (code.replace("redis://:secret@redis:6379/0", workspace.redis_url)
                .replace("rpa-01", workspace.host_id).replace('["rpa"]', '["rpa-demo"]')
                .replace("127.0.0.1:5555", f"127.0.0.1:{port}")
                .replace("ops:long-secret", f"{USER}:{PASSWORD}"))

    found = snippets()
    by_python = ast.literal_eval(run("python", ours(found["python"][1])))
    assert by_python["profile"] == "rpa-demo" and by_python["action"] == "started"
    [pid] = by_python["running"]

    by_cli = ast.literal_eval(run("bash", ours(found["celery-cli"][1])))
    assert by_cli["action"] == "already_running" and by_cli["running"] == [pid]

    by_flower = json.loads(run("bash", ours(found["flower-api"][1])))
    assert by_flower["state"] == "SUCCESS"
    assert by_flower["result"]["action"] == "already_running"
    assert by_flower["result"]["running"] == [pid]
