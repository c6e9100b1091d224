"""Connections to an old primary are shut down at once (``ops/stale_connections.py``):
whoever waits on one wakes with end-of-file instead of waiting on a black hole."""

from __future__ import annotations

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
