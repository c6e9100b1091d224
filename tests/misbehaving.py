"""A TCP server on 127.0.0.1 that answers a probe badly, one way at a time, for the probe tests.

``mode`` is read for each new connection, so a test can turn a bad server healthy while
a prober keeps probing it:

- ``garbage``: answers ``garbage`` and closes (``http.client.BadStatusLine``);
- ``reset``: closes with an RST at once (SO_LINGER 0: ``ConnectionResetError``);
- ``trickle-head``: a valid ``200`` answer, one byte a second from its first byte;
- ``trickle-body``: the same headers at once, then its body one byte a second;
- ``redirect``: a ``302`` to ``redirect_to`` (by default itself: a loop);
- ``silent``: accepts and never answers (the connection stays open until the client goes);
- ``healthy``: a ``200`` with ``ok``.

A trickled answer is long enough (over 40 bytes) that a probe that waited for all of it
would pass only after 40 s: a probe bound by one total deadline fails long before.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from typing import Literal

Mode = Literal["garbage", "reset", "trickle-head", "trickle-body", "redirect", "silent",
               "healthy"]
BODY = b"ok, and a body long enough to trickle for a while\n"
TRICKLE_PERIOD = 1.0
"""Seconds between two bytes of a trickled answer."""


def _answer(status: str, body: bytes, extra: str = "") -> tuple[bytes, bytes]:
    head = (f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{extra}"
            "Connection: close\r\n\r\n").encode()
    return head, body


class MisbehavingServer:
    def __init__(self, mode: Mode) -> None:
        self.mode: Mode = mode
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        self.redirect_to = self.url
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self.connections = 0
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True, name="misbehaving-accept").start()

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            for conn in self._open:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> MisbehavingServer:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                self._open.append(conn)
            threading.Thread(target=self._serve, args=(conn, self.mode), daemon=True,
                             name=f"misbehaving-{self.mode}").start()

    def _serve(self, conn: socket.socket, mode: Mode) -> None:
        try:
            if mode != "reset":
                conn.recv(65536)  # the request (small: one read takes it)
            self._misbehave(conn, mode)
        except OSError:
            pass  # the probe went away: what a deadline does
        finally:
            with self._lock:
                self._open.remove(conn)
            conn.close()

    def _misbehave(self, conn: socket.socket, mode: Mode) -> None:
        if mode == "garbage":
            conn.sendall(b"garbage\r\n\r\n")
        elif mode == "reset":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif mode == "silent":
            self._closed.wait()
        elif mode == "redirect":
            conn.sendall(b"".join(_answer("302 Found", b"", f"Location: {self.redirect_to}\r\n")))
        elif mode == "healthy":
            conn.sendall(b"".join(_answer("200 OK", BODY)))
        else:
            head, body = _answer("200 OK", BODY)
            if mode == "trickle-body":
                conn.sendall(head)
            for byte in (body if mode == "trickle-body" else head + body):
                if self._closed.wait(TRICKLE_PERIOD):
                    return
                conn.sendall(bytes([byte]))
