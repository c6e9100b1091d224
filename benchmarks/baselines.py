"""The baselines of the restart and idle rows: supervisord and circusd (the ``bench`` extra).

Each runs in the foreground from a config in its own temporary directory and is
stopped through its own control interface (see ``supervised.System``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import shlex
import subprocess
import sys
from importlib.metadata import version
from typing import Any

import psutil

from benchmarks.supervised import START_SECONDS, Counted, System
from tests.support import poll_for

BASELINES = {"supervisord": "supervisor", "circusd": "circus"}
"""Baseline name -> the distribution that provides it (the ``bench`` extra)."""
CIRCUS_CHECK_DELAY = 1.0


def installed(baseline: str) -> bool:
    return importlib.util.find_spec(BASELINES[baseline]) is not None


# supervisord --------------------------------------------------------------------------------
class Supervisord(System):
    """supervisord in the foreground: program ``one`` (1 instance, started) and ``many``
    (``numprocs`` = the most instances, started by ``scale``), same command line."""

    name = "supervisord"

    @property
    def label(self) -> str:
        return f"supervisord {version('supervisor')}"

    def start(self, instances: int) -> None:
        import xmlrpc.client

        from supervisor.xmlrpc import SupervisorTransport

        sock = self.dir / "s.sock"
        command = shlex.join(self.procs.argv).replace("%", "%%")

        def program(name: str, count: int, autostart: bool) -> str:
            return (f"[program:{name}]\ncommand={command}\nnumprocs={count}\n"
                    f"process_name=%(program_name)s_%(process_num)02d\n"
                    f"autostart={str(autostart).lower()}\nautorestart=true\n"
                    f"startsecs={START_SECONDS}\nstopwaitsecs=5\n"
                    f"stdout_logfile=NONE\nredirect_stderr=true\n")

        conf = self.dir / "supervisord.conf"
        conf.write_text(
            f"[unix_http_server]\nfile={sock}\n"
            f"[supervisord]\nnodaemon=true\nlogfile={self.dir / 'supervisord.log'}\n"
            f"pidfile={self.dir / 'supervisord.pid'}\nchildlogdir={self.dir}\nloglevel=warn\n"
            f"user={psutil.Process().username()}\n"
            "[rpcinterface:supervisor]\n"
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n"
            + program("one", 1, True) + program("many", instances, False))
        self.main = self._popen([sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(conf)],
                                "stdout.log")
        self.rpc: Any = xmlrpc.client.ServerProxy(
            "http://127.0.0.1", transport=SupervisorTransport(None, None, f"unix://{sock}"))
        [pid] = self.wait_instances(1, timeout=30)
        poll_for(lambda: self._answers() and self.confirmed(pid), 30, message="supervisord's instance")

    def _answers(self) -> bool:
        assert self.main.poll() is None, (self.dir / "stdout.log").read_text()[-2000:]
        try:
            return bool(self.rpc.supervisor.getState())
        except OSError:
            return False

    def _running(self) -> set[int]:
        return {info["pid"] for info in self.rpc.supervisor.getAllProcessInfo()
                if info["statename"] == "RUNNING"}

    def confirmed(self, pid: int) -> bool:
        return pid in self._running()

    def scale(self, instances: int) -> None:
        self.rpc.supervisor.stopProcessGroup("one")
        self.rpc.supervisor.startProcessGroup("many")  # waits until they are RUNNING
        pids = self.wait_instances(instances)
        poll_for(lambda: set(pids) <= self._running(), 30, message="supervisord's instances")

    def counted(self) -> list[Counted]:
        return [Counted("supervisord", self._tree(psutil.Process(self.main.pid)))]

    def shutdown(self) -> None:
        if getattr(self, "main", None) is None or self.main.poll() is not None:
            return
        try:
            self.rpc.supervisor.shutdown()
        except OSError:
            return  # not answering: the leftovers are killed by PID
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.main.wait(30)


# circusd ------------------------------------------------------------------------------------
class Circusd(System):
    """circusd in the foreground with one watcher (``respawn = true``). circus replaces
    dead processes only in its periodic check, every ``check_delay`` s: 5 s by default
    in an ini file, 1 s here (the ``Arbiter``'s default, and supervisord's tick); circus's
    defaults otherwise. ``scale`` is circus's ``incr``."""

    name = "circusd"

    @property
    def label(self) -> str:
        return f"circusd {version('circus')} (check_delay {CIRCUS_CHECK_DELAY:g} s)"

    def start(self, instances: int) -> None:
        from circus.client import CircusClient

        self.endpoint = f"ipc://{self.dir / 'c.sock'}"
        ini = self.dir / "circus.ini"
        ini.write_text(
            f"[circus]\nendpoint = {self.endpoint}\npubsub_endpoint = ipc://{self.dir / 'p.sock'}\n"
            f"check_delay = {CIRCUS_CHECK_DELAY:g}\nstatsd = false\n"
            f"[watcher:worker]\ncmd = {shlex.quote(self.procs.argv[0])}\n"
            f"args = {shlex.join(self.procs.argv[1:])}\nnumprocesses = 1\nrespawn = true\n"
            "close_child_stdout = true\nclose_child_stderr = true\n")
        self.main = self._popen([sys.executable, "-m", "circus.circusd", "--log-level", "warning",
                                 str(ini)], "circusd.log")
        self.client: Any = CircusClient(endpoint=self.endpoint, timeout=60)  # scaling to 50 waits for them
        [pid] = self.wait_instances(1, timeout=30)
        poll_for(lambda: self._answers() and self.confirmed(pid), 30, message="circusd's instance")

    def _call(self, command: str, **properties: Any) -> dict[str, Any]:
        answer: dict[str, Any] = self.client.call({"command": command, "properties": properties})
        assert answer.get("status") == "ok", answer
        return answer

    def _answers(self) -> bool:
        assert self.main.poll() is None, (self.dir / "circusd.log").read_text()[-2000:]
        try:
            return bool(self._call("list"))
        except Exception:  # circus.exc.CallError while circusd starts
            return False

    def confirmed(self, pid: int) -> bool:
        return pid in self._call("list", name="worker")["pids"]

    def scale(self, instances: int) -> None:
        self._call("incr", name="worker", nb=instances - 1, waiting=True)
        pids = self.wait_instances(instances)
        poll_for(lambda: all(self.confirmed(pid) for pid in pids), 30, message="circusd's instances")

    def counted(self) -> list[Counted]:
        return [Counted("circusd", self._tree(psutil.Process(self.main.pid)))]

    def shutdown(self) -> None:
        if getattr(self, "main", None) is None:
            return
        try:
            if self.main.poll() is None:
                with contextlib.suppress(Exception):  # not answering: killed by PID below
                    self._call("quit", waiting=True)
                    self.main.wait(30)
        finally:
            self.client.stop()
