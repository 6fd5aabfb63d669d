"""Local multi-node testnets: N real daemons on 127.0.0.1, one command.

`up` makes every node's identity first, so the genesis can name the DOS and
secrets peers before any daemon starts; then it spawns the daemons in their
own sessions (they outlive the CLI), waits for each to report ready on a pipe,
and asks each, over its socket, to wait until it sees all the others. Nothing
here polls: readiness and connectivity are events the daemons report.
"""
from __future__ import annotations

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
from typing import Any, Callable

import tomli_w

from enclave.quotes.sim_pki import SimPki
from enclave.quotes.sim_qe import DEFAULT_SIM_MRSIGNER

from .api.client import ApiClient, ApiUnavailable
from .fsutil import atomic_write, private_dir
from .genesis import Genesis, Policy
from .identity import load_or_create_identity

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
) -> dict[str, Any]:
    if nodes < 1 or nodes > 200:
        raise TestnetError("--nodes must lie in 1..200")
    for name, v in (("--dos", dos), ("--secrets", secrets), ("--providers", providers)):
        if v < 0 or v > nodes:
            raise TestnetError(f"{name} must lie in 0..{nodes} (the number of nodes)")
    directory = directory.resolve()
    if (directory / STATE_FILE).exists():
        st = load_state(directory)
        if any(_alive(n["pid"], n["data_dir"]) for n in st.get("nodes", [])):
            raise TestnetError(f"a testnet is already running in {directory}; `ofnode testnet down --dir {directory}` first")
    t0 = time.monotonic()
    layout = Layout(nodes, dos, secrets, providers)
    directory.mkdir(parents=True, exist_ok=True)
    dirs = [private_dir(directory / f"node{i}") for i in range(nodes)]
    idents = [load_or_create_identity(d)[0] for d in dirs]
    ports = _free_ports(nodes)
    addrs = [f"/ip4/127.0.0.1/tcp/{ports[i]}/p2p/{idents[i].peer_id}" for i in range(nodes)]
    dos_peers = [idents[i].peer_id for i in range(nodes) if "dos" in layout.roles(i)]
    sec_peers = [idents[i].peer_id for i in range(nodes) if "secrets" in layout.roles(i)]
    network_id = f"testnet-{pysecrets.token_hex(4)}"
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

    procs: list[tuple[subprocess.Popen[bytes], int]] = []
    for i, d in enumerate(dirs):
        genesis.save(d / "genesis.toml")
        cfg = {
            "node": {"name": f"node{i}", "roles": layout.roles(i), "genesis": "genesis.toml"},
            "p2p": {"listen": [f"/ip4/127.0.0.1/tcp/{ports[i]}"], "bootstrap": addrs[:i],
                    "reconnect_interval": 0.5, "reconnect_max": 5.0},
            "log": {"level": log_level, "file": str(d / "node.log")},
            "metrics": {"enabled": True, "listen": "127.0.0.1:0"},
            "provider": {"relay_capture": True, "backend": backend},
        }
        atomic_write(d / "config.toml", tomli_w.dumps(cfg).encode(), mode=0o600)
        r, w = os.pipe()
        out = open(d / "node.out", "ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "node.cli.main", "start", "--data-dir", str(d), "--ready-fd", str(w)],
            pass_fds=(w,), stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
        )
        out.close()
        os.close(w)
        procs.append((proc, r))
    say(f"started {nodes} daemons")

    ready: list[dict[str, Any] | None] = [None] * nodes
    try:
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
        raise
    state = {
        "network": genesis.network_id,
        "genesis": str(directory / "genesis.toml"),
        "created": genesis.created,
        "dos_quorum": genesis.dos_quorum,
        "secrets_threshold": genesis.secrets_threshold,
        "nodes": [
            {"name": f"node{i}", "peer_id": idents[i].peer_id, "socket": ready[i]["socket"],  # type: ignore[index]
             "data_dir": str(dirs[i]), "pid": procs[i][0].pid, "roles": layout.roles(i), "addr": addrs[i],
             "metrics_url": ready[i]["metrics_url"]}  # type: ignore[index]
            for i in range(nodes)
        ],
        "up_seconds": round(time.monotonic() - t0, 3),
        "running": True,
    }
    atomic_write(directory / STATE_FILE, json.dumps(state, indent=2).encode(), mode=0o644)
    say(f"testnet up: {nodes} nodes fully connected in {state['up_seconds']:.1f} s")
    return state


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
    return st


def down(directory: Path, timeout: float = 15.0, say: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """SIGTERM every recorded node, wait for each to exit (pidfd), SIGKILL stragglers."""
    directory = directory.resolve()
    st = load_state(directory)
    stopped, killed = 0, 0
    waits: list[tuple[int, int]] = []
    for n in st["nodes"]:
        if not _alive(n["pid"], n["data_dir"]):
            continue
        try:
            fd = os.pidfd_open(n["pid"])
            os.kill(n["pid"], signal.SIGTERM)
            waits.append((n["pid"], fd))
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
    st["running"] = False
    atomic_write(directory / STATE_FILE, json.dumps(st, indent=2).encode(), mode=0o644)
    say(f"stopped {stopped} node(s)" + (f", killed {killed} that did not stop within {timeout:g} s" if killed else ""))
    return {"stopped": stopped, "killed": killed}
