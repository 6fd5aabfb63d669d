"""Failover on a real testnet: a provider killed mid-job, a DOS coordinator
killed during bidding. 3 DOS peers with quorum 2, so one may die."""
from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from node import testnet
from node.api.client import ApiClient, call
from node.market.election import dos_ranking
from tests.helpers.daemons import kill, restart
from tests.helpers.python_ai import make_python_ai

pytestmark = pytest.mark.slow

SLOW_AI = '''import time


def run(data: bytes) -> bytes:
    time.sleep(2.0)  # long enough to kill its provider mid-job
    return data[::-1]
'''


def make_slow_ai(root: Path) -> Path:
    return make_python_ai(root, "slow-echo", "slow", SLOW_AI)


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    d = tmp_path_factory.mktemp("failover")
    state = testnet.up(d, nodes=5, dos=3, secrets=3, providers=2, dos_quorum=2, timeout=60)
    state["dir"] = d
    state["slow"] = call(state["nodes"][0]["socket"], "ai.publish",
                         {"dir": str(make_slow_ai(d / "slow-ai"))}, timeout=60)["cid"]
    try:
        yield state
    finally:
        (d / testnet.STATE_FILE).write_text(json.dumps({k: v for k, v in state.items() if k not in ("dir",)}))
        testnet.down(d)


def test_provider_killed_mid_job_finishes_on_the_other(net, tmp_path):
    consumer = net["nodes"][0]
    data = tmp_path / "in.bin"
    data.write_bytes(b"ofnode failover")
    killed: list[dict] = []

    def on_progress(p: dict) -> None:
        if p.get("stage") == "running" and not killed:
            victim = next(n for n in net["nodes"] if n["peer_id"] == job_provider[0])
            kill(victim)
            killed.append(victim)
        elif p.get("stage") == "assigned":
            job_provider[:] = [p["provider"]]

    job_provider: list[str] = []
    with ApiClient(consumer["socket"], timeout=120) as c:
        job = c.call("job.submit", {"ai_cid": net["slow"], "input_path": str(data), "deadline_s": 90},
                     on_progress=on_progress)
    assert killed, "the job finished before its provider could be killed"
    assert base64.b64decode(job["output_b64"]) == data.read_bytes()[::-1]
    assert job["attempts"] == 2 and job["provider"] != killed[0]["peer_id"]
    restart(net["nodes"], killed[0])


def test_coordinator_killed_during_bidding_another_dos_assigns(net, tmp_path):
    """Pick a request id whose coordinator (rank 0) is a dead DOS peer."""
    dos = [n for n in net["nodes"] if "dos" in n["roles"]]
    victim = dos[0]
    kill(victim)
    try:
        dos_ids = [n["peer_id"] for n in dos]
        rid = next(f"{i:032x}" for i in range(1000) if dos_ranking(f"{i:032x}", dos_ids)[0] == victim["peer_id"])
        data = tmp_path / "in.bin"
        data.write_bytes(b"coordinator down")
        job = call(net["nodes"][3]["socket"], "job.submit",
                   {"ai_cid": net["slow"], "input_path": str(data), "deadline_s": 60, "request_id": rid}, timeout=90)
        assert job["id"] == rid and base64.b64decode(job["output_b64"]) == b"coordinator down"[::-1]
        # The takeover waited the coordinator's grace period (1 s) after the bidding window.
        assert job["stages"]["assigned"] >= 1.0
    finally:
        restart(net["nodes"], victim)
