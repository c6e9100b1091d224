"""Instance records that cannot tear, and files of the runtime directory that are only ever ours.

Two discoveries (a ``status`` and a sweep) write the same records at once; a reader must
see a whole record every time. A record that is corrupt anyway is moved aside, and its
instance (a real spawned process) is still found by a real discovery. Every file read is
checked: a record of another user, with a second hard link, a symlink or writable by
others is skipped.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis

from tests.conftest import Workspace
from tests.support import HERE, ProcessTracker, alive, cli_env
from tests.test_identity import modes
from workerguard.store import keys
from workerguard.workers import registry
from workerguard.workers.fence import host_fence, profile_fence
from workerguard.workers.registry import CORRUPT_MARK, Record, Registry
from workerguard.workers.rundir import owned_file_problem

NOBODY = 65534


def a_record(host: str, instance: str, generation: int, members: int = 3) -> Record:
    """A record whose every field says which write it came from (``generation``)."""
    return Record(host, "demo", instance, pid=1000 + generation, start=generation,
                  started_at=float(generation), fingerprint=f"{generation:016x}",
                  members=tuple((2000 + generation + m, generation) for m in range(members)),
                  index=generation % 7, confirmed=bool(generation % 2))


def whole(record: Record) -> bool:
    generation = record.pid - 1000
    return record == a_record(record.host, record.instance_id, generation)


def hammer_records(directory: Path, seconds: float, threads: int = 8) -> dict[str, int]:
    """``threads`` threads each write the same 4 records and read all of them, for
    ``seconds``: counts of writes, reads, failed writes and records missing or torn."""
    reg = Registry(directory)
    instances = [f"i{n}" for n in range(4)]
    for n, instance in enumerate(instances):
        reg.write(a_record("h", instance, n))
    counts = {"writes": 0, "reads": 0, "failed_writes": 0, "unreadable": 0}
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def work(worker: int) -> None:
        mine = dict.fromkeys(counts, 0)
        generation = worker * 10_000_000
        while time.monotonic() < deadline:
            generation += 1
            try:  # each write waits for the profile's fence, as a spawn's does
                if reg.write(a_record("h", instances[generation % len(instances)], generation),
                             time.monotonic() + 30):
                    mine["writes"] += 1
                else:
                    mine["failed_writes"] += 1
            except Exception:  # counted: the test asserts there is none
                mine["failed_writes"] += 1
            seen = {r.instance_id: r for r in reg.records("h")}
            mine["reads"] += 1
            mine["unreadable"] += sum(1 for i in instances if i not in seen or not whole(seen[i]))
        with lock:
            for key, value in mine.items():
                counts[key] += value

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    return counts


def test_eight_threads_writing_and_reading_records_leave_none_unreadable(
        tmp_path: Path, caplog: pytest.LogCaptureFixture):
    counts = hammer_records(tmp_path / "registry", seconds=2.0)
    assert counts["writes"] > 100 and counts["reads"] > 100, counts
    assert counts["failed_writes"] == 0 and counts["unreadable"] == 0, counts
    assert not list((tmp_path / "registry").rglob(f"*{CORRUPT_MARK}*"))
    assert not list((tmp_path / "registry").rglob("*.tmp")), "a temp file was left behind"
    assert not [r for r in caplog.records if r.name == "workerguard.registry"]


@pytest.mark.slow
def test_eight_threads_for_ten_seconds_leave_none_unreadable(tmp_path: Path):
    counts = hammer_records(tmp_path / "registry", seconds=10.0)
    assert counts["failed_writes"] == 0 and counts["unreadable"] == 0, counts


HOLD_FENCE = """
import sys, time
from pathlib import Path
from workerguard.workers.fence import host_fence
with host_fence(Path(sys.argv[1]), sys.argv[2], time.monotonic() + 10):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_a_record_is_written_and_removed_only_under_its_profiles_fence(
        tmp_path: Path, tracker: ProcessTracker):
    reg = Registry(tmp_path / "registry")
    assert reg.write(a_record("h", "i0", 1))  # nobody holds the fence: taken at once
    path = tmp_path / "registry" / "h" / "demo" / "i0.json"
    holder = tracker.popen([sys.executable, "-c", HOLD_FENCE, str(reg.fences),
                            profile_fence("h", "demo")], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    assert not reg.write(a_record("h", "i0", 2))  # a discovery's write: not now
    assert not reg.write(a_record("h", "i0", 3), time.monotonic() + 0.3)  # waited, in vain
    assert not reg.delete("h", "demo", "i0")
    assert registry.load(path) == a_record("h", "i0", 1)  # untouched
    assert reg.write(a_record("h2", "i0", 4))  # another fence (another host id): not held
    holder.communicate("", timeout=30)  # it lets go and ends
    assert reg.write(a_record("h", "i0", 5), time.monotonic() + 30)
    assert registry.load(path) == a_record("h", "i0", 5)
    # a thread that holds the fence (a converge) writes at once; another thread cannot
    with host_fence(reg.fences, profile_fence("h", "demo"), time.monotonic() + 10):
        assert reg.write(a_record("h", "i0", 6))
        elsewhere: list[bool] = []
        thread = threading.Thread(target=lambda: elsewhere.append(reg.write(a_record("h", "i0", 7))))
        thread.start()
        thread.join(30)
        assert elsewhere == [False]
        assert reg.delete("h", "demo", "i0") and not path.exists()


def test_a_status_while_a_converge_holds_the_fence_writes_no_record(
        workspace: Workspace, redis_client: redis.Redis, identity: str):
    """A real guard process stopped inside its converge (lock and fence held); a ``status``
    here sees the instance whose record was lost, and leaves the record to the holder."""
    workspace.add_profile("demo")
    guard = workspace.guard(redis_client)
    [pid] = guard.ensure("demo").started
    redis_client.delete(keys.known(workspace.host_id, "demo"))  # no fast path: it converges
    holder = workspace.tracker.popen(
        [sys.executable, str(HERE / "failpoint_guard.py"), str(workspace.write_config()),
         "lock_held"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env=cli_env())
    assert holder.stdout is not None and holder.stdout.readline().strip() == "STAGE lock_held"
    [path] = workspace.config().settings.registry_dir.glob(f"{workspace.host_id}/demo/*.json")
    path.unlink()  # a lost record: a discovery would write it anew
    assert list(guard.status("demo").running) == [pid]  # found (its group or its mark) ...
    assert not path.exists()  # ... but its record is not written outside the fence
    holder.kill()
    holder.wait(30)
    assert list(guard.status("demo").running) == [pid]
    assert registry.load(path) is not None  # the fence is free: written now


@pytest.fixture(params=modes())
def identity(request: pytest.FixtureRequest, workspace: Workspace) -> str:
    workspace.guard_settings["identity"] = request.param
    return str(request.param)


def test_a_corrupt_record_is_moved_aside_logged_once_and_its_instance_still_found(
        workspace: Workspace, redis_client: redis.Redis, identity: str,
        caplog: pytest.LogCaptureFixture):
    workspace.add_profile("demo")
    guard = workspace.guard(redis_client)
    assert guard.ensure("demo").ok
    config = workspace.config()
    table = workspace.table()
    [before] = table.discover([config.profile("demo")], config.profiles.values()).instances["demo"]
    assert before.instance_id is not None
    path = config.settings.registry_dir / workspace.host_id / "demo" / f"{before.instance_id}.json"
    assert path.exists()
    path.write_bytes(b'{"host": "' + workspace.host_id.encode() + b'", "pid": 12')  # torn

    with caplog.at_level(logging.WARNING, logger="workerguard.registry"):
        [after] = table.discover([config.profile("demo")], config.profiles.values()).instances["demo"]
        table.discover([config.profile("demo")], config.profiles.values())
    assert (after.pid, after.instance_id) == (before.pid, before.instance_id)
    assert alive(before.pid)
    aside = list(path.parent.glob(f"{path.name}{CORRUPT_MARK}*"))
    assert len(aside) == 1 and aside[0].read_bytes().endswith(b'"pid": 12')
    told = [r.getMessage() for r in caplog.records if r.name == "workerguard.registry"]
    assert len(told) == 1 and "corrupt" in told[0] and str(path) in told[0], told
    rewritten = registry.load(path)  # discovery wrote the record anew, whole
    assert rewritten is not None and rewritten.pid == before.pid


@pytest.mark.parametrize("spoil", ["other owner", "hard link", "symlink", "group writable", "fifo"])
def test_a_record_file_that_is_not_only_ours_is_skipped_and_logged_once(
        tmp_path: Path, spoil: str, caplog: pytest.LogCaptureFixture):
    reg = Registry(tmp_path / "registry")
    reg.write(a_record("h", "good", 1))
    reg.write(a_record("h", "bad", 2))
    path = tmp_path / "registry" / "h" / "demo" / "bad.json"
    if spoil == "other owner":
        os.chown(path, NOBODY, NOBODY)
    elif spoil == "hard link":
        os.link(path, tmp_path / "elsewhere")
    elif spoil == "symlink":
        os.replace(path, tmp_path / "elsewhere")
        path.symlink_to(tmp_path / "elsewhere")
    elif spoil == "group writable":
        path.chmod(0o660)
    else:
        path.unlink()
        os.mkfifo(path, 0o600)  # an open for reading would wait for a writer forever

    with caplog.at_level(logging.WARNING, logger="workerguard.registry"):
        for _ in range(3):
            assert [r.instance_id for r in reg.records("h")] == ["good"]
    told = [r.getMessage() for r in caplog.records if r.name == "workerguard.registry"]
    assert len(told) == 1 and str(path) in told[0] and "skipped" in told[0], told
    assert os.path.lexists(path), "a file that is not ours is left where it is"


def test_a_registry_directory_of_another_user_yields_nothing_and_says_so(
        tmp_path: Path, caplog: pytest.LogCaptureFixture):
    reg = Registry(tmp_path / "registry")
    reg.write(a_record("h", "one", 1))
    os.chown(tmp_path / "registry" / "h", NOBODY, NOBODY)
    with caplog.at_level(logging.WARNING, logger="workerguard.registry"):
        assert list(reg.records("h")) == []
    told = [r.getMessage() for r in caplog.records if r.name == "workerguard.registry"]
    assert len(told) == 1 and "owned by uid 65534" in told[0], told


def test_a_file_replaced_since_it_was_opened_is_still_ours(tmp_path: Path):
    """A reader holds the record a writer just renamed over: no link left, and that is fine."""
    path = tmp_path / "record"
    path.write_text("{}")
    path.chmod(0o600)
    with path.open() as opened:
        path.unlink()
        info = os.fstat(opened.fileno())
    assert info.st_nlink == 0
    assert owned_file_problem(info, replaced_ok=True) is None
    assert owned_file_problem(info) == "it has 0 hard links"  # a lock file wants its link
