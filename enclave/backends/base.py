"""The enclave backend interface: what the provider asks of any way to run an enclave.

A backend turns an ``EnclaveSpec`` (what to run, which host directories it may
see, how much it may use) into a running ``EnclaveProcess``. The node only
ever talks to this interface, so ``sim`` (bubblewrap), ``docker``,
``gramine-direct`` and ``gramine-sgx`` are swappable, one module each, the
way httpx swaps transports.

The spec is deliberately small and explicit: the enclave sees the code
directories read-only, one writable scratch directory, one socket directory
(its only link out), and an environment that is exactly ``env``. Anything a
backend adds beyond that is the backend's to document (``docs/backends.md``).
"""

from __future__ import annotations

import abc
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Literal, Self

import trio

__all__ = [
    "SCRATCH_DIR",
    "SOCKET_DIR",
    "Availability",
    "Backend",
    "BackendError",
    "BackendUnavailable",
    "EnclaveProcess",
    "EnclaveSpec",
    "ExitInfo",
    "ExitReason",
    "runtime_code_dirs",
]

#: Where ``EnclaveSpec.socket_dir`` appears inside the enclave.
SOCKET_DIR = "/run/ofnode"
#: Where ``EnclaveSpec.scratch_dir`` appears inside the enclave.
SCRATCH_DIR = "/scratch"

ExitReason = Literal["ok", "oom", "cpu_time", "killed", "error"]

# Paths a code dir must not shadow or sit inside: the backend mounts its own there.
# (/tmp itself is reserved, but a code dir below it is bound over the private /tmp.)
_RESERVED = ("/proc", "/dev", "/sys", "/run", SCRATCH_DIR)


class BackendError(Exception):
    """A backend could not start an enclave (bad spec, host problem)."""


