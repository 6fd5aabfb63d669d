"""Kill and restart a testnet's daemons the way a crash and a supervisor would."""
from __future__ import annotations

import os
import select
import signal
from typing import Any

from node.api.client import call
from tests.node.conftest import start_daemon


def kill(node: dict[str, Any]) -> None:
    """SIGKILL the node's daemon and wait until it is gone."""
    fd = os.pidfd_open(node["pid"])
    os.kill(node["pid"], signal.SIGKILL)
    select.select([fd], [], [], 10)
    os.close(fd)


def restart(nodes: list[dict[str, Any]], node: dict[str, Any], *, timeout: float = 30) -> None:
    """Start the node again on its data dir; return once its gossip reaches every other node."""
    proc, _ = start_daemon(node["data_dir"])
    node["pid"] = proc.pid
    others = [n["peer_id"] for n in nodes if n is not node]
    assert call(node["socket"], "node.wait_peers", {"peers": others, "timeout": timeout}, timeout=timeout + 10)["ok"]
    # Connected is not yet meshed: wait until a note from it reaches every node (GossipSub grafts on its heartbeat).
    note = call(node["socket"], "gossip.publish", {"text": "back"})["id"]
    for n in nodes:
        assert call(n["socket"], "gossip.wait", {"id": note, "timeout": timeout}, timeout=timeout + 10)["received"], \
            n["name"]
