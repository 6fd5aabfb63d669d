"""Network namespaces for `testnet up --netns`: one namespace per node, one hub.

Layout for a network ``testnet-1a2b3c4d`` of N nodes::

    ofnode-testnet-1a2b3c4d-hub      n0 n1 ... n<N-1>   (hub ends of the veths; the switch runs here)
    ofnode-testnet-1a2b3c4d-node<i>  lo, eth0 = 10.77.0.<i+1>/24 (the other end of n<i>)

Everything is created inside these namespaces (``ip -n``), so the host's own
interfaces, routes and firewall are never touched, and two netns testnets can
use the same addresses side by side. IPv6 address generation is off on every
veth so the links carry only the testnet's traffic.

Namespaces are created, and orphans swept, under a host-wide lock: a sweep
removes every namespace named like a testnet's that no process lives in (what
a crashed run leaves behind), and must not catch one that another `up` has
just made and not yet started its processes in.
"""
from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Iterator

PREFIX = "ofnode-"
NETNS_DIR = Path("/run/netns")
LOCK_FILE = Path("/run/ofnode-testnet-netns.lock")
SUBNET = "10.77.0"
NODE_PORT = 4001
CLONE_NEWNET = 0x40000000
MAX_NODES = 200
OURS = re.compile(r"^ofnode-.+-(hub|node\d+)$")  # what hub_name and node_name make


class NetnsError(Exception):
    """A namespace operation failed; the message says what and why."""


def check_support() -> None:
    """Raise NetnsError unless this process can make network namespaces."""
    problems = []
    if os.geteuid() != 0:
        problems.append("this process is not root")
    if shutil.which("ip") is None:
        problems.append("`ip` (iproute2) is not on PATH")
    if problems:
        raise NetnsError(f"netns testnets need root and iproute2; {' and '.join(problems)} "
                         "(drop --netns to run the testnet on 127.0.0.1)")


def hub_name(network: str) -> str:
    return f"{PREFIX}{network}-hub"


def node_name(network: str, i: int) -> str:
    return f"{PREFIX}{network}-node{i}"


def node_ip(i: int) -> str:
    return f"{SUBNET}.{i + 1}"


def ip(*args: str, ns: str | None = None) -> str:
    cmd = ["ip", *(("-n", ns) if ns else ()), *args]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise NetnsError(f"`{' '.join(cmd)}` failed: {r.stderr.strip() or f'exit {r.returncode}'}")
    return r.stdout


@contextlib.contextmanager
def lock() -> Iterator[None]:
    fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def existing() -> list[str]:
    """Every namespace named by `ip netns add` that has the shape of a testnet's."""
    out = ip("netns", "list")
    return sorted(name for name in (line.split()[0] for line in out.splitlines() if line.strip()) if OURS.match(name))


def pids(name: str) -> list[int]:
    try:
        return [int(p) for p in ip("netns", "pids", name).split()]
    except NetnsError:
        return []


def create(network: str, nodes: int) -> list[str]:
    """Make the hub and the node namespaces with their links; return every namespace made.
    Call under lock(). On failure everything made so far is removed again."""
    if not 1 <= nodes <= MAX_NODES:
        raise NetnsError(f"a netns testnet has 1..{MAX_NODES} nodes")
    hub = hub_name(network)
    made: list[str] = []
    try:
        try:
            ip("netns", "add", hub)
        except NetnsError as e:
            raise NetnsError(f"netns testnets need root and iproute2 with network namespace support; {e}") from None
        made.append(hub)
        ip("link", "set", "lo", "up", ns=hub)
        for i in range(nodes):
            ns = node_name(network, i)
            ip("netns", "add", ns)
            made.append(ns)
            ip("link", "add", f"n{i}", "type", "veth", "peer", "name", "eth0", "netns", ns, ns=hub)
            ip("link", "set", f"n{i}", "addrgenmode", "none", ns=hub)
            ip("link", "set", f"n{i}", "up", ns=hub)
            ip("link", "set", "eth0", "addrgenmode", "none", ns=ns)
            ip("addr", "add", f"{node_ip(i)}/24", "dev", "eth0", ns=ns)
            ip("link", "set", "eth0", "up", ns=ns)
            ip("link", "set", "lo", "up", ns=ns)
    except BaseException:
        delete(made)
        raise
    return made


def delete(names: list[str]) -> list[str]:
    """Remove these namespaces (their veths go with them); return the ones that existed.
    Processes still inside are killed first: only our own daemons and their
    children run in a testnet's namespaces."""
    present = set(existing()) if names else set()
    removed = []
    for name in names:
        if name not in present:
            continue
        for pid in pids(name):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        with contextlib.suppress(NetnsError):
            ip("netns", "del", name)
            removed.append(name)
    return removed


def sweep(keep: frozenset[str] = frozenset()) -> list[str]:
    """Remove every testnet namespace (ofnode-<network>-hub / -node<i>) no process lives in:
    what a crashed run left behind. Call under lock()."""
    orphans = [n for n in existing() if n not in keep and not pids(n)]
    return delete(orphans)


def enter(name: str) -> tuple[Callable[[], None], int]:
    """A preexec_fn that moves the child into namespace ``name``, and the fd
    the parent must close after spawning."""
    fd = os.open(NETNS_DIR / name, os.O_RDONLY | os.O_CLOEXEC)
    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {name} failed")

    return preexec, fd
