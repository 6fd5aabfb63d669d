"""Fixtures for the backend tests: a sim backend and per-test enclave dirs.

Without a working bubblewrap the sandbox tests are skipped on a developer
machine but FAIL under ``CI=true``: CI must never pass isolation checks it
did not run.
"""

from __future__ import annotations

import os
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
