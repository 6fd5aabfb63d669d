"""A 4-node testnet with every node in its own network namespace behind the
shaping switch: connectivity, latency from the nodes' own gossip timing,
partition and heal, and a teardown that leaves nothing behind."""
from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from typing import Any, Iterator

import pytest

from node import testnet
from node import testnet_netns as netns
from node.api.client import call
from tests.parts import require_part

pytestmark = pytest.mark.slow

LATENCY_MS = 50


def _netns_usable() -> tuple[bool, str]:
    if os.geteuid() != 0:
        return False, "needs root"
    if shutil.which("ip") is None:
        return False, "needs iproute2 (`ip`)"
    probe = f"ofprobe-{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode:
        return False, f"`ip netns add` failed: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return True, ""


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _root_links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "node.cli.main", *args], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def net4(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    ok, why = _netns_usable()
    require_part("network namespaces (root + iproute2)", ok, why)
    d = tmp_path_factory.mktemp("netns4")
    links_before = _root_links()
    state = testnet.up(d, nodes=4, dos=1, secrets=1, providers=1, netns=True, latency_ms=LATENCY_MS, timeout=60)
    state["dir"] = d
    state["root_links_before"] = links_before
    try:
        yield state
    finally:
        # Whatever a test did, take the network down and remove its namespaces.
        try:
            testnet.down(d)
        finally:
            with netns.lock():
                netns.delete(state["netns"]["namespaces"])


def _latencies(nodes: list[dict[str, Any]], sender: int, text: str) -> list[int]:
    msg = call(nodes[sender]["socket"], "gossip.publish", {"text": text})["id"]
    out = []
    for i, n in enumerate(nodes):
        if i == sender:
            continue
        r = call(n["socket"], "gossip.wait", {"id": msg, "timeout": 15}, timeout=20)
        assert r["received"], f"{n['name']} never got {text}"
        out.append(r["received_ms"] - r["timestamp_ms"])
    return out


def test_every_node_in_its_own_namespace_sees_the_others(net4):
    nodes = net4["nodes"]
    names = _namespaces()
    assert set(net4["netns"]["namespaces"]) <= names
    for i, n in enumerate(nodes):
        s = call(n["socket"], "node.status")
        assert sorted(s["peers"]) == sorted(m["peer_id"] for m in nodes if m is not n)
        assert n["ip"] == f"10.77.0.{i + 1}" and n["addr"].startswith(f"/ip4/{n['ip']}/tcp/")
        assert any(a.startswith(f"/ip4/{n['ip']}/") for a in s["addrs"])
        # The daemon really runs inside its namespace, and only there.
        assert n["pid"] in netns.pids(n["netns"])
        assert n["pid"] not in netns.pids(nodes[(i + 1) % 4]["netns"])
    # The node addresses exist only inside the namespaces, not on the host.
    host_addrs = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    assert "10.77.0." not in host_addrs


def test_gossip_latency_follows_the_shaping(net4):
    nodes, d = net4["nodes"], net4["dir"]
    shaped = [x for k in range(3) for x in _latencies(nodes, k, f"shaped {k}")]
    # Every frame a node sends waits 50 ms in the switch: no message can be faster.
    assert min(shaped) >= LATENCY_MS, shaped
    sw = testnet.shape(d, latency_ms=0)
    assert all(p["latency_ms"] == 0 for p in sw["ports"])
    unshaped = [x for k in range(3) for x in _latencies(nodes, k + 1, f"unshaped {k}")]
    # ... and without the delay the same measurement is clearly faster.
    assert statistics.median(unshaped) < statistics.median(shaped) - 25, (shaped, unshaped)


def test_shape_one_node_from_the_cli(net4):
    d = str(net4["dir"])
    r = _cli("testnet", "shape", "--dir", d, "--node", "node3", "--latency", "30", "--jitter", "10", "--loss", "0.5",
             "--json")
    assert r.returncode == 0, r.stderr
    ports = {p["node"]: p for p in json.loads(r.stdout)["ports"]}
    assert (ports["node3"]["latency_ms"], ports["node3"]["jitter_ms"], ports["node3"]["loss_pct"]) == (30, 10, 0.5)
    assert ports["node2"]["latency_ms"] == 0 and ports["node2"]["loss_pct"] == 0
    r = _cli("testnet", "shape", "--dir", d, "--node", "node3", "--latency", "0", "--jitter", "0", "--loss", "0",
             "--json")
    assert r.returncode == 0, r.stderr
    bad = _cli("testnet", "shape", "--dir", d, "--node", "node9", "--loss", "5")
    assert bad.returncode == 1 and "unknown node(s) node9" in bad.stderr
    bad = _cli("testnet", "shape", "--dir", d, "--loss", "101")
    assert bad.returncode == 1 and "loss must lie in 0..100" in bad.stderr
    st = json.loads(_cli("testnet", "status", "--dir", d, "--json").stdout)
    assert st["netns"]["switch"]["alive"] and not st["netns"]["partitioned"]
    assert all(link["rx_frames"] > 0 for link in st["netns"]["links"])


def test_loss_drops_frames_and_tcp_recovers(net4):
    nodes, d = net4["nodes"], net4["dir"]
    lost = lambda: {p["node"]: p["lost"] for p in testnet.status(d)["netns"]["links"]}
    before = lost()
    testnet.shape(d, nodes=["node2"], loss_pct=25)
    try:
        for k in range(20):  # each message is several frames: P(no loss in 20 messages) is negligible
            msg = call(nodes[2]["socket"], "gossip.publish", {"text": f"lossy {k}"})["id"]
            for n in nodes:  # every message still arrives: TCP retransmits what the link drops
                assert call(n["socket"], "gossip.wait", {"id": msg, "timeout": 20}, timeout=30)["received"]
            if lost()["node2"] > before["node2"]:
                break
    finally:
        testnet.shape(d, nodes=["node2"], loss_pct=0)
    after = lost()
    assert after["node2"] > before["node2"]
    assert all(after[n] == before[n] for n in after if n != "node2"), (before, after)


def test_partition_stops_gossip_across_and_heal_restores_it(net4):
    nodes, d = net4["nodes"], net4["dir"]
    r = _cli("testnet", "partition", "--dir", str(d), "node0,node1", "node2,node3", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["groups"] == [["node0", "node1"], ["node2", "node3"]]
    a = call(nodes[0]["socket"], "gossip.publish", {"text": "left half"})["id"]
    b = call(nodes[3]["socket"], "gossip.publish", {"text": "right half"})["id"]
    # Within each half the message arrives ...
    assert call(nodes[1]["socket"], "gossip.wait", {"id": a, "timeout": 10}, timeout=15)["received"]
    assert call(nodes[2]["socket"], "gossip.wait", {"id": b, "timeout": 10}, timeout=15)["received"]
    # ... across the cut it does not, within a few seconds.
    t0 = time.monotonic()
    assert not call(nodes[2]["socket"], "gossip.wait", {"id": a, "timeout": 3}, timeout=10)["received"]
    for n, msg in ((nodes[3], a), (nodes[0], b), (nodes[1], b)):
        left = max(0.1, 3 - (time.monotonic() - t0))
        assert not call(n["socket"], "gossip.wait", {"id": msg, "timeout": left}, timeout=10)["received"], n["name"]
    blocked = {p["node"]: p["blocked"] for p in testnet.status(d)["netns"]["links"]}
    assert all(v > 0 for v in blocked.values()), blocked

    r = _cli("testnet", "heal", "--dir", str(d), "--json")
    assert r.returncode == 0 and not json.loads(r.stdout)["partitioned"], r.stderr
    t0 = time.monotonic()
    c = call(nodes[1]["socket"], "gossip.publish", {"text": "healed left"})["id"]
    e = call(nodes[2]["socket"], "gossip.publish", {"text": "healed right"})["id"]
    for n in nodes:
        for msg in (c, e):
            assert call(n["socket"], "gossip.wait", {"id": msg, "timeout": 30}, timeout=40)["received"], n["name"]
    print(f"gossip crossed again {time.monotonic() - t0:.1f} s after heal")


def test_down_leaves_nothing_and_sweeps_a_crashed_run(net4):
    d = net4["dir"]
    # Leftovers of a crashed run: a namespace with a link and nobody inside.
    crashed = "ofnode-testnet-crashed0-node0"
    subprocess.run(["ip", "netns", "add", crashed], check=True)
    subprocess.run(["ip", "-n", crashed, "link", "add", "a0", "type", "veth", "peer", "name", "b0"], check=True)
    # And this run's switch dies without cleaning up.
    os.kill(net4["netns"]["switch"]["pid"], signal.SIGKILL)
    pids = [n["pid"] for n in net4["nodes"]]
    r = _cli("testnet", "down", "--dir", str(d), "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["stopped"] == 4 and res["killed"] == 0
    assert set(res["namespaces_removed"]) == {*net4["netns"]["namespaces"], crashed}
    assert not ({*net4["netns"]["namespaces"], crashed} & _namespaces())
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
    # None of our links ended up on the host (others' tests may add links of their own meanwhile).
    appeared = _root_links() - net4["root_links_before"]
    assert not appeared & {"eth0", "n0", "n1", "n2", "n3", "a0", "b0"}, appeared
    st = testnet.status(d)
    assert not st["running"] and not any(n["alive"] for n in st["nodes"]) and not st["netns"]["switch"]["alive"]
    # Commands on a stopped netns testnet say so.
    r = _cli("testnet", "heal", "--dir", str(d))
    assert r.returncode == 1 and "not running" in r.stderr


def test_down_cleans_up_after_an_up_that_died_midway(tmp_path):
    ok, why = _netns_usable()
    require_part("network namespaces (root + iproute2)", ok, why)
    d = tmp_path / "tn"
    up = subprocess.Popen([sys.executable, "-m", "node.cli.main", "testnet", "up", "--netns", "--nodes", "2",
                           "--dos", "1", "--secrets", "1", "--providers", "1", "--dir", str(d)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for line in up.stderr:  # type: ignore[union-attr]
            if line.startswith("started 2 daemons"):
                break
        else:
            pytest.fail("testnet up ended before it started its daemons")
        up.kill()  # the CLI dies while the daemons come up
        up.wait()
        st = json.loads((d / testnet.STATE_FILE).read_text())
        assert len(st["nodes"]) == 2 and not st["running"]
        assert set(st["netns"]["namespaces"]) <= _namespaces()
        res = testnet.down(d)
        assert res["stopped"] + res["killed"] == 2
        assert not set(st["netns"]["namespaces"]) & _namespaces()
        assert all(not netns.pids(ns) for ns in st["netns"]["namespaces"])
    finally:
        if up.poll() is None:
            up.kill()
        if (d / testnet.STATE_FILE).exists():
            st = json.loads((d / testnet.STATE_FILE).read_text())
            testnet.down(d)
            with netns.lock():
                netns.delete(st.get("netns", {}).get("namespaces", []))


def test_clear_errors_without_root_or_netns(tmp_path, monkeypatch):
    with pytest.raises(testnet.TestnetError, match="add --netns"):
        testnet.up(tmp_path / "a", nodes=2, dos=1, secrets=1, providers=1, latency_ms=20)
    with pytest.raises(testnet.TestnetError, match=r"jitter must lie in 0\.\.latency ms \(--latency MS"):
        testnet.up(tmp_path / "a", nodes=2, dos=1, secrets=1, providers=1, netns=True, latency_ms=5, jitter_ms=10)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(testnet.TestnetError, match="netns testnets need root and iproute2; this process is not root"):
        testnet.up(tmp_path / "b", nodes=2, dos=1, secrets=1, providers=1, netns=True)
    assert not (tmp_path / "b").exists()
