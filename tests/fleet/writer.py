"""The bed's worker (../shared/FLEET.md §5.5): it writes to the fenced store every 50 ms
with the fencing token and slot of its grant, as a worker that fences its own writes
would. Standard library only (a RESP client of three commands): it runs as the cluster
profile's command, under the leash, inside a simulated host.

The store's address, password and script are in the file ``--store`` names (mode 0600;
never on the command line, where ``ps`` shows it). A write that cannot reach Redis (the
host is cut off) is dropped and the next one tried: the worker lives until its leash
ends it, as a real worker would.

Its connection aborts when closed (``SO_LINGER`` 0: a reset, the unsent data dropped), also
when its leash kills it. A write it gave up on, or one still queued in the kernel when it
died, is never delivered later: with an ordinary close the kernel goes on retransmitting
it, and after a partition heals it reached the store after the instance was gone, before
the slot's new holder had written its first token, so the store accepted it stale (F6:
5 stale writes in two runs of 50 random rounds; both traced were such writes, delivered
0.3 s after the heal, 1.7 and 2.4 s after their instance was gone). Fencing tokens cannot
refuse an old token before the store has seen the new one; a worker must not leave
writes in flight behind it.
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import time
from typing import BinaryIO

PERIOD = 0.05
TIMEOUT = 0.5


def command(*args: str) -> bytes:
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def reply(stream: BinaryIO) -> bytes:
    line = stream.readline()
    if not line:
        raise ConnectionError("the store closed the connection")
    if line.startswith(b"-"):
        raise ConnectionError(line[1:].strip().decode(errors="replace"))
    return line[1:].strip()


def connect(host: str, port: int, password: str) -> tuple[socket.socket, BinaryIO]:
    sock = socket.create_connection((host, port), timeout=TIMEOUT)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    stream = sock.makefile("rb")
    sock.sendall(command("AUTH", password))
    reply(stream)
    return sock, stream


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", required=True, help="file: host port password sha")
    parser.add_argument("--key", required=True, help="the store's key, {slot} filled in")
    parser.add_argument("--lease-key", required=True, help="the slot's lease, {slot} filled in")
    args = parser.parse_args()
    with open(args.store, encoding="ascii") as file:
        host, port, password, sha = file.read().split()
    slot = os.environ["WORKERGUARD_SLOT"]
    token = os.environ["WORKERGUARD_FENCING_TOKEN"]
    writer = os.environ.get("WORKERGUARD_HOST_ID", "?")
    write = command("EVALSHA", sha, "2", args.key.format(slot=slot),
                    args.lease_key.format(slot=slot), token, writer)
    connection: tuple[socket.socket, BinaryIO] | None = None
    while True:
        try:
            if connection is None:
                connection = connect(host, int(port), password)
            connection[0].sendall(write)
            reply(connection[1])
        except OSError:  # cut off, or the store refused: the next write tries again
            if connection is not None:
                connection[0].close()
            connection = None
        time.sleep(PERIOD)


if __name__ == "__main__":
    main()
