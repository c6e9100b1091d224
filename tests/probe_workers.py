"""Stand-in workers for the probe tests; each prints "ready" once it serves.

Started by workerguard, ``{instance}`` and ``{index}`` in a path are this instance's, and
a PORT is the first instance's: instance N uses PORT + N.

http PORT FLAG [--delay S]   answer GET / with 200, or with 500 while FLAG exists;
                             start listening only after S seconds (a slow start)
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


def serve_http(port: int, flag: Path, delay: float) -> None:
    class Handler(http.server.BaseHTTPRequestHandler):
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
    for name in ("flag", "path", "stop", "pidfile"):
        if hasattr(args, name):
            setattr(args, name, Path(mine(str(getattr(args, name)))))
    if hasattr(args, "port"):
        args.port = my_port(args.port)
    if args.mode == "http":
        serve_http(args.port, args.flag, args.delay)
    elif args.mode == "tcp":
        serve_tcp(args.port, args.flag)
    elif args.mode == "heartbeat":
        heartbeat(args.path, args.stop, args.period)
    else:
        hang(args.pidfile)


if __name__ == "__main__":
    main()
