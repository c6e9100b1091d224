"""Host records (store.host_records) against a real redis-server: live hosts and the
departed, a host_id reused by another machine refused atomically, a reboot of the same
machine accepted, drain marks, and a record no one can read set aside."""

from __future__ import annotations

import time
import uuid

import pytest

from tests.support import poll_for
from workerguard.store import keys
from workerguard.store.host_records import HostIdConflict, HostRecord, HostRecords, machine_id


def _record(host: str, machine: str = "m-1", **fields: object) -> HostRecord:
    return HostRecord(host=host, machine=machine, boot="b-1", version="0.1.0",
                      **fields)  # type: ignore[arg-type]


@pytest.fixture
def records(redis_client):
    redis_client.delete(keys.HOSTS, keys.DRAINING)
    return HostRecords(redis_client)


def test_live_hosts_are_read_in_one_round_and_a_departed_one_stays_known(records):
    a, b = f"a-{uuid.uuid4().hex[:6]}", f"b-{uuid.uuid4().hex[:6]}"
    seen = records.publish(_record(a, slots={"scraper": [0]}, fingerprints={"scraper": "f"}), 30)
    records.publish(_record(b, machine="m-2"), 0.2)
    live = records.live()
    assert set(live) == {a, b}
    assert live[a].slots == {"scraper": [0]} and live[a].held == 1 and live[a].seen_ms == seen
    poll_for(lambda: b not in records.live(), timeout=10, message="b's record to expire")
    assert set(records.known()) == {a, b}  # departed, still listed
    records.forget(b)
    assert set(records.known()) == {a}


def test_a_host_id_in_use_on_another_machine_is_refused_and_a_reboot_is_not(records):
    host = f"h-{uuid.uuid4().hex[:6]}"
    records.publish(_record(host, machine="m-1"), 30)
    with pytest.raises(HostIdConflict, match="another machine"):
        records.publish(_record(host, machine="m-2"), 30)
    assert records.live()[host].machine == "m-1"  # the first stays
    rebooted = HostRecord(host=host, machine="m-1", boot="b-2", version="0.1.0")
    records.publish(rebooted, 30)
    assert records.live()[host].boot == "b-2"


def test_drain_marks_are_one_set(records):
    records.set_draining("h1", True)
    records.set_draining("h2", True)
    records.set_draining("h1", False)
    assert records.draining() == {"h2"}


def test_a_record_that_is_not_json_is_not_a_live_host(records, redis_client):
    host = f"h-{uuid.uuid4().hex[:6]}"
    records.publish(_record(host), 30)
    redis_client.set(keys.host_record(host), b"\xff not json", px=30_000)
    assert host not in records.live()
    records.publish(_record(host, machine="m-9"), 30)  # an unreadable record blocks no one
    assert records.live()[host].machine == "m-9"


def test_this_machine_has_an_id():
    assert machine_id() and machine_id() == machine_id()


def test_a_record_says_how_far_the_hosts_wall_clock_is_from_redis_time(redis_client, records):
    host = f"h-{uuid.uuid4().hex[:6]}"
    records.publish(_record(host), 30)
    assert abs(records.live()[host].clock_offset) < 0.5  # one machine: the same clock
    ahead = HostRecords(redis_client, wall_clock=lambda: time.time() + 90)
    ahead.publish(_record(host), 30)
    assert records.live()[host].clock_offset == pytest.approx(-90, abs=0.5)


def test_a_departed_host_is_forgotten_with_its_drain_mark_and_a_live_one_is_not(records):
    live, gone = f"l-{uuid.uuid4().hex[:6]}", f"g-{uuid.uuid4().hex[:6]}"
    records.publish(_record(live), 30)
    records.publish(_record(gone, machine="m-2"), 0.2)
    for host in (live, gone):
        records.set_draining(host, True)
    refused = records.forget(live)
    assert refused.live and not refused.removed and 0 < (refused.expires_in or 0) <= 30
    assert live in records.known() and live in records.draining()
    poll_for(lambda: gone not in records.live(), timeout=10, message="the record to expire")
    done = records.forget(gone)
    assert not done.live and done.removed
    assert gone not in records.known() and records.draining() == {live}
    assert not records.forget(gone).removed  # twice: nothing left
