"""Local multi-node testnets: N real daemons on 127.0.0.1, one command.

With ``netns=True`` every node runs in its own network namespace instead,
linked through a userspace switch that adds latency, jitter and loss per node
and can partition the network and heal it (see testnet_netns and
testnet_switch).

`up` makes every node's identity first, so the genesis can name the DOS and
secrets peers before any daemon starts; then it spawns the daemons in their
own sessions (they outlive the CLI), waits for each to report ready on a pipe,
and asks each, over its socket, to wait until it sees all the others. Nothing
here polls: readiness and connectivity are events the daemons report.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import secrets as pysecrets
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import tomli_w

from enclave.quotes.sim_pki import SimPki
from enclave.quotes.sim_qe import DEFAULT_SIM_MRSIGNER

from . import testnet_netns as netns_mod
from .api.client import ApiClient, ApiUnavailable
from .fsutil import atomic_write, private_dir
from .genesis import Genesis, Policy
from .identity import load_or_create_identity
from .testnet_switch import Shape
from .testnet_switch import request as switch_request

STATE_FILE = "testnet.json"


class TestnetError(Exception):
    """A testnet could not be brought up or down; the message says why."""


@dataclass(frozen=True)
class Layout:
    """Which node index takes which role: DOS first, secrets next (wrapping),
    providers last, so small testnets overlap roles sensibly."""

    nodes: int
    dos: int
    secrets: int
    providers: int

    def roles(self, i: int) -> list[str]:
        r = []
        if i < self.dos:
            r.append("dos")
        if (i - self.dos) % self.nodes < self.secrets:
            r.append("secrets")
        if i >= self.nodes - self.providers:
            r.append("provider")
        return r


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _alive(pid: int, data_dir: str) -> bool:
    """True if ``pid`` is a live ofnode serving ``data_dir`` (guards against pid reuse)."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    return data_dir.encode() in cmd


def load_state(directory: Path) -> dict[str, Any]:
    path = directory / STATE_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise TestnetError(f"no testnet in {directory} (no {STATE_FILE}); start one with `ofnode testnet up --dir {directory}`") from None
    except ValueError as e:
        raise TestnetError(f"{path}: corrupt state file: {e}") from None


