"""A real 5-node testnet on loopback, driven through the CLI and the API."""
from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys

import pytest
import trio

from node import testnet
from node.api.client import ApiClient, call
from node.identity import Identity
from node.p2p import envelope as env

from .conftest import start_daemon

pytestmark = pytest.mark.slow


def others(state, i):
    return sorted(n["peer_id"] for j, n in enumerate(state["nodes"]) if j != i)


def test_every_node_sees_the_others(net5):
    for i, n in enumerate(net5["nodes"]):
        s = call(n["socket"], "node.status")
        assert s["peer_id"] == n["peer_id"]
        assert s["peers"] == others(net5, i)
        assert s["network"] == net5["network"]
        assert sorted(s["roles"]) == sorted(n["roles"])


def test_status_json_from_the_cli(net5):
    n = net5["nodes"][2]
    out = subprocess.run([sys.executable, "-m", "node.cli.main", "--socket", n["socket"], "status", "--json"],
                         check=True, capture_output=True, text=True).stdout
    s = json.loads(out)
    assert {"peer_id", "addrs", "roles", "network", "peers"} <= set(s)
    assert s["addrs"][0].endswith(f"/p2p/{n['peer_id']}")
    assert len(s["peers"]) == 4


def test_roles_follow_the_layout(net5):
    roles = [n["roles"] for n in net5["nodes"]]
    assert roles == [["dos"], ["dos"], ["secrets"], ["secrets", "provider"], ["secrets", "provider"]]
    g = (net5["dir"] / "genesis.toml").read_text()
    for n in net5["nodes"][:2]:
        assert n["peer_id"] in g


def test_message_reaches_every_node_exactly_once(net5):
    nodes = net5["nodes"]
    ids = [call(nodes[i]["socket"], "gossip.publish", {"text": f"note {i}"})["id"] for i in (0, 3)]
    for msg_id in ids:
        for n in nodes:
            r = call(n["socket"], "gossip.wait", {"id": msg_id, "timeout": 10})
            assert r["received"], f"{n['name']} never got {msg_id}"
    # A later message from a third node arrives after any straggling duplicate
    # of the first two would have; then count copies.
    last = call(nodes[1]["socket"], "gossip.publish", {"text": "last"})["id"]
    for n in nodes:
        assert call(n["socket"], "gossip.wait", {"id": last, "timeout": 10})["received"]
        for msg_id in ids:
            assert call(n["socket"], "gossip.wait", {"id": msg_id, "timeout": 1})["copies"] == 1


async def test_bad_envelopes_are_rejected_and_counted(net5):
    """A hostile peer joins the gossip topic and publishes bad envelopes."""
    from libp2p.pubsub.gossipsub import PROTOCOL_ID_V12, GossipSub
    from libp2p.pubsub.pubsub import Pubsub
    from libp2p.tools.anyio_service import background_trio_service

    from node.metrics import node_metrics
    from node.p2p.envelope_pb2 import Envelope
    from node.p2p.host import P2PHost

    target = net5["nodes"][0]
    before = call(target["socket"], "node.status")["gossip"]["rejected"]
    evil = Identity.generate()
    p2p = P2PHost(identity=evil, listen=["/ip4/127.0.0.1/tcp/0"], bootstrap=[], metrics=node_metrics())
    router = GossipSub(protocols=[PROTOCOL_ID_V12], degree=3, degree_low=2, degree_high=4,
                       heartbeat_interval=1, spam_protection_enabled=False)
    pubsub = Pubsub(p2p.host, router)
    topic = f"/ofnode/{net5['network']}/gossip/1"
    net = net5["network"]
    good = seal_ok = env.seal(evil, net, "node.note", b"fine")
    e = Envelope.FromString(good)
    bad = {
        env.BAD_SIGNATURE: Envelope(body=e.body, signature=bytes(64)).SerializeToString(),
        env.WRONG_NETWORK: env.seal(evil, "some-other-net", "node.note", b"x"),
        env.STALE: env.seal(evil, net, "node.note", b"x", timestamp_ms=env.now_ms() - 3_600_000),
        env.FUTURE: env.seal(evil, net, "node.note", b"x", timestamp_ms=env.now_ms() + 3_600_000),
        env.OVERSIZE: env.seal(evil, net, "node.note", b"x" * 70_000),
        env.MALFORMED: b"\x0a\xff\xff\xff garbage",
    }
    with trio.fail_after(30):
        async with p2p.running(), background_trio_service(pubsub), background_trio_service(router):
            await pubsub.wait_until_ready()
            await pubsub.subscribe(topic)
            assert await p2p.connect_addr(target["addr"])
            # Wait until the target knows we subscribe (its mesh or fanout includes us).
            while topic not in pubsub.peer_topics or not pubsub.peer_topics[topic]:
                await trio.sleep(0.05)
            for raw in bad.values():
                await pubsub.publish(topic, raw)
            await pubsub.publish(topic, seal_ok)
            ok_id = env.message_id(seal_ok)
            r = await trio.to_thread.run_sync(lambda: call(target["socket"], "gossip.wait", {"id": ok_id, "timeout": 10}))
            assert r["received"]
    after = call(target["socket"], "node.status")["gossip"]["rejected"]
    for reason in bad:
        assert after.get(reason, 0) >= before.get(reason, 0) + 1, f"{reason} not counted: {after}"
    # None of the bad ones was delivered anywhere.
    for n in net5["nodes"]:
        texts = [m.get("text") for m in call(n["socket"], "gossip.recent", {"type": "node.note", "limit": 1000})]
        assert "x" not in texts


