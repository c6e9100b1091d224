"""A probe's network I/O within one total deadline: name lookup, connect, TLS, request,
status line, headers, body and every redirect together take at most the probe's timeout.

A socket timeout bounds one operation: a server that sends one byte a second never lets a
``recv`` time out, and each redirect or address tried starts the count afresh. So urllib
(and urllib3's ``Timeout(total=)``, which bounds the connect and the response headers but
not a trickling body) let a probe run far past its timeout. Here every blocking step first
sets the socket's timeout to what is left of one monotonic deadline, and fails with
``TimeoutError`` once nothing is left: http.client reads the answer through
``_DeadlineReader``, which does that before each ``recv``. A name that is not an IP
address is looked up on a thread of its own, waited for up to the deadline (a resolver
that hangs keeps only that thread, until its own timeout).

HTTP(S) only, no proxy from the environment (a probe of 127.0.0.1 must not go through
one), certificates verified, at most ``MAX_REDIRECTS`` redirects (http and https only).
"""

from __future__ import annotations

import functools
import http.client
import io
import ipaddress
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import SplitResult, urljoin, urlsplit, urlunsplit

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

MAX_REDIRECTS = 5
"""Redirects an HTTP probe follows (urllib: 10, curl: 50): a health endpoint redirects
once or twice at most (``/health`` to ``/health/``, http to https); a loop fails fast."""
REDIRECTS = frozenset({301, 302, 303, 307, 308})


class Deadline:
    """One total time limit on the monotonic clock (a wall clock set back cannot stretch it)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def remaining(self) -> float:
        """Seconds left; ``TimeoutError`` once none are."""
        left = self.end - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"timed out after {self.seconds:g} s")
        return left


class TooManyRedirects(http.client.HTTPException):
    pass


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    url: str
    """The url that answered (the last one after redirects)."""


def tcp_connect(host: str, port: int, deadline: Deadline) -> socket.socket:
    """A TCP connection to ``host``:``port``, each address tried with what is left of
    ``deadline`` (``socket.create_connection`` gives each the whole timeout)."""
    last: OSError = OSError(f"no address for {host}")
    for family, kind, proto, _name, address in _resolve(host, port, deadline):
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(deadline.remaining())
            sock.connect(address)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        return sock
    raise last


def http_get(url: str, deadline: Deadline, limit: int) -> Answer:
    """GET ``url`` (following up to ``MAX_REDIRECTS`` redirects), the first ``limit`` bytes
    of the body, all within ``deadline``."""
    for _hop in range(MAX_REDIRECTS + 1):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) url: {url[:200]!r}")
        status, location, body = _get_once(parts, deadline, limit)
        if status not in REDIRECTS or not location:
            return Answer(status, body, url)
        url = urljoin(url, location)
    raise TooManyRedirects(f"more than {MAX_REDIRECTS} redirects (last to {url[:200]})")


def _get_once(parts: SplitResult, deadline: Deadline, limit: int) -> tuple[int, str | None, bytes]:
    host = cast(str, parts.hostname)
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    sock = tcp_connect(host, port, deadline)
    try:
        if https:
            sock = _tls(sock, host, deadline)
        conn = (http.client.HTTPSConnection(host, port, context=_tls_context()) if https
                else http.client.HTTPConnection(host, port))
        conn.sock = cast(socket.socket, _DeadlineSocket(sock, deadline))
        path = urlunsplit(("", "", parts.path or "/", parts.query, ""))
        conn.request("GET", path, headers={"User-Agent": "workerguard-probe",
                                           "Connection": "close"})
        response = conn.getresponse()
        body = response.read(limit)
        return response.status, response.getheader("Location"), body
    finally:
        sock.close()


def _tls(sock: socket.socket, host: str, deadline: Deadline) -> socket.socket:
    """``sock`` wrapped in TLS, its handshake within ``deadline`` (CPython bounds a whole
    handshake by the socket's timeout, however many reads it takes)."""
    try:
        tls = _tls_context().wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
    except BaseException:
        sock.close()
        raise
    try:  # the connection is the TLS socket's now
        tls.settimeout(deadline.remaining())
        tls.do_handshake()
    except BaseException:
        tls.close()
        raise
    return tls


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """The default context (certificates verified), made once: loading the CA store costs ms."""
    return ssl.create_default_context()


_Address = tuple[socket.AddressFamily, socket.SocketKind, int, str, Any]
"""One entry of ``socket.getaddrinfo``."""


def _resolve(host: str, port: int, deadline: Deadline) -> list[_Address]:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:  # an address: no lookup, nothing that can hang
        return list(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_NUMERICHOST))
    found: list[object] = []
    done = threading.Event()

    def look_up() -> None:
        try:
            found.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except Exception as exc:  # handed to the waiting probe
            found.append(exc)
        finally:
            done.set()

    threading.Thread(target=look_up, name="probe-resolve", daemon=True).start()
    if not done.wait(deadline.remaining()):
        raise TimeoutError(f"timed out after {deadline.seconds:g} s (looking up {host})")
    if isinstance(found[0], BaseException):
        raise found[0]
    return cast(list[_Address], found[0])


class _DeadlineSocket:
    """What http.client uses of a connection's socket, each step within the deadline."""

    def __init__(self, sock: socket.socket, deadline: Deadline) -> None:
        self._sock = sock
        self._deadline = deadline

    def sendall(self, data: ReadableBuffer) -> None:
        self._sock.settimeout(self._deadline.remaining())
        self._sock.sendall(data)

    def makefile(self, mode: str = "rb", *_args: object, **_kwargs: object) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self._sock, self._deadline))

    def close(self) -> None:
        """Nothing: the probe closes the socket once it has read the answer (http.client
        closes its connection before the body is read)."""


class _DeadlineReader(io.RawIOBase):
    def __init__(self, sock: socket.socket, deadline: Deadline) -> None:
        super().__init__()
        self._sock = sock
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        self._sock.settimeout(self._deadline.remaining())
        return self._sock.recv_into(buffer)
