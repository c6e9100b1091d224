"""A TCP proxy on 127.0.0.1 that can black-hole its connections, like a NAT losing state.

``black_hole()``: every connection open now stops forwarding in both directions, for
good, without closing (what it reads is dropped, nothing is sent back), and new
connections are accepted but never forwarded. ``heal()``: new connections forward
normally again; the ones that died stay dead, as behind a NAT that lost their state.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass, field


@dataclass
class _Link:
    client: socket.socket
    upstream: socket.socket | None
    dead: threading.Event = field(default_factory=threading.Event)


class BlackHoleProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._holed = threading.Event()
        self._links: list[_Link] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True, name="proxy-accept").start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def connections(self) -> int:
        """Connections accepted so far."""
        with self._lock:
            return len(self._links)

    def black_hole(self) -> None:
        with self._lock:
            self._holed.set()
            for link in self._links:
                link.dead.set()

    def heal(self) -> None:
        self._holed.clear()

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        with self._lock:
            for link in self._links:
                for sock in (link.client, link.upstream):
                    if sock is not None:
                        with contextlib.suppress(OSError):
                            sock.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if self._closed.is_set():  # close() ran while this accept was returning
                    client.close()
                    return
                if self._holed.is_set():  # accepted, then silence
                    link = _Link(client, None)
                    link.dead.set()
                    self._links.append(link)
                    threading.Thread(target=self._drain, args=(client,), daemon=True).start()
                    continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            link = _Link(client, upstream)
            with self._lock:
                if self._closed.is_set():
                    client.close()
                    upstream.close()
                    return
                self._links.append(link)
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(link, src, dst), daemon=True).start()

    @staticmethod
    def _drain(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while sock.recv(65536):
                pass

    @staticmethod
    def _pump(link: _Link, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                if not link.dead.is_set():
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            if not link.dead.is_set():  # a real close is forwarded; a dead link stays silent
                for sock in (src, dst):
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
