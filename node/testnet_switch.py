"""The switch of a netns testnet: a userspace Ethernet switch that shapes links.

Each node of a ``testnet up --netns`` network sits in its own network
namespace with one veth link to a shared "hub" namespace. This process runs in
the hub, reads every frame a node sends from the hub end of its veth (an
AF_PACKET socket), and forwards it to the port that owns the destination MAC
address (learned from traffic; broadcasts and unknown destinations go to every
port), after the sending node's shaping:

* latency and jitter: the frame waits ``latency ± jitter`` ms before it goes
  out, like netem delay on the node's egress (a frame never overtakes an
  earlier frame of the same node, so jitter does not reorder);
* loss: the frame is dropped with probability ``loss`` percent;
* partition: a frame is forwarded only between nodes in the same group.

Why not tc netem: many kernels (e.g. Firecracker guest kernels) are built
without ``sch_netem`` and without loadable modules; this switch needs only
veth, network namespaces and packet sockets, which every Linux kernel has.
Frames keep their virtio-net header (PACKET_VNET_HDR), so TCP segmentation and
checksum offload survive the hop and bulk transfers stay fast.

The switch is controlled over a Unix socket: one JSON request per connection,
one JSON reply (ops: ``status``, ``shape``, ``partition``, ``heal``). It reports
readiness on ``--ready-fd`` like the daemons, and exits on SIGTERM.
Run it as ``python -m node.testnet_switch --config JSON``; only the standard
library is imported, so it starts in tens of milliseconds.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import select
import signal
import socket
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_VNET_HDR = 15
PACKET_IGNORE_OUTGOING = 23
PACKET_OUTGOING = 4  # the packet type of frames this host sends out of the interface
VNET_HDR_LEN = 10
MAX_FRAME = 1 << 18  # a GSO super-frame is at most 64 KiB (256 KiB with BIG TCP)


@dataclass
class Shape:
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_pct: float = 0.0

    def check(self) -> None:
        if not 0 <= self.latency_ms <= 60_000:
            raise ValueError("latency must lie in 0..60000 ms")
        if not 0 <= self.jitter_ms <= self.latency_ms:
            raise ValueError("jitter must lie in 0..latency ms")
        if not 0 <= self.loss_pct <= 100:
            raise ValueError("loss must lie in 0..100 %")


@dataclass
class Port:
    node: str
    ifname: str
    sock: socket.socket
    shape: Shape = field(default_factory=Shape)
    group: int = 0
    queue: deque[tuple[float, bytes, tuple[int, ...]]] = field(default_factory=deque)
    last_due: float = 0.0
    rx: int = 0
    tx: int = 0
    lost: int = 0
    blocked: int = 0
    tx_errors: int = 0

    def info(self) -> dict[str, Any]:
        return {"node": self.node, "ifname": self.ifname, **asdict(self.shape), "group": self.group,
                "rx_frames": self.rx, "tx_frames": self.tx, "lost": self.lost, "blocked": self.blocked,
                "tx_errors": self.tx_errors, "queued": len(self.queue)}


def open_port(ifname: str) -> socket.socket:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    try:
        s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)  # Linux >= 4.20; receive() filters them anyway
    except OSError:
        pass
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    s.bind((ifname, ETH_P_ALL))
    s.setblocking(False)
    return s


class Switch:
    def __init__(self, ports: list[tuple[str, str]], shape: Shape, control: str, seed: int | None = None,
                 opener: Callable[[str], socket.socket] = open_port) -> None:
        self.ports = [Port(node, ifname, opener(ifname), Shape(**asdict(shape))) for node, ifname in ports]
        self.by_node = {p.node: i for i, p in enumerate(self.ports)}
        self.by_fd = {p.sock.fileno(): i for i, p in enumerate(self.ports)}
        self.macs: dict[bytes, int] = {}
        self.rng = random.Random(seed)
        self.buf = bytearray(MAX_FRAME)
        self.started = time.monotonic()
        self.control_path = control
        try:
            os.unlink(control)
        except FileNotFoundError:
            pass
        self.control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.control.bind(control)
        os.chmod(control, 0o600)
        self.control.listen(16)
        self.control.setblocking(False)

    # -- forwarding -------------------------------------------------------
    def receive(self, i: int) -> None:
        port = self.ports[i]
        while True:
            try:
                n, addr = port.sock.recvfrom_into(self.buf, MAX_FRAME, socket.MSG_TRUNC)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                port.tx_errors += 1
                return
            if isinstance(addr, tuple) and len(addr) > 2 and addr[2] == PACKET_OUTGOING:
                continue  # our own transmission on this port, seen by the packet socket
            if n > MAX_FRAME or n < VNET_HDR_LEN + 14:
                port.lost += 1
                continue
            port.rx += 1
            data = bytes(self.buf[:n])
            dst = data[VNET_HDR_LEN:VNET_HDR_LEN + 6]
            src = data[VNET_HDR_LEN + 6:VNET_HDR_LEN + 12]
            if not src[0] & 1:
                self.macs[src] = i
            q = self.macs.get(dst) if not dst[0] & 1 else None
            outs = ((q,) if q != i else ()) if q is not None else tuple(j for j in range(len(self.ports)) if j != i)
            if not outs:
                continue
            sh = port.shape
            if sh.loss_pct and self.rng.random() * 100 < sh.loss_pct:
                port.lost += 1
                continue
            if not sh.latency_ms and not port.queue:
                self.forward(i, data, outs)
                continue
            now = time.monotonic()
            delay = sh.latency_ms + (self.rng.uniform(-sh.jitter_ms, sh.jitter_ms) if sh.jitter_ms else 0.0)
            due = max(now + delay / 1000, port.last_due)
            port.last_due = due
            port.queue.append((due, data, outs))

    def forward(self, i: int, data: bytes, outs: tuple[int, ...]) -> None:
        port = self.ports[i]
        for j in outs:
            out = self.ports[j]
            if out.group != port.group:
                port.blocked += 1
                continue
            try:
                out.sock.send(data)
                port.tx += 1
            except OSError:
                port.tx_errors += 1

    def flush(self) -> float | None:
        """Send every frame that is due; return seconds until the next one (None: nothing waits)."""
        now = time.monotonic()
        nxt = None
        for i, port in enumerate(self.ports):
            q = port.queue
            while q and q[0][0] <= now:
                _, data, outs = q.popleft()
                self.forward(i, data, outs)
            if q:
                wait = q[0][0] - now
                nxt = wait if nxt is None else min(nxt, wait)
        return nxt

    # -- control ----------------------------------------------------------
    def status(self) -> dict[str, Any]:
        groups: dict[int, list[str]] = {}
        for p in self.ports:
            groups.setdefault(p.group, []).append(p.node)
        return {"pid": os.getpid(), "uptime_s": round(time.monotonic() - self.started, 3),
                "partitioned": len(groups) > 1, "groups": list(groups.values()),
                "ports": [p.info() for p in self.ports]}

    def _nodes(self, names: Any) -> list[int]:
        if names in (None, []):
            return list(range(len(self.ports)))
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError("nodes must be a list of node names")
        unknown = [n for n in names if n not in self.by_node]
        if unknown:
            raise ValueError(f"unknown node(s) {', '.join(unknown)}; nodes: {', '.join(self.by_node)}")
        return [self.by_node[n] for n in names]

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        if op == "status":
            return self.status()
        if op == "shape":
            # Values not given keep their current setting; all are checked before any applies.
            new = {}
            for i in self._nodes(req.get("nodes")):
                old = self.ports[i].shape
                new[i] = Shape(**{k: float(req[k]) if req.get(k) is not None else getattr(old, k)
                                  for k in ("latency_ms", "jitter_ms", "loss_pct")})
                new[i].check()
            for i, sh in new.items():
                self.ports[i].shape = sh
            return self.status()
        if op == "partition":
            groups = req.get("groups")
            if not isinstance(groups, list) or not groups:
                raise ValueError("partition needs at least one group of node names")
            seen: set[int] = set()
            assign: dict[int, int] = {}
            for g, names in enumerate(groups, start=1):
                if not names:
                    raise ValueError("a partition group is empty")
                for i in self._nodes(names):
                    if i in seen:
                        raise ValueError(f"{self.ports[i].node} is in two groups")
                    seen.add(i)
                    assign[i] = g
            for i, p in enumerate(self.ports):
                p.group = assign.get(i, 0)  # nodes named in no group form one more group
            return self.status()
        if op == "heal":
            for p in self.ports:
                p.group = 0
            return self.status()
        raise ValueError(f"unknown op {op!r}; ops: status, shape, partition, heal")

    def serve_control(self) -> None:
        while True:
            try:
                conn, _ = self.control.accept()
            except (BlockingIOError, InterruptedError):
                return
            with conn:
                conn.settimeout(5)
                try:
                    raw = b""
                    while not raw.endswith(b"\n") and len(raw) < 65536:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        raw += chunk
                    try:
                        req = json.loads(raw)
                        if not isinstance(req, dict):
                            raise ValueError("a request is a JSON object")
                        reply = {"ok": True, "result": self.handle(req)}
                    except (ValueError, TypeError) as e:
                        reply = {"ok": False, "error": str(e)}
                    conn.sendall(json.dumps(reply).encode() + b"\n")
                except OSError:
                    pass

    def run(self) -> None:
        poller = select.poll()
        for fd in self.by_fd:
            poller.register(fd, select.POLLIN)
        cfd = self.control.fileno()
        poller.register(cfd, select.POLLIN)
        wait: float | None = None
        while True:
            events = poller.poll(None if wait is None else max(0, wait * 1000))
            for fd, _ in events:
                if fd == cfd:
                    self.serve_control()
                else:
                    self.receive(self.by_fd[fd])
            wait = self.flush()

    def close(self) -> None:
        for p in self.ports:
            p.sock.close()
        self.control.close()
        try:
            os.unlink(self.control_path)
        except FileNotFoundError:
            pass


def request(control: str, req: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """Send one request to a running switch; return its result or raise ValueError with its error."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(control)
        s.sendall(json.dumps(req).encode() + b"\n")
        raw = b""
        while not raw.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            raw += chunk
    reply = json.loads(raw)
    if not reply.get("ok"):
        raise ValueError(reply.get("error", "switch refused the request"))
    return reply["result"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m node.testnet_switch", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True,
                    help='JSON: {"ports": [[node, ifname], ...], "latency_ms", "jitter_ms", "loss_pct"}')
    ap.add_argument("--control", required=True, metavar="PATH", help="Unix socket to serve control requests on")
    ap.add_argument("--ready-fd", type=int)
    args = ap.parse_args(argv)
    cfg = json.loads(args.config)
    cfg["control"] = args.control
    shape = Shape(*(float(cfg.get(k, 0)) for k in ("latency_ms", "jitter_ms", "loss_pct")))
    shape.check()

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    sw = Switch([tuple(p) for p in cfg["ports"]], shape, cfg["control"], cfg.get("seed"))  # type: ignore[misc]
    try:
        if args.ready_fd is not None:
            with os.fdopen(args.ready_fd, "w") as f:
                json.dump({"pid": os.getpid(), "control": cfg["control"]}, f)
        sw.run()
    finally:
        sw.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
