"""A local enclave process: spawn, wait, kill, keep the tail of its stderr.

Shared by the backends that run a process on this host (sim, gramine-direct,
gramine-sgx).

Why not ``trio.lowlevel.open_process``: trio runs ``subprocess.Popen`` in a
worker thread, and those threads exit after ten idle seconds. bwrap's
``--die-with-parent`` is ``PR_SET_PDEATHSIG``, which fires when the *thread*
that forked the child exits, so every enclave started that way is SIGKILLed
about ten seconds after its start (seen on this project's machines with trio
0.35). Here ``subprocess.Popen`` runs in the trio thread itself (CPython uses
vfork: about a millisecond of blocking), so the parent-death signal is tied
to the node's event loop thread, as intended.
Waiting uses a pidfd (``trio.lowlevel.wait_readable``) and ``os.wait4``,
which also yields the CPU time of the whole reaped tree: that is how a
CPU-time kill is told from other SIGKILLs without cgroups.

Why a thread for stderr: the pipe must be drained while nobody awaits the
process, or a chatty enclave would block on a full pipe; a daemon thread
needs no nursery from the caller and ends at EOF, which the kernel delivers
once every process of the sandbox is gone. Only the last ``TAIL_BYTES`` are
kept: an enclave cannot grow the node's memory by logging.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import trio

from enclave.backends.base import EnclaveProcess, ExitInfo

__all__ = ["TAIL_BYTES", "LocalEnclaveProcess", "RawExit", "spawn"]

TAIL_BYTES = 4096


@dataclass(frozen=True)
class RawExit:
    """What the kernel said about the spawned (outermost) process."""

    status: int  # raw wait status
    cpu_seconds: float  # user + system time of it and every descendant it reaped
    max_rss_kib: int
    killed_by_us: bool
    stderr_tail: str


Classifier = Callable[[RawExit], ExitInfo]


class _TailReader(threading.Thread):
    def __init__(self, fd: int) -> None:
        super().__init__(name=f"enclave-stderr-{fd}", daemon=True)
        self._fd = fd
        self._buf = bytearray()
        self.start()

    def run(self) -> None:
        try:
            while chunk := os.read(self._fd, 65536):
                self._buf += chunk
                if len(self._buf) > 2 * TAIL_BYTES:
                    del self._buf[: len(self._buf) - TAIL_BYTES]
        except OSError:
            pass
        finally:
            os.close(self._fd)

    def tail(self) -> str:
        return bytes(self._buf[-TAIL_BYTES:]).decode("utf-8", "replace")


def spawn(argv: Sequence[str], env: dict[str, str], pass_fds: Sequence[int] = ()) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``argv`` with stdin from /dev/null and stdout+stderr into a pipe.

    Every descriptor of the node is closed in the child except ``pass_fds``
    (a leaked libp2p socket would be a way out of the sandbox); the child
    gets its own process group, so a Ctrl-C at the node's terminal does not
    reach it behind the node's back. Returns (Popen, read end of the pipe).
    Synchronous on purpose: see the module docstring.
    """
    r, w = os.pipe()
    try:
        popen = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=w, stderr=w, env=env,
            close_fds=True, pass_fds=tuple(pass_fds), restore_signals=True, process_group=0,
        )
    except BaseException:
        os.close(r)
        raise
    finally:
        os.close(w)
    return popen, r


class LocalEnclaveProcess(EnclaveProcess):
    """A spawned process the node owns; reaped exactly once, by ``wait()``."""

    def __init__(self, popen: subprocess.Popen[bytes], stderr_fd: int, classify: Classifier,
                 on_kill: Callable[[], None] = lambda: None,
                 on_exit: Callable[[], None] = lambda: None) -> None:
        self._popen = popen  # kept so its finaliser never reaps behind our back
        self._pid = popen.pid
        self._pidfd = os.pidfd_open(popen.pid)
        self._reader = _TailReader(stderr_fd)
        self._classify = classify
        self._on_kill = on_kill
        self._extra_pidfds: list[int] = []
        self._on_exit = on_exit
        self._killed = False
        self._info: ExitInfo | None = None
        self._lock = trio.Lock()

    def also_kill(self, pid: int) -> None:
        """Kill ``pid`` too on ``send_kill`` (a descendant, e.g. a sandbox's pid 1).

        Held as a pidfd, so a later kill can never hit a recycled pid. Call it
        while ``pid`` is known to be alive.
        """
        try:
            self._extra_pidfds.append(os.pidfd_open(pid))
        except OSError:
            pass

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def exit_info(self) -> ExitInfo | None:
        return self._info

    async def wait(self) -> ExitInfo:
        async with self._lock:
            if self._info is None:
                await trio.lowlevel.wait_readable(self._pidfd)  # readable once it exited
                _, status, ru = os.wait4(self._pid, 0)  # noqa: ASYNC222 - exited: returns at once
                self._popen.returncode = os.waitstatus_to_exitcode(status)
                trio.lowlevel.notify_closing(self._pidfd)
                os.close(self._pidfd)
                for fd in self._extra_pidfds:
                    os.close(fd)
                self._extra_pidfds.clear()
                # EOF comes as soon as the sandbox's last process is gone; the
                # bound only guards against a descendant that kept the pipe.
                await trio.to_thread.run_sync(self._reader.join, 2.0)
                try:  # classify first: it may read the cgroup that on_exit removes
                    self._info = self._classify(RawExit(
                        status=status,
                        cpu_seconds=ru.ru_utime + ru.ru_stime,
                        max_rss_kib=ru.ru_maxrss,
                        killed_by_us=self._killed,
                        stderr_tail=self._reader.tail(),
                    ))
                finally:
                    self._on_exit()
            return self._info

    def send_kill(self) -> None:
        """SIGKILL now, without waiting (safe to call at any time, any number of times)."""
        if self._info is not None:
            return
        try:  # already exited on its own (not reaped yet)? then it was not "killed"
            if os.waitid(os.P_PID, self._pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return
        except ChildProcessError:
            return
        self._killed = True
        try:
            os.kill(self._pid, signal.SIGKILL)  # not reaped yet, so the pid is still ours
        except ProcessLookupError:
            pass
        for fd in self._extra_pidfds:
            try:
                signal.pidfd_send_signal(fd, signal.SIGKILL)
            except OSError:
                pass
        self._on_kill()

    def __del__(self) -> None:
        # Safety net for a handle dropped without wait()/async with: never leave
        # a sandbox running. (Popen's own finaliser then reaps the zombie.)
        if self._info is None:
            try:
                self.send_kill()
                os.close(self._pidfd)
                for fd in self._extra_pidfds:
                    os.close(fd)
                self._on_exit()  # backend cleanup (e.g. the cgroup: waits briefly for the kills)
            except Exception:  # noqa: BLE001, S110 - finalisers must not raise
                pass
