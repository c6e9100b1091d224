"""A stand-in for a long-running worker (an RPA bot): prints a heartbeat until stopped."""

import os
import signal
import sys
import time


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    name = os.environ.get("WORKERGUARD_PROFILE", "demo")
    print(f"demo worker {os.getpid()} ({name}) up", flush=True)
    while True:
        time.sleep(30)
        print(f"demo worker {os.getpid()} alive", flush=True)


if __name__ == "__main__":
    main()