def up(
    directory: Path,
    nodes: int,
    dos: int,
    secrets: int,
    providers: int,
    dos_quorum: int | None = None,
    secrets_threshold: int | None = None,
    timeout: float = 60.0,
    log_level: str = "info",
    say: Callable[[str], None] = lambda s: None,
    backend: str = "sim",
    netns: bool = False,
    latency_ms: float = 0.0,
    jitter_ms: float = 0.0,
    loss_pct: float = 0.0,
) -> dict[str, Any]:
    """Start the testnet and return its state (also written to DIR/testnet.json).

    ``netns``: each node in its own network namespace behind the shaping
    switch, every node's outgoing frames delayed by ``latency_ms ± jitter_ms``
    and dropped with probability ``loss_pct`` percent (needs root and iproute2).
    """
    if nodes < 1 or nodes > 200:
        raise TestnetError("--nodes must lie in 1..200")
    for name, v in (("--dos", dos), ("--secrets", secrets), ("--providers", providers)):
        if v < 0 or v > nodes:
            raise TestnetError(f"{name} must lie in 0..{nodes} (the number of nodes)")
    shape = Shape(latency_ms, jitter_ms, loss_pct)
    try:
        shape.check()
    except ValueError as e:
        raise TestnetError(f"{e} (--latency MS, --jitter MS, --loss PCT)") from None
    if not netns and (latency_ms or jitter_ms or loss_pct):
        raise TestnetError("--latency, --jitter and --loss shape the links of a netns testnet; add --netns")
    if netns:
        try:
            netns_mod.check_support()
        except netns_mod.NetnsError as e:
            raise TestnetError(str(e)) from None
    directory = directory.resolve()
    if (directory / STATE_FILE).exists():
        st = load_state(directory)
        if any(_alive(n["pid"], n["data_dir"]) for n in st.get("nodes", [])):
            raise TestnetError(f"a testnet is already running in {directory}; `ofnode testnet down --dir {directory}` first")
        _remove_namespaces(st)  # a crashed netns run's leftovers
    t0 = time.monotonic()
    layout = Layout(nodes, dos, secrets, providers)
    directory.mkdir(parents=True, exist_ok=True)
    dirs = [private_dir(directory / f"node{i}") for i in range(nodes)]
    idents = [load_or_create_identity(d)[0] for d in dirs]
    network_id = f"testnet-{pysecrets.token_hex(4)}"
    if netns:
        # Each node has its own namespace, hence its own port space: one fixed port for all.
        hosts, ports = [netns_mod.node_ip(i) for i in range(nodes)], [netns_mod.NODE_PORT] * nodes
    else:
        hosts, ports = ["127.0.0.1"] * nodes, _free_ports(nodes)
    addrs = [f"/ip4/{hosts[i]}/tcp/{ports[i]}/p2p/{idents[i].peer_id}" for i in range(nodes)]
    dos_peers = [idents[i].peer_id for i in range(nodes) if "dos" in layout.roles(i)]
    sec_peers = [idents[i].peer_id for i in range(nodes) if "secrets" in layout.roles(i)]
    # Simulated SGX: a root CA made for this network only; its key lives in
    # the genesis (testnets only) so every provider can run the sim QE.
    pki = SimPki.generate(network_id)
    genesis = Genesis(
        network_id=network_id,
        created=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        dos_peers=tuple(dos_peers),
        dos_quorum=dos_quorum or (len(dos_peers) // 2 + 1 if dos_peers else 1),
        secrets_peers=tuple(sec_peers),
        secrets_threshold=secrets_threshold or (len(sec_peers) // 2 + 1 if sec_peers else 1),
        policy=Policy(mrsigner=(DEFAULT_SIM_MRSIGNER.hex(),), sim_root_ca=pki.root_cert_der),
        sim_root_key=pki.root_key_pem().decode(),
    )
    genesis.save(directory / "genesis.toml")
    say(f"network {genesis.network_id}: {nodes} nodes, {len(dos_peers)} DOS (quorum {genesis.dos_quorum}), "
        f"{len(sec_peers)} secrets (threshold {genesis.secrets_threshold}), {providers} providers")

    for i, d in enumerate(dirs):
        genesis.save(d / "genesis.toml")
        cfg = {
            "node": {"name": f"node{i}", "roles": layout.roles(i), "genesis": "genesis.toml"},
            "p2p": {"listen": [f"/ip4/{hosts[i]}/tcp/{ports[i]}"], "bootstrap": addrs[:i],
                    "reconnect_interval": 0.5, "reconnect_max": 5.0},
            "log": {"level": log_level, "file": str(d / "node.log")},
            # In a netns testnet this is the node's own loopback: reach it with `ip netns exec`.
            "metrics": {"enabled": True, "listen": "127.0.0.1:0"},
            "provider": {"relay_capture": True, "backend": backend},
        }
        atomic_write(d / "config.toml", tomli_w.dumps(cfg).encode(), mode=0o600)

    procs: list[tuple[subprocess.Popen[bytes], int]] = []
    net: dict[str, Any] | None = None
    switch: subprocess.Popen[bytes] | None = None
    ready: list[dict[str, Any] | None] = [None] * nodes

    def state(running: bool) -> dict[str, Any]:
        return {
            "network": genesis.network_id,
            "genesis": str(directory / "genesis.toml"),
            "created": genesis.created,
            "dos_quorum": genesis.dos_quorum,
            "secrets_threshold": genesis.secrets_threshold,
            "nodes": [
                {"name": f"node{i}", "peer_id": idents[i].peer_id,
                 "socket": (ready[i] or {}).get("socket", str(dirs[i] / "ofnode.sock")),
                 "data_dir": str(dirs[i]), "pid": procs[i][0].pid, "roles": layout.roles(i), "addr": addrs[i],
                 "metrics_url": (ready[i] or {}).get("metrics_url", ""),
                 **({"netns": net["nodes"][i], "ip": hosts[i]} if net else {})}
                for i in range(len(procs))
            ],
            **({"netns": {k: v for k, v in net.items() if k != "nodes"}} if net else {}),
            "up_seconds": round(time.monotonic() - t0, 3),
            "running": running,
        }

    try:
        with netns_mod.lock() if netns else _nolock():
            if netns:
                net, switch = _make_network(directory, genesis.network_id, nodes, shape, say)
            for i, d in enumerate(dirs):
                procs.append(_spawn_daemon(d, net["nodes"][i] if net else None))
        # Recorded before the wait, so that `down` can clean up even if this process dies now.
        atomic_write(directory / STATE_FILE, json.dumps(state(False), indent=2).encode(), mode=0o644)
        say(f"started {nodes} daemons")
        _wait_ready(procs, ready, dirs, deadline=time.monotonic() + timeout)
        say(f"all {nodes} daemons ready after {time.monotonic() - t0:.1f} s; waiting for links")
        all_ids = [x.peer_id for x in idents]
        for i, info in enumerate(ready):
            assert info is not None
            left = max(1.0, timeout - (time.monotonic() - t0))
            with ApiClient(info["socket"], timeout=left + 5) as c:
                res = c.call("node.wait_peers", {"peers": [p for p in all_ids if p != all_ids[i]], "timeout": left})
            if not res["ok"]:
                missing = set(all_ids) - set(res["peers"]) - {all_ids[i]}
                raise TestnetError(f"node{i} did not connect to {len(missing)} peer(s) within {timeout:g} s")
    except BaseException:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc, _ in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        if switch is not None and switch.poll() is None:
            switch.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                switch.wait(timeout=5)
        if net is not None:
            with netns_mod.lock():
                netns_mod.delete(net["namespaces"])
        raise
    st = state(True)
    atomic_write(directory / STATE_FILE, json.dumps(st, indent=2).encode(), mode=0o644)
    say(f"testnet up: {nodes} nodes fully connected in {st['up_seconds']:.1f} s")
    return st


@contextlib.contextmanager
def _nolock() -> Iterator[None]:
    yield


def _make_network(directory: Path, network: str, nodes: int, shape: Shape,
                  say: Callable[[str], None]) -> tuple[dict[str, Any], subprocess.Popen[bytes]]:
    """Namespaces, veths and the switch (called under the netns lock)."""
    swept = netns_mod.sweep()
    if swept:
        say(f"removed {len(swept)} namespace(s) left by a crashed testnet: {', '.join(swept)}")
    try:
        made = netns_mod.create(network, nodes)
    except netns_mod.NetnsError as e:
        raise TestnetError(str(e)) from None
    hub = netns_mod.hub_name(network)
    control = str(directory / "switch.sock")
    net = {"hub": hub, "subnet": f"{netns_mod.SUBNET}.0/24", "namespaces": made,
           "nodes": [netns_mod.node_name(network, i) for i in range(nodes)],
           "switch": {"control": control, "pid": 0, "log": str(directory / "switch.log")},
           "shape": {"latency_ms": shape.latency_ms, "jitter_ms": shape.jitter_ms, "loss_pct": shape.loss_pct}}
    cfg = {"ports": [[f"node{i}", f"n{i}"] for i in range(nodes)],
           "latency_ms": shape.latency_ms, "jitter_ms": shape.jitter_ms, "loss_pct": shape.loss_pct}
    try:
        preexec, nsfd = netns_mod.enter(hub)
        r, w = os.pipe()
        with open(directory / "switch.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "node.testnet_switch", "--config", json.dumps(cfg), "--control", control,
                 "--ready-fd", str(w)],
                pass_fds=(w,), stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                preexec_fn=preexec,
            )
        os.close(w)
        os.close(nsfd)
        with os.fdopen(r, "rb") as f:
            raw = f.read()  # the switch writes its ready line and closes, or dies
        if not raw:
            proc.wait(timeout=5)
            log_tail = (directory / "switch.log").read_text(errors="replace").splitlines()[-10:]
            raise TestnetError("the testnet switch exited before it was ready:\n" + "\n".join(log_tail))
    except BaseException:
        netns_mod.delete(made)
        raise
    net["switch"]["pid"] = proc.pid
    shaped = f"latency {shape.latency_ms:g} ms ± {shape.jitter_ms:g} ms, loss {shape.loss_pct:g} %"
    say(f"{nodes} network namespaces on {net['subnet']} behind switch pid {proc.pid} ({shaped})")
    return net, proc


def _spawn_daemon(d: Path, ns: str | None) -> tuple[subprocess.Popen[bytes], int]:
    r, w = os.pipe()
    preexec, nsfd = netns_mod.enter(ns) if ns else (None, -1)
    try:
        with open(d / "node.out", "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "node.cli.main", "start", "--data-dir", str(d), "--ready-fd", str(w)],
                pass_fds=(w,), stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
                preexec_fn=preexec,
            )
    except BaseException:
        os.close(r)
        raise
    finally:
        os.close(w)
        if nsfd >= 0:
            os.close(nsfd)
    return proc, r


def _wait_ready(procs: list[tuple[subprocess.Popen[bytes], int]], ready: list[dict[str, Any] | None],
                dirs: list[Path], deadline: float) -> None:
    bufs = {r: b"" for _, r in procs}
    index = {r: i for i, (_, r) in enumerate(procs)}
    pending = set(bufs)
    try:
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                names = ", ".join(f"node{index[r]}" for r in sorted(pending))
                raise TestnetError(f"{names} not ready in time; see their node.log")
            readable, _, _ = select.select(list(pending), [], [], left)
            for r in readable:
                chunk = os.read(r, 65536)
                if chunk:
                    bufs[r] += chunk
                    continue
                pending.discard(r)
                i = index[r]
                try:
                    ready[i] = json.loads(bufs[r])
                except ValueError:
                    procs[i][0].wait(timeout=5)
                    raise TestnetError(f"node{i} exited before it was ready:\n{_tail(dirs[i])}") from None
    finally:
        for _, r in procs:
            os.close(r)


def _tail(d: Path, lines: int = 15) -> str:
    out = []
    for f in ("node.out", "node.log"):
        try:
            out += (d / f).read_text(errors="replace").splitlines()[-lines:]
        except FileNotFoundError:
            pass
    return "\n".join(out)


def status(directory: Path) -> dict[str, Any]:
    st = load_state(directory.resolve())
    for n in st["nodes"]:
        n["alive"] = _alive(n["pid"], n["data_dir"])
        n["peers"] = None
        if n["alive"]:
            try:
                s = ApiClient(n["socket"], timeout=3).call("node.status")
                n["peers"] = len(s["peers"])
            except (ApiUnavailable, OSError, ValueError):
                n["alive"] = False
    if st.get("netns"):
        sw = st["netns"]["switch"]
        sw["alive"] = _alive(sw["pid"], sw["control"])
        if sw["alive"]:
            try:
                live = switch_request(sw["control"], {"op": "status"}, timeout=5)
                st["netns"]["groups"] = live["groups"]
                st["netns"]["partitioned"] = live["partitioned"]
                st["netns"]["links"] = live["ports"]
            except (OSError, ValueError):
                sw["alive"] = False
    return st


# -- shaping a running netns testnet -------------------------------------------
def _switch_call(directory: Path, req: dict[str, Any]) -> dict[str, Any]:
    directory = directory.resolve()
    st = load_state(directory)
    if not st.get("netns"):
        raise TestnetError(f"the testnet in {directory} was not started with --netns; "
                           "shape, partition and heal need one (`ofnode testnet up --netns`)")
    sw = st["netns"]["switch"]
    if not st.get("running") or not _alive(sw["pid"], sw["control"]):
        raise TestnetError(f"the testnet in {directory} is not running (its switch, pid {sw['pid']}, is gone)")
    try:
        return switch_request(sw["control"], req)
    except ValueError as e:
        raise TestnetError(str(e)) from None
    except OSError as e:
        raise TestnetError(f"the testnet switch did not answer on {sw['control']}: {e}") from None


def shape(directory: Path, nodes: list[str] | None = None, latency_ms: float | None = None,
          jitter_ms: float | None = None, loss_pct: float | None = None) -> dict[str, Any]:
    """Change the latency, jitter and/or loss of some nodes (default: all) of a running
    netns testnet; values not given stay as they are. Returns the switch status."""
    if latency_ms is None and jitter_ms is None and loss_pct is None:
        raise TestnetError("say what to change: --latency, --jitter and/or --loss")
    return _switch_call(directory, {"op": "shape", "nodes": nodes or [], "latency_ms": latency_ms,
                                    "jitter_ms": jitter_ms, "loss_pct": loss_pct})


def partition(directory: Path, groups: list[list[str]]) -> dict[str, Any]:
    """Cut the network into groups of node names; nodes named in no group form one more group.
    Frames between groups are dropped from now on (open connections stall, as on a real split)."""
    return _switch_call(directory, {"op": "partition", "groups": groups})


def heal(directory: Path) -> dict[str, Any]:
    """Undo a partition: every node reaches every other again."""
    return _switch_call(directory, {"op": "heal"})


def _remove_namespaces(st: dict[str, Any]) -> list[str]:
    """Delete the namespaces a (stopped or crashed) netns testnet recorded, then sweep orphans."""
    if not st.get("netns") or os.geteuid() != 0:
        return []
    with netns_mod.lock():
        try:
            removed = netns_mod.delete(st["netns"]["namespaces"])
            return removed + netns_mod.sweep()
        except netns_mod.NetnsError as e:
            raise TestnetError(str(e)) from None


def _stop(procs: list[tuple[int, str]], timeout: float) -> tuple[int, int]:
    """SIGTERM each live (pid, cmdline marker), wait for each to exit (pidfd), SIGKILL stragglers."""
    stopped, killed = 0, 0
    waits: list[tuple[int, int]] = []
    for pid, marker in procs:
        if not _alive(pid, marker):
            continue
        try:
            fd = os.pidfd_open(pid)
            os.kill(pid, signal.SIGTERM)
            waits.append((pid, fd))
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + timeout
    remaining = dict((fd, pid) for pid, fd in waits)
    while remaining and time.monotonic() < deadline:
        readable, _, _ = select.select(list(remaining), [], [], deadline - time.monotonic())
        for fd in readable:
            os.close(fd)
            remaining.pop(fd)
            stopped += 1
    for fd, pid in remaining.items():
        try:
            os.kill(pid, signal.SIGKILL)
            killed += 1
        except ProcessLookupError:
            stopped += 1
        os.close(fd)
    return stopped, killed


def down(directory: Path, timeout: float = 15.0, say: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Stop every recorded node (SIGTERM, wait, SIGKILL after ``timeout``); for a
    netns testnet then stop the switch and remove the namespaces with their links,
    and sweep namespaces that crashed testnets left behind."""
    directory = directory.resolve()
    st = load_state(directory)
    stopped, killed = _stop([(n["pid"], n["data_dir"]) for n in st["nodes"]], timeout)
    res: dict[str, Any] = {"stopped": stopped, "killed": killed}
    removed: list[str] = []
    if st.get("netns"):
        sw = st["netns"]["switch"]
        _stop([(sw["pid"], sw["control"])], 5.0)
        removed = _remove_namespaces(st)
        res["namespaces_removed"] = removed
    st["running"] = False
    atomic_write(directory / STATE_FILE, json.dumps(st, indent=2).encode(), mode=0o644)
    say(f"stopped {stopped} node(s)" + (f", killed {killed} that did not stop within {timeout:g} s" if killed else "")
        + (f"; removed {len(removed)} network namespace(s) and their links" if removed else ""))
    return res