class BackendUnavailable(BackendError):
    """The backend cannot run on this host at all; ``reason`` says why and what to do."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Availability:
    """Whether a backend can run here; ``reason`` explains either way (shown to operators)."""

    ok: bool
    reason: str


@dataclass(frozen=True)
class ExitInfo:
    """How an enclave ended.

    ``code`` is the exit status when it exited, ``signal`` the signal number
    when a signal ended it (exactly one of them is set). ``reason``:
    ``ok`` (exit 0), ``oom`` (memory limit), ``cpu_time`` (CPU-time limit),
    ``killed`` (by the node via ``kill()``/cleanup, or by an unknown sender),
    ``error`` (any other failure, including a backend that could not set up).
    ``stderr_tail`` is the last few KiB of its stderr (stdout is merged in).
    """

    code: int | None
    signal: int | None
    reason: ExitReason
    stderr_tail: str = ""


@dataclass(frozen=True)
class EnclaveSpec:
    """What to run in the enclave and what it may touch.

    ``argv``: the command, as seen inside. ``code_dirs``: host directories
    exposed read-only at the same path inside (the enclave package, the venv,
    the Python install). ``socket_dir``: host directory bound read-write at
    ``/run/ofnode``; the Unix socket there is the enclave's only link out.
    ``scratch_dir``: host directory at ``/scratch``, the only writable place
    that outlives the enclave. Limits: ``memory_bytes`` (resident, whole
    enclave), ``cpu_seconds`` (CPU time per process), ``max_pids`` (tasks),
    ``threads`` (CPU cores' worth of bandwidth). ``env``: the complete
    environment; nothing is inherited from the node.
    """

    argv: tuple[str, ...]
    code_dirs: tuple[Path, ...]
    socket_dir: Path
    scratch_dir: Path
    memory_bytes: int = 1 << 30
    cpu_seconds: float = 600
    max_pids: int = 64
    threads: int = 1
    env: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        def put(name: str, value: object) -> None:
            object.__setattr__(self, name, value)

        put("argv", tuple(str(a) for a in self.argv))
        put("code_dirs", tuple(Path(d) for d in self.code_dirs))
        put("socket_dir", Path(self.socket_dir))
        put("scratch_dir", Path(self.scratch_dir))
        put("env", MappingProxyType({str(k): str(v) for k, v in self.env.items()}))
        if not self.argv or not self.argv[0]:
            raise ValueError("EnclaveSpec.argv must name a program")
        for name in ("memory_bytes", "max_pids", "threads"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ValueError(f"EnclaveSpec.{name} must be a positive integer")
        if not (self.cpu_seconds > 0 and math.isfinite(self.cpu_seconds)):
            raise ValueError("EnclaveSpec.cpu_seconds must be a positive number")
        for d in (*self.code_dirs, self.socket_dir, self.scratch_dir):
            if not d.is_absolute():
                raise ValueError(f"EnclaveSpec paths must be absolute: {d}")
        for d in self.code_dirs:
            s = str(d)
            if s in ("/", "/tmp") or any(s == r or s.startswith(r + "/") for r in _RESERVED):
                raise ValueError(f"code dir {d} would shadow a sandbox mount ({', '.join(_RESERVED)}, /)")
        for k, v in self.env.items():
            if not k or "=" in k or "\0" in k or "\0" in v:
                raise ValueError(f"invalid environment variable {k!r}")


class EnclaveProcess(abc.ABC):
    """A running enclave. Use it as an async context manager.

    Leaving the ``async with`` block, normally, by an exception or by
    cancellation, kills the enclave if it still runs and reaps it: no
    process is ever left behind. ``wait()`` may be called any number of
    times, also after exit, and returns the same ``ExitInfo``.
    """

    @property
    @abc.abstractmethod
    def pid(self) -> int:
        """Host pid of the outermost process the backend started."""

    @abc.abstractmethod
    async def wait(self) -> ExitInfo:
        """Wait for the enclave to end and say how it ended."""

    @abc.abstractmethod
    def send_kill(self) -> None:
        """Kill the enclave now without waiting; idempotent, never raises."""

    async def kill(self) -> None:
        """Kill the enclave and wait until it is gone."""
        self.send_kill()
        await self.wait()

    async def aclose(self, timeout: float = 10.0) -> None:
        """Kill (if running) and reap, shielded from cancellation, bounded by ``timeout``."""
        self.send_kill()
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + timeout
            await self.wait()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()


class Backend(abc.ABC):
    """A way to run enclaves on this host."""

    #: Short name used in config and inventory: "sim", "docker", "gramine-sgx", ...
    name: str = ""

    @abc.abstractmethod
    def available(self) -> Availability:
        """Whether this backend can run here (cached: cheap to call again)."""

    @abc.abstractmethod
    async def start(self, spec: EnclaveSpec) -> EnclaveProcess:
        """Start an enclave; raise ``BackendUnavailable`` or ``BackendError`` if it cannot."""

    def sweep(self) -> int:
        """Remove what enclaves of nodes that died left behind; return how many (blocking).

        A node calls it once at start (in a worker thread), before it runs
        enclaves, so a crash never leaks containers or cgroups for long.
        """
        return 0


def runtime_code_dirs() -> tuple[Path, ...]:
    """The host directories needed to run ``python -m enclave.runtime`` with this interpreter.

    The ``enclave`` package directory alone (not the repository: no
    ``node/``, no ``.git``, no data dirs that may live beside it), the
    virtualenv, and the Python installation it points to. Directories under
    ``/usr`` are skipped: backends expose ``/usr`` anyway. Nested entries are
    merged into their parent.
    """
    import enclave

    pkg = Path(enclave.__file__).resolve().parent
    dirs = [pkg, Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()]
    dirs = [d for d in dirs if not (d == Path("/usr") or Path("/usr") in d.parents)]
    out: list[Path] = []
    for d in sorted(set(dirs), key=lambda p: len(p.parts)):
        if not any(d == o or o in d.parents for o in out):
            out.append(d)
    return tuple(out)

