"""Boxes on a switch, for the tests: a bridge in this namespace and one network namespace
per box, each joined to the bridge by a veth pair (the commands of ../shared/FLEET.md
§5.2, verified on the CI machine).

Every name starts with a prefix unique to the run (``wgi`` and 5 hex digits), so parallel
runs never collide, and the subnet is a free ``10.233.N.0/24``. A box is cut off with an
nft table in its own namespace that drops everything through its link (a silent black
hole, like a lost network: no RST, no ICMP), and healed by deleting that table.
``close`` kills what still runs in the namespaces (only these, found by their names),
then deletes the namespaces (their veths go with them) and the bridge.

Needs root, ``ip`` and ``nft`` (Debian's nftables; ``.ci/run`` installs it).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

CUT_TABLE = "wgicut"


def missing() -> str | None:
    """Why a network bed cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in ("ip", "nft", "nsenter"):
        if shutil.which(tool) is None:
            return f"needs {tool} (apt-get install nftables iproute2 util-linux)"
    return None


def _run(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")


def _free_subnet() -> str:
    """``10.233.N`` with no address of this namespace in it."""
    used = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True,
                          check=True).stdout
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True,
                            check=True).stdout
    for n in random.sample(range(1, 255), 254):
        prefix = f"10.233.{n}."
        if prefix not in used and prefix not in routes:
            return f"10.233.{n}"
    raise RuntimeError("no free 10.233.N.0/24 subnet")


@dataclass
class Network:
    boxes: int
    prefix: str = field(default_factory=lambda: f"wgi{uuid.uuid4().hex[:5]}")
    subnet: str = field(default_factory=_free_subnet)
    cut: set[int] = field(default_factory=set)
    _made: list[str] = field(default_factory=list)

    @property
    def bridge(self) -> str:
        return f"{self.prefix}-br"

    @property
    def gateway(self) -> str:
        """This namespace's address on the bridge."""
        return f"{self.subnet}.1"

    def namespace(self, box: int) -> str:
        return f"{self.prefix}-b{box}"

    def address(self, box: int) -> str:
        return f"{self.subnet}.{11 + box}"

    def enter(self, box: int) -> list[str]:
        """The argv prefix that runs a command in ``box`` (``nsenter``, not ``ip netns
        exec``: that remounts /sys)."""
        return ["nsenter", f"--net=/run/netns/{self.namespace(box)}"]

    def start(self) -> Network:
        try:
            _run("ip", "link", "add", self.bridge, "type", "bridge")
            self._made.append("bridge")
            _run("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            _run("ip", "link", "set", self.bridge, "up")
            for box in range(self.boxes):
                self._add_box(box)
        except BaseException:
            self.close()
            raise
        return self

    def _add_box(self, box: int) -> None:
        ns, veth = self.namespace(box), f"{self.prefix}-v{box}"
        _run("ip", "netns", "add", ns)
        self._made.append(ns)
        _run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _run("ip", "link", "set", veth, "master", self.bridge)
        _run("ip", "link", "set", veth, "up")
        _run("ip", "-n", ns, "addr", "add", f"{self.address(box)}/24", "dev", "eth0")
        _run("ip", "-n", ns, "link", "set", "eth0", "up")
        _run("ip", "-n", ns, "link", "set", "lo", "up")

    # faults --------------------------------------------------------------------------
    def isolate(self, box: int) -> None:
        """Drop everything in and out of ``box``'s link (its own loopback still works:
        a client inside the box still reaches the box's servers)."""
        rules = (f"table inet {CUT_TABLE} {{\n"
                 "  chain in { type filter hook input priority 0; iifname \"eth0\" drop; }\n"
                 "  chain out { type filter hook output priority 0; oifname \"eth0\" drop; }\n"
                 "}\n")
        done = subprocess.run([*self.enter(box), "nft", "-f", "-"], input=rules, text=True,
                              capture_output=True, timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"nft in {self.namespace(box)}: {done.stderr.strip()}")
        self.cut.add(box)

    def heal(self, box: int) -> None:
        _run(*self.enter(box), "nft", "delete", "table", "inet", CUT_TABLE)
        self.cut.discard(box)

    # teardown ------------------------------------------------------------------------
    def close(self) -> None:
        """Kill what runs in this network's namespaces, delete their veths, the namespaces
        and the bridge."""
        for box in range(self.boxes):
            name = self.namespace(box)
            if name not in self._made:
                continue
            self._kill_inside(name)
            with contextlib.suppress(RuntimeError):  # at once: a namespace goes when it can
                _run("ip", "link", "del", f"{self.prefix}-v{box}")
            with contextlib.suppress(RuntimeError):
                _run("ip", "netns", "del", name)
        if "bridge" in self._made:
            with contextlib.suppress(RuntimeError):
                _run("ip", "link", "del", self.bridge)
        self._made.clear()

    @staticmethod
    def _kill_inside(namespace: str) -> None:
        listed = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True,
                                text=True, timeout=30)
        for pid in _pids(listed.stdout.split()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _pids(words: Sequence[str]) -> list[int]:
    return [int(w) for w in words if w.isdigit() and int(w) != os.getpid()]


def exists(namespace: str) -> bool:
    return Path(f"/run/netns/{namespace}").exists()
