"""The shaping switch's forwarding logic, on datagram socket pairs and a fake
clock: no root, no namespaces, deterministic."""
from __future__ import annotations

import socket

import pytest

from node import testnet_switch as ts

VNET = bytes(ts.VNET_HDR_LEN)
BCAST = b"\xff" * 6
MAC = [bytes([2, 0, 0, 0, 0, i]) for i in range(4)]


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def rig(tmp_path, monkeypatch):
    clock = Clock()
    monkeypatch.setattr(ts.time, "monotonic", clock)
    outside: dict[str, socket.socket] = {}

    def opener(ifname: str) -> socket.socket:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        a.setblocking(False)
        b.setblocking(False)
        outside[ifname] = b
        return a

    sw = ts.Switch([(f"node{i}", f"n{i}") for i in range(3)], ts.Shape(), str(tmp_path / "sw.sock"), seed=7,
                   opener=opener)
    yield sw, [outside[f"n{i}"] for i in range(3)], clock
    sw.close()
    for s in outside.values():
        s.close()


def frame(dst: bytes, src: bytes, payload: bytes) -> bytes:
    return VNET + dst + src + b"\x08\x00" + payload  # an IPv4 ethertype


def send(sw, wires, i: int, data: bytes) -> None:
    wires[i].send(data)
    sw.receive(i)


def got(wire) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(wire.recv(1 << 16)[ts.VNET_HDR_LEN + 14:])
        except BlockingIOError:
            return out


def test_learns_addresses_and_floods_only_the_unknown(rig):
    sw, wires, _ = rig
    send(sw, wires, 0, frame(BCAST, MAC[0], b"arp?"))
    assert got(wires[1]) == [b"arp?"] and got(wires[2]) == [b"arp?"] and got(wires[0]) == []
    send(sw, wires, 1, frame(MAC[0], MAC[1], b"to 0"))
    assert got(wires[0]) == [b"to 0"] and got(wires[2]) == []
    send(sw, wires, 2, frame(MAC[3], MAC[2], b"unknown dst"))
    assert got(wires[0]) == [b"unknown dst"] and got(wires[1]) == [b"unknown dst"]
    # The virtio-net header travels with the frame untouched.
    hdr = bytes(range(1, 11))
    wires[0].send(hdr + MAC[1] + MAC[0] + b"\x08\x00x")
    sw.receive(0)
    assert wires[1].recv(100)[:10] == hdr


def test_latency_holds_frames_of_the_shaped_node_only(rig):
    sw, wires, clock = rig
    send(sw, wires, 0, frame(BCAST, MAC[0], b"hello"))
    got(wires[1]), got(wires[2])
    sw.handle({"op": "shape", "nodes": ["node1"], "latency_ms": 50})
    send(sw, wires, 1, frame(MAC[0], MAC[1], b"slow"))
    send(sw, wires, 2, frame(MAC[0], MAC[2], b"fast"))
    assert got(wires[0]) == [b"fast"]
    assert sw.flush() == pytest.approx(0.05)
    clock.t += 0.049
    assert sw.flush() == pytest.approx(0.001) and got(wires[0]) == []
    clock.t += 0.001
    assert sw.flush() is None and got(wires[0]) == [b"slow"]


def test_jitter_varies_the_delay_but_never_reorders(rig):
    sw, wires, clock = rig
    send(sw, wires, 0, frame(BCAST, MAC[0], b"hi"))
    sw.handle({"op": "shape", "latency_ms": 50, "jitter_ms": 40})
    start = clock.t
    for k in range(200):
        send(sw, wires, 1, frame(MAC[0], MAC[1], b"%03d" % k))
    dues = [due for due, _, _ in sw.ports[1].queue]
    assert dues == sorted(dues)
    assert all(0.010 <= d - start <= 0.090 for d in dues)
    assert max(dues) - min(dues) > 0.03  # the delay does vary
    received: list[bytes] = []
    while sw.ports[1].queue:
        clock.t += 0.005
        sw.flush()
        received += got(wires[0])
    assert received == [b"%03d" % k for k in range(200)]


def test_runt_frames_are_dropped(rig):
    sw, wires, _ = rig
    send(sw, wires, 0, VNET + BCAST + MAC[0])  # no ethertype: not an Ethernet frame
    assert got(wires[1]) == [] and sw.ports[0].lost == 1


def test_loss(rig):
    sw, wires, _ = rig
    send(sw, wires, 0, frame(BCAST, MAC[0], b"hi"))
    got(wires[1]), got(wires[2])
    sw.handle({"op": "shape", "nodes": ["node1"], "loss_pct": 100})
    send(sw, wires, 1, frame(MAC[0], MAC[1], b"gone"))
    assert got(wires[0]) == [] and sw.ports[1].lost == 1
    sw.handle({"op": "shape", "nodes": ["node1"], "loss_pct": 30})
    for k in range(400):
        send(sw, wires, 1, frame(MAC[0], MAC[1], b"x"))
    n = len(got(wires[0]))
    assert 200 < n < 360, n  # about 70 % of 400 arrive
    assert sw.ports[1].lost == 1 + 400 - n


def test_partition_and_heal(rig):
    sw, wires, clock = rig
    for i in range(3):
        send(sw, wires, i, frame(BCAST, MAC[i], b"hi"))
    [got(w) for w in wires]
    st = sw.handle({"op": "partition", "groups": [["node2"]]})
    assert st["partitioned"] and st["groups"] == [["node0", "node1"], ["node2"]]
    send(sw, wires, 0, frame(BCAST, MAC[0], b"b"))
    assert got(wires[1]) == [b"b"] and got(wires[2]) == []
    send(sw, wires, 2, frame(MAC[0], MAC[2], b"cut"))
    assert got(wires[0]) == [] and sw.ports[2].blocked == 1
    # A frame already waiting in the delay line is cut too when it leaves.
    sw.handle({"op": "heal"})
    sw.handle({"op": "shape", "nodes": ["node2"], "latency_ms": 10})
    send(sw, wires, 2, frame(MAC[0], MAC[2], b"late"))
    sw.handle({"op": "partition", "groups": [["node0", "node1"], ["node2"]]})
    clock.t += 0.02
    sw.flush()
    assert got(wires[0]) == []
    assert not sw.handle({"op": "heal"})["partitioned"]
    send(sw, wires, 2, frame(MAC[0], MAC[2], b"again"))
    clock.t += 0.02
    sw.flush()
    assert got(wires[0]) == [b"again"]


@pytest.mark.parametrize("req, msg", [
    ({"op": "shape", "nodes": ["node9"], "latency_ms": 5}, "unknown node(s) node9"),
    ({"op": "shape", "latency_ms": -1}, "latency must lie in"),
    ({"op": "shape", "latency_ms": 10, "jitter_ms": 11}, "jitter must lie in 0..latency"),
    ({"op": "shape", "loss_pct": 100.5}, "loss must lie in 0..100"),
    ({"op": "partition", "groups": []}, "at least one group"),
    ({"op": "partition", "groups": [["node0"], ["node0", "node1"]]}, "node0 is in two groups"),
    ({"op": "partition", "groups": [[]]}, "group is empty"),
    ({"op": "reboot"}, "unknown op"),
])
def test_bad_requests_change_nothing(rig, req, msg):
    sw, _, _ = rig
    before = sw.status()
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        sw.handle(req)
    assert sw.status()["ports"] == before["ports"]
