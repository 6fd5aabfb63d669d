"""What this provider host has: cores, memory, SGX, and which backends work.

Detect, don't configure: nothing here loads a module, starts a daemon or
changes a setting. Offers are matched against this (``--cpu --memory
--tee``), so it must be cheap to call before every offer: the slow parts
(asking each backend, pinging docker, reading CPUID) are cached per process;
cores and memory are read fresh each call (well under a millisecond).
"""

from __future__ import annotations

import functools
import glob
import os
import shutil
import socket
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["BackendStatus", "DockerInfo", "Inventory", "SgxInfo", "detect", "docker_info", "sgx_info"]

_DOCKER_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock")


@dataclass(frozen=True)
class SgxInfo:
    """SGX as the kernel and CPU show it. ``epc_bytes`` is None when unknown."""

    enclave_device: bool  # /dev/sgx_enclave: the in-kernel driver is loaded
    provision_device: bool  # /dev/sgx_provision: DCAP quotes can be made
    cpu_flag: bool  # "sgx" in /proc/cpuinfo flags
    flc: bool  # "sgx_lc": flexible launch control, needed by the in-kernel driver
    epc_bytes: int | None
    epc_source: str  # "cpuid", "sysfs" or "unknown"

    @property
    def usable(self) -> bool:
        return self.enclave_device and self.provision_device


@dataclass(frozen=True)
class DockerInfo:
    socket: str | None  # the docker API socket that exists, if any
    answers: bool  # it answered GET /_ping with OK
    reason: str


@dataclass(frozen=True)
class BackendStatus:
    name: str
    ok: bool
    reason: str


@dataclass(frozen=True)
class Inventory:
    cores: int  # CPUs this process may run on (sched_getaffinity)
    cpu_count: int  # CPUs the machine has
    memory_total_bytes: int
    memory_available_bytes: int
    sgx: SgxInfo
    backends: tuple[BackendStatus, ...]
    docker: DockerInfo
    gramine_sgx: str | None  # path of gramine-sgx on PATH
    gramine_direct: str | None

    def backend_ok(self, name: str) -> bool:
        return any(b.name == name and b.ok for b in self.backends)

    def working_backends(self) -> tuple[str, ...]:
        """Names of the backends that can run here: what a provider should announce."""
        return tuple(b.name for b in self.backends if b.ok)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["sgx"]["usable"] = self.sgx.usable
        d["backends"] = {b.name: {"ok": b.ok, "reason": b.reason} for b in self.backends}
        return d


def _meminfo() -> tuple[int, int]:
    vals: dict[str, int] = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, _, rest = line.partition(":")
            if k in ("MemTotal", "MemAvailable"):
                vals[k] = int(rest.split()[0]) * 1024
    return vals.get("MemTotal", 0), vals.get("MemAvailable", vals.get("MemTotal", 0))


def _cpuid(leaf: int, subleaf: int = 0) -> tuple[int, int, int, int] | None:
    """CPUID through /dev/cpu/0/cpuid (the ``cpuid`` kernel module), or None."""
    try:
        fd = os.open("/dev/cpu/0/cpuid", os.O_RDONLY)
    except OSError:
        return None
    try:
        raw = os.pread(fd, 16, (subleaf << 32) | leaf)
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(raw) != 16:
        return None
    return tuple(int.from_bytes(raw[i:i + 4], "little") for i in range(0, 16, 4))  # type: ignore[return-value]


def _epc_from_cpuid() -> int | None:
    leaf7 = _cpuid(7)
    if leaf7 is None or not (leaf7[1] >> 2) & 1:  # EBX bit 2: SGX
        return None
    total = 0
    for sub in range(2, 66):  # subleaf 2+: one EPC section each, until type 0
        regs = _cpuid(0x12, sub)
        if regs is None or regs[0] & 0xF != 1:
            break
        total += (regs[2] & 0xFFFFF000) | ((regs[3] & 0xFFFFF) << 32)
    return total or None


def _epc_from_sysfs() -> int | None:
    total, found = 0, False
    for path in glob.glob("/sys/devices/system/node/node*/x86/sgx_total_bytes"):
        try:
            with open(path) as f:
                total += int(f.read().strip())
            found = True
        except (OSError, ValueError):
            pass
    return total if found else None


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


@functools.lru_cache(maxsize=1)
def sgx_info() -> SgxInfo:
    flags = _cpu_flags()
    epc, source = _epc_from_cpuid(), "cpuid"
    if epc is None:
        epc, source = _epc_from_sysfs(), "sysfs"
    return SgxInfo(
        enclave_device=os.path.exists("/dev/sgx_enclave"),
        provision_device=os.path.exists("/dev/sgx_provision"),
        cpu_flag="sgx" in flags,
        flc="sgx_lc" in flags,
        epc_bytes=epc,
        epc_source=source if epc is not None else "unknown",
    )


def _docker_socket() -> str | None:
    host = os.environ.get("DOCKER_HOST", "")
    candidates = [host.removeprefix("unix://")] if host.startswith("unix://") else []
    return next((p for p in [*candidates, *_DOCKER_SOCKETS] if os.path.exists(p)), None)


@functools.lru_cache(maxsize=1)
def docker_info(timeout: float = 0.5) -> DockerInfo:
    """Does a docker daemon answer on its Unix socket? (No docker SDK import.)"""
    path = _docker_socket()
    if path is None:
        return DockerInfo(None, False, "no docker socket")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(path)
            s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            reply = s.recv(4096)
    except OSError as exc:
        return DockerInfo(path, False, f"{path}: {exc}")
    ok = reply.startswith(b"HTTP/1.") and b" 200 " in reply.split(b"\r\n", 1)[0]
    return DockerInfo(path, ok, "answers /_ping" if ok else f"unexpected reply {reply[:40]!r}")


@functools.lru_cache(maxsize=1)
def _backend_statuses() -> tuple[BackendStatus, ...]:
    from enclave.backends import backend_names, get_backend

    out = []
    for name in backend_names():
        try:
            a = get_backend(name).available()
            out.append(BackendStatus(name, a.ok, a.reason))
        except Exception as exc:  # noqa: BLE001 - a broken backend is "not ok", never a crash
            out.append(BackendStatus(name, False, f"{type(exc).__name__}: {exc}"))
    return tuple(out)


def detect(refresh: bool = False) -> Inventory:
    """This host's inventory; ``refresh`` re-runs the cached probes too."""
    if refresh:
        for cached in (sgx_info, docker_info, _backend_statuses):
            cached.cache_clear()
    total, avail = _meminfo()
    return Inventory(
        cores=len(os.sched_getaffinity(0)),
        cpu_count=os.cpu_count() or 1,
        memory_total_bytes=total,
        memory_available_bytes=avail,
        sgx=sgx_info(),
        backends=_backend_statuses(),
        docker=docker_info(),
        gramine_sgx=shutil.which("gramine-sgx"),
        gramine_direct=shutil.which("gramine-direct"),
    )
