"""A small stand-in worker for the tests: sleeps until stopped.

--children N     start N child processes (a launcher with its workers)
--ignore-term    ignore SIGTERM (only SIGKILL ends it)
--exit-code C    exit with code C at once (a worker that crashes on start)
--tag TAG        a marker for the tests' match regexes
--chatter N      write a line of N bytes to stdout every 5 ms (a worker that logs a lot)
--probe S        be the worker's own health check: print, sleep S seconds, exit 0
--reap           reap its children as they exit (as a real launcher does: their pids are freed)
"""

import argparse
import os
import signal
import subprocess
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--children", type=int, default=0)
    parser.add_argument("--ignore-term", action="store_true")
    parser.add_argument("--exit-code", type=int, default=None)
    parser.add_argument("--tag", default="")
    parser.add_argument("--chatter", type=int, default=0)
    parser.add_argument("--probe", type=float, default=None)
    parser.add_argument("--reap", action="store_true")
    args = parser.parse_args()
    if args.probe is not None:
        print(f"probe {os.getpid()} ok", flush=True)
        time.sleep(args.probe)
        return
    if args.exit_code is not None:
        print(f"sleeper {os.getpid()} failing with {args.exit_code}", flush=True)
        sys.exit(args.exit_code)
    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.reap:  # children that exit are reaped by the kernel at once
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    children = [
        subprocess.Popen([sys.executable, __file__, "--tag", f"{args.tag}-child"]
                         + (["--ignore-term"] if args.ignore_term else []))
        for _ in range(args.children)
    ]
    print(f"sleeper {os.getpid()} up, children {[c.pid for c in children]}, "
          f"SIGINT={signal.getsignal(signal.SIGINT)}", flush=True)
    line = ("x" * (args.chatter - 1) + "\n").encode()
    while True:
        if args.chatter:
            os.write(1, line)
        time.sleep(0.005 if args.chatter else 3600)


if __name__ == "__main__":
    main()
