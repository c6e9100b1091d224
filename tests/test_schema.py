"""`workerguard schema`: the JSON Schema editors use agrees with the config loader."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.support import HERE, cli_env, run_cli
from workerguard.config import load_config, parse_config
from workerguard.errors import ConfigError

ROOT = HERE.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.toml"))
GOOD = '[profiles.rpa]\ncommand = ["python3", "-m", "rpa_worker"]\n'


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    done = run_cli("schema", env=cli_env())
    assert done.returncode == 0, done.stderr
    printed: dict[str, Any] = json.loads(done.stdout)
    jsonschema.Draft202012Validator.check_schema(printed)
    return printed


def schema_errors(schema: dict[str, Any], body: str) -> list[str]:
    validator = jsonschema.Draft202012Validator(schema)
    return [e.message for e in validator.iter_errors(tomllib.loads(body))]


CONFIG_PAGE = ROOT / "docs" / "configuration.md"


def documented_config() -> str:
    """The annotated example: the first TOML block of docs/configuration.md."""
    found = re.search(r"```toml\n(.*?)```", CONFIG_PAGE.read_text(), re.S)
    assert found, f"{CONFIG_PAGE} has no TOML block"
    return found.group(1)


def test_the_examples_exist() -> None:
    assert {p.name for p in EXAMPLES} >= {"workerguard.toml", "compose.toml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_validates_against_the_schema_and_loads(schema: dict[str, Any],
                                                               path: Path) -> None:
    assert schema_errors(schema, path.read_text()) == []
    assert load_config(path, environ={}).profiles


def test_the_documented_example_validates_against_the_schema_and_loads(
        schema: dict[str, Any]) -> None:
    body = documented_config()
    assert schema_errors(schema, body) == []
    assert parse_config(tomllib.loads(body), "docs/configuration.md", environ={}).profile("rpa")


# each is rejected by the schema (editors flag it) and by the loader (naming the place)
REJECTED = [
    (GOOD + "max_worker = 2", "'max_worker' was unexpected", "profile 'rpa': max_worker: unknown key"),
    ("[guard]\nsweep_intervall = 3\n" + GOOD, "'sweep_intervall' was unexpected",
     "[guard]: sweep_intervall: unknown key"),
    ("[profile.rpa]\ncommand = ['x']", "'profile' was unexpected", "profile: unknown table"),
    (GOOD + 'name = "other"', "'name' was unexpected", "profile 'rpa': name: unknown key"),
    (GOOD + 'min_workers = "1"', "'1' is not of type 'integer'", "min_workers: must be a number"),
    (GOOD + "start_seconds = true", "True is not of type 'number'", "start_seconds: must be a number"),
    ('[profiles.rpa]\ncommand = "python3 -m rpa"', "is not of type 'array'",
     "command: must be a non-empty list"),
    ("[guard]\nlock_expire = 0\n" + GOOD, "0 is less than or equal to the minimum of 0",
     "[guard]: lock_expire: must be > 0"),
    ('[guard]\nsweep_on_start = "yes"\n' + GOOD, "'yes' is not of type 'boolean'",
     "sweep_on_start: must be true or false"),
    (GOOD + 'keep = "random"', "'random' is not one of", "keep: must be one of newest, oldest"),
    (GOOD + "max_workers = 100000", "100000 is greater than the maximum of 1000",
     "max_workers: must be between 1 and 1000"),
    ('[profiles."a/b"]\ncommand = ["x"]', "'a/b' does not match", "profile 'a/b': name must match"),
    (GOOD + 'env = { WORKERGUARD_PROFILE = "x" }', "should not be valid",
     "env: must not set WORKERGUARD_"),
    ('[guard]\nredis_url = "http://x"\n' + GOOD, "does not match", "redis_url: must start with"),
]


@pytest.mark.parametrize(("body", "by_schema", "by_loader"), REJECTED, ids=[r[2] for r in REJECTED])
def test_an_unknown_key_or_a_wrong_type_fails_the_schema_and_the_loader(
        schema: dict[str, Any], body: str, by_schema: str, by_loader: str) -> None:
    errors = schema_errors(schema, body)
    assert any(by_schema in e for e in errors), errors
    with pytest.raises(ConfigError, match=re.escape(by_loader)):
        parse_config(tomllib.loads(body), "x.toml", environ={})
