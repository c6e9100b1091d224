"""Connections to an old primary are shut down at once (``ops/stale_connections.py``):
whoever waits on one wakes with end-of-file instead of waiting on a black hole."""

from __future__ import annotations

import shutil
import socket
import threading

from workerguard.ops.stale_connections import shut_down_connections_to


def test_a_reader_waiting_on_a_connection_wakes_when_it_is_shut_down_and_others_stay():
    with socket.create_server(("127.0.0.1", 0)) as old, socket.create_server(("127.0.0.1", 0)) as new:
        stale = socket.create_connection(old.getsockname())
        kept = socket.create_connection(new.getsockname())
        accepted = [old.accept()[0], new.accept()[0]]  # they never answer: a black hole
        got: list[bytes] = []
        reader = threading.Thread(target=lambda: got.append(stale.recv(10)), daemon=True)
        reader.start()
        try:
            assert shut_down_connections_to(*old.getsockname()) == 1
            reader.join(30)
            assert got == [b""] and not reader.is_alive()
            kept.sendall(b"x")  # the connection to another address still works
            accepted[1].settimeout(30)
            assert accepted[1].recv(1) == b"x"
        finally:
            for s in (stale, kept, *accepted):
                s.close()


def test_nothing_to_shut_down_is_zero():
    with socket.create_server(("127.0.0.1", 0)) as idle:
        assert shut_down_connections_to(*idle.getsockname()) == 0


def test_the_cluster_loop_shuts_down_connections_to_an_old_primary_at_another_address(
        redis_server, redis_client, tracker, monkeypatch):
    """The lease client sees a Sentinel failover first (FLEET check R2: the Redis watch's
    reading of the old primary waits out its socket timeout): the cluster loop shuts down
    the connections to the old primary's address then, once; not on a new identity at the
    same address (a restarted Redis)."""
    from tests.cluster_bed import one_slot_space
    from workerguard.ops import cluster_loop
    from workerguard.store.leases import Round

    space = one_slot_space(redis_server, tracker, renew_period=0.5)
    seen = iter([("10.0.0.1", 1), ("10.0.0.1", 1), ("10.0.0.2", 2), ("10.0.0.2", 2),
                 ("10.0.0.2", 2)])
    monkeypatch.setattr(cluster_loop, "primary_address", lambda _client: next(seen))
    shut: list[tuple[str, int]] = []

    def shut_down(host: str, port: int) -> int:
        shut.append((host, port))
        return 1

    monkeypatch.setattr(cluster_loop, "shut_down_connections_to", shut_down)
    loop = cluster_loop.ClusterLoop(space.config(), redis_client, lambda _p, _why: None)
    try:
        for t, run_id in enumerate(["a", "a", "b", "b", "c"]):
            loop._watch_primary(Round(sent=float(t), took=0.001, redis_time=1000.0 + t,
                                      run_id=run_id, replid=run_id, role="master"))
            assert shut == ([] if t < 2 else [("10.0.0.1", 1)]), (t, shut)
    finally:
        shutil.rmtree(space.home, ignore_errors=True)