def test_malformed_rpc_leaves_the_daemon_serving(net5):
    n = net5["nodes"][1]
    cases = [
        b"not json", b"{", b"[]", b"[1,2]", b"42", b'"str"', b"null", b"{}",
        b'{"jsonrpc":"1.0","method":"node.status","id":1}',
        b'{"jsonrpc":"2.0","method":5,"id":1}',
        b'{"jsonrpc":"2.0","method":"nope","id":1}',
        b'{"jsonrpc":"2.0","method":"node.status","params":[1],"id":1}',
        b'{"jsonrpc":"2.0","method":"node.wait_peers","params":{"count":"x"},"id":1}',
        b'{"jsonrpc":"2.0","method":"gossip.publish","params":{"text":5},"id":1}',
        b'{"jsonrpc":"2.0","method":"gossip.publish","params":{"bogus":1,"text":"a"},"id":1}',
        b'{"jsonrpc":"2.0","method":"p2p.connect","params":{"addr":"/ip4/x/p2p/zzz"},"id":1}',
        b'{"jsonrpc":"2.0","method":"gossip.wait","params":{"id":"abc"},"id":{"obj":1}}',
        b"\xff\xfe\x00binary",
        b'{"jsonrpc":"2.0","method":"node.status","id":1' + b"]" * 5000,
        b"[" * 100000,
    ]
    sent = 0
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(n["socket"])
        s.settimeout(10)
        f = s.makefile("rwb")
        while sent < 200:
            f.write(cases[sent % len(cases)] + b"\n")
            f.flush()
            reply = json.loads(f.readline())
            for r in reply if isinstance(reply, list) else [reply]:  # a batch gets a list of errors
                assert "error" in r and r["error"]["code"] < 0, reply
            sent += 1
    assert call(n["socket"], "node.status")["peer_id"] == n["peer_id"]
    # A request larger than the limit closes that connection, nothing else.
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(n["socket"])
        try:
            s.sendall(b"x" * (2 << 20))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the node hung up on us, as it should
    assert call(n["socket"], "node.status")["peer_id"] == n["peer_id"]


def test_metrics_endpoint(net5):
    import urllib.request

    n = net5["nodes"][3]
    text = urllib.request.urlopen(n["metrics_url"], timeout=5).read().decode()
    assert "ofnode_peers 4" in text
    assert 'ofnode_rpc_calls_total{method="node.wait_peers"}' in text
    assert "# TYPE ofnode_gossip_rejected_total counter" in text


def test_long_calls_stream_progress(net5):
    """node.wait_peers on a peer that never comes reports progress, then times out cleanly."""

    seen = []
    with ApiClient(net5["nodes"][0]["socket"]) as c:
        r = c.call("node.wait_peers", {"count": 99, "timeout": 0.5}, on_progress=seen.append)
    assert r["ok"] is False and len(r["peers"]) >= 4
    assert seen and seen[0]["stage"] == "waiting" and seen[0]["connected"] >= 4


def test_socket_is_private(net5):
    st = os.stat(net5["nodes"][0]["socket"])
    assert st.st_mode & 0o777 == 0o600


def _restart(net5, i):
    n = net5["nodes"][i]
    fd = os.pidfd_open(n["pid"])
    assert call(n["socket"], "node.stop")["stopping"]
    assert select.select([fd], [], [], 20)[0], "node did not exit after node.stop"
    os.close(fd)
    proc, info = start_daemon(n["data_dir"])
    n["pid"] = proc.pid
    (net5["dir"] / testnet.STATE_FILE).write_text(json.dumps({k: v for k, v in net5.items() if k != "dir"}))
    return n, info


def test_restart_keeps_peer_id_and_rejoins(net5):
    n, info = _restart(net5, 4)
    assert info["peer_id"] == n["peer_id"]
    # node4 bootstraps to nodes 0-3 and redials them all.
    r = call(n["socket"], "node.wait_peers", {"peers": others(net5, 4), "timeout": 20}, timeout=30)
    assert r["ok"], {"missing": sorted(set(others(net5, 4)) - set(r["peers"])), "extra": sorted(set(r["peers"]) - set(others(net5, 4)))}


def test_bootstrap_links_are_redialed(net5):
    """node0 is every other node's bootstrap peer and dials nobody itself:
    after it restarts, the others must notice the drop and reconnect."""
    n, info = _restart(net5, 0)
    assert info["peer_id"] == n["peer_id"]
    for m in net5["nodes"][1:]:
        r = call(m["socket"], "node.wait_peers", {"peers": [n["peer_id"]], "timeout": 20}, timeout=30)
        assert r["ok"], f"{m['name']} did not reconnect to node0"
    # And gossip flows again through the restarted node.
    msg = call(n["socket"], "gossip.publish", {"text": "back"})["id"]
    for m in net5["nodes"]:
        assert call(m["socket"], "gossip.wait", {"id": msg, "timeout": 10})["received"]


def test_second_daemon_on_same_data_dir_refused(net5):
    n = net5["nodes"][0]
    with pytest.raises(RuntimeError, match="another ofnode"):
        start_daemon(n["data_dir"])


def test_down_leaves_no_process(tmp_path):
    state = testnet.up(tmp_path, nodes=3, dos=1, secrets=1, providers=1, timeout=60)
    pids = [n["pid"] for n in state["nodes"]]
    res = testnet.down(tmp_path)
    assert res["stopped"] == 3 and res["killed"] == 0
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
    st = testnet.status(tmp_path)
    assert not any(n["alive"] for n in st["nodes"])
