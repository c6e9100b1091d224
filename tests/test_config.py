"""Config validation: every error names the file, the profile and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import cli_env, run_cli
from workerguard.config import load_config, parse_config
from workerguard.errors import ConfigError, UnknownProfile
from workerguard.redact import redact_text, redact_url

GOOD = '[profiles.rpa]\ncommand = ["python3", "-m", "rpa_worker"]\n'

# (file body, text that must appear in the error besides the file name)
BROKEN = [
    ("[profiles.rpa\ncommand = []", "not valid TOML"),
    ('[profiles.rpa]\ncommand = "python3 -m rpa"', "command"),
    ("[profiles.rpa]\ncommand = []", "command"),
    ('[profiles.rpa]\ncommand = ["python3", 3]', "command"),
    ('[profiles.rpa]\ncommand = [""]', "command"),
    ("[profiles.rpa]\ncwd = '/tmp'", "command: is required"),
    (GOOD + "min_workers = 3\nmax_workers = 2", "min_workers: must be <= max_workers"),
    (GOOD + "max_workers = 0", "max_workers: must be between 1"),
    (GOOD + "max_workers = 100000", "max_workers: must be between 1"),
    (GOOD + "min_workers = -1", "min_workers: must be >= 0"),
    (GOOD + 'min_workers = "1"', "min_workers: must be a number"),
    (GOOD + "min_workers = 1.5", "min_workers: must be a whole number"),
    (GOOD + "max_worker = 1", "max_worker: unknown key"),
    (GOOD + 'keep = "random"', "keep: must be one of newest, oldest"),
    (GOOD + 'match = "rpa_worker("', "match: is not a valid regular expression"),
    (GOOD + "start_seconds = 0", "start_seconds: must be > 0"),
    (GOOD + "stop_timeout = -5", "stop_timeout: must be > 0"),
    (GOOD + "start_seconds = true", "start_seconds: must be a number"),
    (GOOD + 'env = { A = 1 }', "env: must be a table of string values"),
    (GOOD + 'env = { WORKERGUARD_PROFILE = "x" }', "env: must not set WORKERGUARD_"),
    (GOOD + 'stop_signal = "SIGKILL"', "stop_signal: must be one of"),
    (GOOD + "[profiles.rpa]\ncommand = ['x']", "not valid TOML"),  # duplicate profile
    ('[profiles."a/b"]\ncommand = ["x"]', "name must match"),
    ('[profiles."a*b"]\ncommand = ["x"]', "name must match"),
    ("[profiles]\nrpa = 3", "must be a table"),
    ("[guard]\nlock_expire = 0\n" + GOOD, "[guard]: lock_expire: must be > 0"),
    ('[guard]\nredis_url = "http://x"\n' + GOOD, "redis_url: must start with"),
    ('[guard]\nhost_id = "a b"\n' + GOOD, "host_id: must match"),
    ("[guard]\nsweep_intervall = 3\n" + GOOD, "sweep_intervall: unknown key"),
    ("[profile.rpa]\ncommand = ['x']", "profile: unknown table"),
    ("\x00\x01", "not valid TOML"),
]


@pytest.mark.parametrize(("body", "expected"), BROKEN, ids=[e for _, e in BROKEN])
def test_broken_config_is_rejected_naming_file_and_field(tmp_path: Path, body: str,
                                                         expected: str) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(body)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    message = str(info.value)
    assert str(path) in message
    assert expected in message
    if "profiles.rpa" in body and "unknown table" not in expected and "TOML" not in expected:
        assert "profile 'rpa'" in message or "[guard]" in message


def test_broken_config_makes_check_exit_2_with_the_message(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(GOOD + "min_workers = 3\nmax_workers = 2")
    done = run_cli("check", "--config", str(path), env=cli_env())
    assert done.returncode == 2
    assert "profile 'rpa': min_workers: must be <= max_workers (2), got 3" in done.stderr
    assert str(path) in done.stderr


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    done = run_cli("status", "--local", "--config", str(tmp_path / "nope.toml"), env=cli_env())
    assert done.returncode == 2
    assert "config file not found" in done.stderr


def test_defaults_and_relative_cwd(tmp_path: Path) -> None:
    path = tmp_path / "wg.toml"
    path.write_text(GOOD + 'cwd = "work"\nmin_workers = 2\n')
    profile = load_config(path, environ={}).profile("rpa")
    assert profile.command == ("python3", "-m", "rpa_worker")
    assert profile.cwd == str(tmp_path / "work")
    assert (profile.min_workers, profile.max_workers, profile.keep) == (2, 2, "newest")


def test_environment_overrides_guard_settings() -> None:
    config = parse_config({"guard": {"lock_expire": 10, "host_id": "a"}}, "x.toml",
                          environ={"WORKERGUARD_LOCK_EXPIRE": "3", "WORKERGUARD_HOST_ID": "rpa-01"})
    assert config.settings.lock_expire == 3
    assert config.settings.host_id == "rpa-01"


def test_flags_come_from_toml_booleans_or_environment_words() -> None:
    assert parse_config({}, "x.toml", environ={}).settings.sweep_on_start is True
    off = parse_config({"guard": {"sweep_on_start": False}}, "x.toml", environ={})
    assert off.settings.sweep_on_start is False
    env = parse_config({}, "x.toml", environ={"WORKERGUARD_SWEEP_ON_START": "no"})
    assert env.settings.sweep_on_start is False
    with pytest.raises(ConfigError, match="sweep_on_start: must be true or false"):
        parse_config({"guard": {"sweep_on_start": "yes"}}, "x.toml", environ={})
    with pytest.raises(ConfigError, match="WORKERGUARD_SWEEP_ON_START: must be true or false"):
        parse_config({}, "x.toml", environ={"WORKERGUARD_SWEEP_ON_START": "maybe"})


def test_bad_environment_override_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="WORKERGUARD_LOCK_EXPIRE: must be a number"):
        parse_config({}, "x.toml", environ={"WORKERGUARD_LOCK_EXPIRE": "soon"})


def test_unknown_profile_names_the_known_ones() -> None:
    config = parse_config({"profiles": {"rpa": {"command": ["x"]}}}, "x.toml", environ={})
    with pytest.raises(UnknownProfile, match=r"unknown profile 'rpx' \(configured: rpa"):
        config.profile("rpx")


def test_passwords_never_appear_in_repr_or_check_output(tmp_path: Path) -> None:
    url = "redis://:s3cr3t-pw@127.0.0.1:1/0"
    config = parse_config({"guard": {"redis_url": url}}, "x.toml", environ={})
    assert "s3cr3t-pw" not in repr(config.settings)
    assert "s3cr3t-pw" not in repr(config)
    assert redact_url(url) == "redis://:***@127.0.0.1:1/0"
    assert "s3cr3t-pw" not in redact_text(f"Error connecting to {url}: refused")
    path = tmp_path / "wg.toml"
    path.write_text(f'[guard]\nredis_url = "{url}"\n' + GOOD)
    done = run_cli("check", "--config", str(path), env=cli_env())
    assert done.returncode == 0, done.stderr
    assert "s3cr3t-pw" not in done.stdout + done.stderr
    assert "redis://:***@127.0.0.1:1/0" in done.stdout


def test_an_override_that_breaks_a_check_names_the_variable_not_the_file() -> None:
    with pytest.raises(ConfigError, match=r"^environment: WORKERGUARD_LOCK_EXPIRE: must be > 0"):
        parse_config({"guard": {"lock_expire": 10}}, "x.toml", environ={"WORKERGUARD_LOCK_EXPIRE": "0"})
    with pytest.raises(ConfigError) as info:
        parse_config({}, "x.toml", environ={"WORKERGUARD_REDIS_URL": "http://:s3cr3t@h"})
    assert str(info.value).startswith("environment: WORKERGUARD_REDIS_URL: must start with")
    assert "s3cr3t" not in str(info.value)
    unrelated = {"WORKERGUARD_CONFIG": "x", "WORKERGUARD_PROFILE": "rpa", "WORKERGUARD_HOME": ""}
    assert parse_config({}, "x.toml", environ=unrelated).settings.home.name == "workerguard"


@pytest.mark.parametrize(("table", "expected"), [
    ("[guard]\nlock_expire = 10.0", "x.toml: [guard]: lock_expire: must be a whole number, got 10.0"),
    ("[guard]\nhost_id = 3", "x.toml: [guard]: host_id: must be a non-empty string, got 3"),
    ("[guard]\nhome = ''", "x.toml: [guard]: home: must be a non-empty string, got ''"),
    ("guard = 3", "x.toml: [guard]: must be a table, got 3"),
    (GOOD + "name = 'other'", "x.toml: profile 'rpa': name: unknown key"),
    (GOOD + "cwd = 3", "x.toml: profile 'rpa': cwd: must be a non-empty string, got 3"),
])
def test_types_are_strict_and_every_error_names_its_place(table: str, expected: str) -> None:
    import tomllib

    with pytest.raises(ConfigError) as info:
        parse_config(tomllib.loads(table), "x.toml", environ={})
    assert str(info.value).startswith(expected)


def test_unknown_keys_list_the_allowed_ones() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"profiles": {"rpa": {"command": ["x"], "max_worker": 2}}}, "x.toml", environ={})
    assert "profile 'rpa': max_worker: unknown key (allowed: backoff_max, command, cwd," in str(info.value)
    assert "name" not in str(info.value).split("allowed:")[1]


def test_every_problem_is_listed_at_once_with_a_suggestion_for_a_misspelt_key() -> None:
    broken = {"guard": {"lock_expire": 0, "sweep_intervall": 3},
              "profiles": {"rpa": {"command": ["x"], "max_worker": 2, "min_workers": "1"}}}
    with pytest.raises(ConfigError) as info:
        parse_config(broken, "x.toml", environ={})
    lines = str(info.value).splitlines()
    assert lines[0] == "x.toml: [guard]: lock_expire: must be > 0, got 0"
    assert len(lines) == 4 and "more)" not in str(info.value)
    assert lines[1].startswith("x.toml: [guard]: sweep_intervall: unknown key (allowed: ")
    assert lines[1].endswith("; did you mean sweep_interval?")
    assert "x.toml: profile 'rpa': min_workers: must be a number, got str '1'" in lines
    assert lines[3].endswith("max_worker: unknown key (allowed: backoff_max, command, cwd, env, keep, "
                             "match, match_users, max_workers, min_workers, probe, start_retries, "
                             "start_seconds, stop_adopted, stop_signal, stop_timeout); "
                             "did you mean max_workers?")


def test_a_key_like_no_allowed_one_gets_no_suggestion() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"guard": {"zzz": 1}}, "x.toml", environ={})
    assert "did you mean" not in str(info.value)
