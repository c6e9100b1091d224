"""A worker that behaves like real programs do to whatever identified it.

--reexec-clean     re-exec itself once with an empty environment (``env -i``)
--setproctitle T   rename itself with setproctitle (which also wipes /proc/PID/environ)
--daemon           double-fork: the launcher exits 0, the grandchild runs on
--orphan-helper    start a helper that ignores SIGTERM, which outlives this process
--exit-after S     exit (code 0) after S seconds
--tag TAG          a marker for the tests' match regexes
Prints one line "shapeshifter PID ready" (to stdout) once it is in its final form.
"""

import argparse
import os
import signal
import subprocess
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reexec-clean", action="store_true")
    parser.add_argument("--setproctitle", default=None)
    parser.add_argument("--daemon", action="store_true")
    parser.add_argument("--orphan-helper", action="store_true")
    parser.add_argument("--exit-after", type=float, default=None)
    parser.add_argument("--tag", default="")
    args, _ = parser.parse_known_args()
    parser.add_argument("--reexeced", action="store_true")
    args, _ = parser.parse_known_args()
    if args.reexec_clean and not args.reexeced:
        argv = [sys.executable, __file__, *sys.argv[1:], "--reexeced"]
        os.execve(sys.executable, argv, {})
    if args.daemon and os.environ.get("SHAPESHIFTER_DAEMON") != "1":
        if os.fork() > 0:
            os._exit(0)  # the launcher exits 0 at once
        os.setsid()
        if os.fork() > 0:
            os._exit(0)
    if args.setproctitle:
        import setproctitle

        setproctitle.setproctitle(args.setproctitle)
    if args.orphan_helper:
        subprocess.Popen([sys.executable, "-c",
                          "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                          f"time.sleep(3600)  # helper {args.tag}"])
    print(f"shapeshifter {os.getpid()} ready", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    deadline = None if args.exit_after is None else time.monotonic() + args.exit_after
    while deadline is None or time.monotonic() < deadline:
        time.sleep(0.05)


if __name__ == "__main__":
    main()
