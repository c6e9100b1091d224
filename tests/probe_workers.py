"""Stand-in workers for the probe tests; each prints "ready" once it serves.

Started by workerguard, ``{instance}`` and ``{index}`` in a path are this instance's, and
a PORT is the first instance's: instance N uses PORT + N.

http PORT FLAG [--delay S] [--listen-at S] [--garbage PATH] [--garbage-first N]
     [--term-file PATH]      answer GET / with 200, or with 500 while FLAG exists;
                             start listening only after S seconds (a slow start), or
                             once the process is S seconds old (by the kernel's start);
                             answer non-HTTP bytes while PATH exists, and to the first
                             N connections; on SIGTERM write "<monotonic> <age>" to PATH
tcp PORT FLAG                accept connections until FLAG exists, then close the port
                             and live on (a worker that lost its listener)
heartbeat PATH STOP PERIOD   touch PATH every PERIOD seconds until STOP exists, then
                             live on without touching (a hung bot)
hang PIDFILE                 a probe command that never ends: writes its own pid and
                             its child's pid to PIDFILE, then sleeps for ever
"""

from __future__ import annotations

import argparse
import http.server
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

POLL = 0.05


def mine(text: str) -> str:
    """``{instance}`` and ``{index}`` of this instance (from workerguard's environment)."""
    return (text.replace("{instance}", os.environ.get("WORKERGUARD_INSTANCE", "none"))
            .replace("{index}", os.environ.get("WORKERGUARD_INDEX", "0")))


def my_port(base: int) -> int:
    """Instance N of a profile listens on ``base + N``."""
    return base + int(os.environ.get("WORKERGUARD_INDEX", "0"))


def live_on() -> None:
    while True:
        time.sleep(3600)


def process_age() -> float:
    """Seconds since this process started, by the kernel's count (``/proc/self/stat``
    field 22, clock ticks since boot, against CLOCK_BOOTTIME): exact to the tick, and the
    tick is rounded down, so the age is never short."""
    fields = Path("/proc/self/stat").read_bytes().rsplit(b")", 1)[1].split()
    started = int(fields[19]) / os.sysconf("SC_CLK_TCK")
    return time.clock_gettime(time.CLOCK_BOOTTIME) - started


def note_sigterm(path: Path) -> None:
    """On SIGTERM: write when (monotonic) and at what age it came, then exit."""
    def handler(_signum: int, _frame: object) -> None:
        path.write_text(f"{time.monotonic()} {process_age()}\n")
        os._exit(0)

    signal.signal(signal.SIGTERM, handler)


def serve_http(port: int, flag: Path, delay: float, garbage: Path | None = None,
               garbage_first: int = 0) -> None:
    answered = 0

    class Handler(http.server.BaseHTTPRequestHandler):
        def handle(self) -> None:
            nonlocal answered
            answered += 1
            if answered <= garbage_first or (garbage is not None and garbage.exists()):
                self.wfile.write(b"garbage\r\n\r\n")  # a port that does not speak HTTP
                return
            super().handle()

        def do_GET(self) -> None:
            status = 500 if flag.exists() else 200
            body = f"status {status} from {os.getpid()}\n".encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    time.sleep(delay)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print("ready", flush=True)
    server.serve_forever()


def serve_tcp(port: int, flag: Path) -> None:
    listener = socket.create_server(("127.0.0.1", port))
    listener.settimeout(POLL)
    print("ready", flush=True)
    while not flag.exists():
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        conn.close()
    listener.close()
    live_on()


def heartbeat(path: Path, stop: Path, period: float) -> None:
    path.touch()
    print("ready", flush=True)
    while not stop.exists():
        path.touch()
        time.sleep(period)
    live_on()


def hang(pidfile: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    pidfile.write_text(f"{os.getpid()} {child.pid}\n")
    print("hanging", flush=True)
    live_on()


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("http")
    p.add_argument("port", type=int)
    p.add_argument("flag", type=Path)
    p.add_argument("--delay", type=float, default=0.0)
    p.add_argument("--listen-at", type=float, default=0.0)
    p.add_argument("--term-file", type=Path)
    p.add_argument("--garbage", type=Path)
    p.add_argument("--garbage-first", type=int, default=0)
    p = sub.add_parser("tcp")
    p.add_argument("port", type=int)
    p.add_argument("flag", type=Path)
    p = sub.add_parser("heartbeat")
    p.add_argument("path", type=Path)
    p.add_argument("stop", type=Path)
    p.add_argument("period", type=float)
    p = sub.add_parser("hang")
    p.add_argument("pidfile", type=Path)
    args = parser.parse_args()
    for name in ("flag", "path", "stop", "pidfile", "garbage", "term_file"):
        if getattr(args, name, None) is not None:
            setattr(args, name, Path(mine(str(getattr(args, name)))))
    if hasattr(args, "port"):
        args.port = my_port(args.port)
    if args.mode == "http":
        if args.term_file is not None:
            note_sigterm(args.term_file)
        time.sleep(max(0.0, args.listen_at - process_age()))
        serve_http(args.port, args.flag, args.delay, args.garbage, args.garbage_first)
    elif args.mode == "tcp":
        serve_tcp(args.port, args.flag)
    elif args.mode == "heartbeat":
        heartbeat(args.path, args.stop, args.period)
    else:
        hang(args.pidfile)


if __name__ == "__main__":
    main()
