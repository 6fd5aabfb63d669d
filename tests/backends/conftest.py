"""Fixtures for the backend tests: a sim backend and per-test enclave dirs.

Without a working bubblewrap the sandbox tests are skipped on a developer
machine but FAIL under ``CI=true``: CI must never pass isolation checks it
did not run.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from enclave.backends import EnclaveSpec, ExitInfo, runtime_code_dirs
from enclave.backends.sim import SimBackend
from tests.parts import require_part

ROOT = os.geteuid() == 0


def _require(backend: SimBackend) -> SimBackend:
    a = backend.available()
    if not a.ok:
        require_part("the sim backend", False, a.reason)
    return backend


@pytest.fixture(scope="session")
def sim() -> SimBackend:
    """The default sim backend: cgroups and seccomp wherever the host allows."""
    return _require(SimBackend())


@pytest.fixture(scope="session")
def sim_plain() -> SimBackend:
    """The fallback configuration: rlimits only, no seccomp filter."""
    return _require(SimBackend(use_cgroups=False, use_seccomp=False))


@dataclass
class Box:
    """One enclave's host-side directories, and helpers to run probes in it."""

    root: Path
    scratch: Path
    sock: Path

    def spec(self, code: str, **kw: object) -> EnclaveSpec:
        argv = (sys.executable, "-c", textwrap.dedent(code))
        kw.setdefault("memory_bytes", 256 << 20)
        kw.setdefault("cpu_seconds", 20)
        kw.setdefault("max_pids", 32)
        return EnclaveSpec(argv=argv, code_dirs=runtime_code_dirs(), socket_dir=self.sock,
                           scratch_dir=self.scratch, **kw)  # type: ignore[arg-type]

    async def run(self, backend: SimBackend, code: str, timeout: float = 30, **kw: object) -> ExitInfo:
        with trio.fail_after(timeout):
            async with await backend.start(self.spec(code, **kw)) as proc:
                return await proc.wait()


@pytest.fixture
def box(tmp_path: Path) -> Box:
    scratch, sock = tmp_path / "scratch", tmp_path / "sock"
    scratch.mkdir()
    sock.mkdir()
    return Box(tmp_path, scratch, sock)


PROBE_TRY = """
import errno, json, os, socket
def attempt(fn):
    try:
        fn()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
"""


async def probe_host_reach(backend, box: Box) -> dict:
    """Inside ``backend``: try a host TCP listener on 127.0.0.1, a host abstract
    Unix socket and an outside address; list the interfaces. Returns the errno names."""
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen()
    name = f"ofnode-test-{os.getpid()}-{os.urandom(4).hex()}"
    abstract = socket.socket(socket.AF_UNIX)
    abstract.bind(f"\0{name}")
    abstract.listen()
    try:
        info = await box.run(backend, PROBE_TRY + f"""
def tcp():
    s = socket.socket(); s.settimeout(2); s.connect(("127.0.0.1", {tcp.getsockname()[1]}))
def outside():
    s = socket.socket(); s.settimeout(2); s.connect(("1.1.1.1", 443))
def abstract():
    s = socket.socket(socket.AF_UNIX); s.connect("\\0{name}")
ifaces = [l.split(":")[0].strip() for l in open("/proc/net/dev").read().splitlines()[2:]]
print(json.dumps({{"tcp": attempt(tcp), "outside": attempt(outside), "abstract": attempt(abstract),
                  "ifaces": ifaces}}))
""")
    finally:
        tcp.close()
        abstract.close()
    assert info.reason == "ok", info
    return json.loads(info.stderr_tail.strip().splitlines()[-1])


def procs_with(token: str) -> list[int]:
    """Host pids whose command line contains ``token``."""
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit() and int(p) != os.getpid():
            try:
                with open(f"/proc/{p}/cmdline", "rb") as f:
                    if token.encode() in f.read():
                        out.append(int(p))
            except OSError:
                pass
    return out
