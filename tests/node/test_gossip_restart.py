"""A node SIGKILLed and restarted with the same identity is heard by every peer at once.

py-libp2p's message id is sender + seqno, and it starts the seqno at the start time
in whole seconds, one more per message. A node that published faster than one
message a second and came back within that lead reused the seqnos of its last
life, so peers dropped its new messages as already seen (found by tests/chaos:
"gossip from the restarted node reached 3 of 8 nodes"). The burst below puts the
victim's seqno ~40 s ahead of the clock; the restart takes a few seconds.
"""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

from node import testnet
from node.api.client import call
from node.fsutil import atomic_write

from .conftest import start_daemon

pytestmark = pytest.mark.slow

BURST = 40


@dataclass
class Net:
    dir: Path
    state: dict[str, Any]
    restarted: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def nodes(self) -> list[dict[str, Any]]:
        return self.state["nodes"]

    def restart(self, node: dict[str, Any]) -> None:
        """Start the node again on its data dir; the state file names its new pid for testnet.down."""
        proc, _ = start_daemon(node["data_dir"])
        self.restarted.append(proc)
        node["pid"] = proc.pid
        atomic_write(self.dir / testnet.STATE_FILE, json.dumps(self.state, indent=2).encode(), mode=0o644)


@pytest.fixture
def net3(tmp_path: Path) -> Iterator[Net]:
    d = tmp_path / "tn"
    net = Net(d, testnet.up(d, nodes=3, dos=0, secrets=0, providers=0, timeout=60))
    try:
        yield net
    finally:
        testnet.down(d)
        for p in net.restarted:
            p.wait(timeout=10)


def _kill(pid: int) -> None:
    fd = os.pidfd_open(pid)
    try:
        os.kill(pid, signal.SIGKILL)
        assert select.select([fd], [], [], 10)[0], f"pid {pid} still alive 10 s after SIGKILL"
    finally:
        os.close(fd)
    try:
        os.waitpid(pid, 0)  # started by testnet.up from this process
    except ChildProcessError:
        pass


def _reached(nodes: list[dict[str, Any]], msg_id: str, timeout: float) -> list[bool]:
    return [call(n["socket"], "gossip.wait", {"id": msg_id, "timeout": timeout}, timeout=timeout + 10)["received"]
            for n in nodes]


def test_restarted_node_is_heard_by_every_peer_right_after_reconnecting(net3: Net) -> None:
    nodes = net3.nodes
    victim = nodes[1]
    last = ""
    for k in range(BURST):
        last = call(victim["socket"], "gossip.publish", {"text": f"before {k}"})["id"]
    assert all(_reached(nodes, last, 15)), "the burst itself did not reach every node"
    seqno_before = call(victim["socket"], "gossip.state")["seqno"]

    _kill(victim["pid"])
    net3.restart(victim)
    others = [n["peer_id"] for n in nodes if n is not victim]
    assert call(victim["socket"], "node.wait_peers", {"peers": others, "timeout": 30}, timeout=40)["ok"]

    note = call(victim["socket"], "gossip.publish", {"text": "after the restart"})["id"]
    assert _reached(nodes, note, 15) == [True, True, True]
    seqno_after = call(victim["socket"], "gossip.state")["seqno"]
    assert seqno_after > seqno_before, "the restarted node reuses the message ids of its last life"
