"""Lifecycle: start, wait, kill, and cleanup on every path (h); availability; exit reporting."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import trio

from enclave.backends import BackendUnavailable, get_backend
from enclave.backends.process import TAIL_BYTES
from enclave.backends.sim import SimBackend
from tests.parts import require_part

from .conftest import Box, procs_with

SLEEPER = "import time\ntime.sleep(60)\n# {token}"


def _cgroup_leftovers() -> list[str]:
    """This process's enclave cgroups that still exist."""
    from enclave.backends import cgroup as cgroups

    try:
        parents = cgroups._parents()
    except OSError:
        return []
    return [str(p / e) for p in parents if p.is_dir() for e in os.listdir(p) if e.startswith(f"ofnode-{os.getpid()}-")]


async def test_cancel_kills_and_reaps(sim, box: Box) -> None:
    """(h) Cancelling the task inside the context leaves no process and no cgroup behind."""
    token = os.urandom(6).hex()
    with trio.move_on_after(0.5) as scope:
        async with await sim.start(box.spec(SLEEPER.format(token=token))) as proc:
            assert procs_with(token)
            await proc.wait()
    assert scope.cancelled_caught
    assert proc.exit_info is not None and proc.exit_info.reason == "killed"
    assert procs_with(token) == []
    assert not Path(f"/proc/{proc.pid}").exists()
    assert _cgroup_leftovers() == []


async def test_exception_kills_and_reaps(sim, box: Box) -> None:
    """(h) An exception in the block kills the enclave too."""
    token = os.urandom(6).hex()
    with pytest.raises(RuntimeError):
        async with await sim.start(box.spec(SLEEPER.format(token=token))):
            raise RuntimeError("node-side failure")
    assert procs_with(token) == []


async def test_kill_then_wait(sim, box: Box) -> None:
    token = os.urandom(6).hex()
    async with await sim.start(box.spec(SLEEPER.format(token=token))) as proc:
        await proc.kill()
        info = await proc.wait()
        assert info.reason == "killed"
        assert await proc.wait() is info  # same answer every time
    assert procs_with(token) == []


async def test_kill_after_exit_keeps_reason(sim, box: Box) -> None:
    """A kill that arrives after the enclave ended on its own does not relabel it."""
    async with await sim.start(box.spec("pass")) as proc:
        while not os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT):  # noqa: ASYNC222
            await trio.sleep(0.01)
        await proc.kill()
        assert (await proc.wait()).reason == "ok"


async def test_exit_status_and_signal_reporting(sim, box: Box) -> None:
    info = await box.run(sim, "import sys; print('bye', file=sys.stderr); sys.exit(7)")
    assert (info.code, info.signal, info.reason) == (7, None, "error")
    assert "bye" in info.stderr_tail
    info = await box.run(sim, "import os, signal; os.kill(os.getpid(), signal.SIGTERM)")
    assert (info.code, info.signal, info.reason) == (None, signal.SIGTERM, "error")
    info = await box.run(sim, "pass")
    assert (info.code, info.signal, info.reason) == (0, None, "ok")


async def test_stderr_tail_is_bounded(sim, box: Box) -> None:
    """A chatty enclave neither blocks on a full pipe nor grows the node: only the tail is kept."""
    info = await box.run(sim, "import sys\nfor i in range(20000): print('x' * 100)\nprint('THE END')")
    assert info.reason == "ok"
    assert len(info.stderr_tail.encode()) <= TAIL_BYTES
    assert info.stderr_tail.rstrip().endswith("THE END")


async def test_missing_bwrap_is_unavailable(box: Box) -> None:
    backend = SimBackend(bwrap="/nonexistent/bwrap")
    a = backend.available()
    assert not a.ok and "bubblewrap" in a.reason
    with pytest.raises(BackendUnavailable, match="bubblewrap"):
        await backend.start(box.spec("pass"))


def test_registry() -> None:
    assert isinstance(get_backend("sim"), SimBackend)
    with pytest.raises(BackendUnavailable, match="unknown enclave backend"):
        get_backend("nope")


def test_availability_reason_names_the_protections(sim) -> None:
    reason = sim.available().reason
    assert "bubblewrap" in reason and "seccomp" in reason and "limits:" in reason


NODE_SCRIPT = """
import sys, trio
from pathlib import Path
from enclave.backends import EnclaveSpec, runtime_code_dirs
from enclave.backends.sim import SimBackend
async def main():
    spec = EnclaveSpec(argv=(sys.executable, "-c", "import time; time.sleep(60)  # " + sys.argv[3]),
                       code_dirs=runtime_code_dirs(), socket_dir=Path(sys.argv[1]), scratch_dir=Path(sys.argv[2]))
    proc = await SimBackend().start(spec)
    print("started", flush=True)
    await trio.sleep(60)
trio.run(main)
"""


async def test_node_death_kills_enclave(sim, box: Box) -> None:
    """(h) If the node process is SIGKILLed (no cleanup at all), --die-with-parent takes the enclave down."""
    token = os.urandom(6).hex()
    argv = [sys.executable, "-c", textwrap.dedent(NODE_SCRIPT), str(box.sock), str(box.scratch), token]
    node = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)  # noqa: ASYNC220 - a plain child is the point
    try:
        assert node.stdout is not None
        assert (await trio.to_thread.run_sync(node.stdout.readline)).strip() == "started"
        assert procs_with(token)
        node.send_signal(signal.SIGKILL)
        node.wait()
        with trio.move_on_after(5):
            while procs_with(token):
                await trio.sleep(0.05)
        left = {p: Path(f"/proc/{p}/cmdline").read_bytes()[:80] for p in procs_with(token)}
        assert not left, left
    finally:
        node.kill()
        node.wait()


async def test_enclave_outlives_idle_worker_threads(sim, box: Box) -> None:
    """Regression: trio's open_process forks in a worker thread that exits after 10 idle
    seconds, and PR_SET_PDEATHSIG (--die-with-parent) fires on *thread* exit. The
    backend spawns from the trio thread, so the enclave must still run after 11 s."""
    token = os.urandom(6).hex()
    async with await sim.start(box.spec(SLEEPER.format(token=token))) as proc:
        await trio.sleep(11)
        assert proc.exit_info is None
        assert procs_with(token)


def test_sweep_removes_orphans_of_dead_nodes() -> None:
    """A cgroup named for a node pid that no longer exists is emptied (SIGKILL) and removed."""
    from enclave.backends import cgroup as cgroups

    try:
        cg = cgroups.EnclaveCgroup.create("ofnode-999999999-1", 64 << 20, 8, 1)  # no such pid
    except cgroups.CgroupUnavailable as exc:
        require_part("cgroups", False, str(exc))
    token = os.urandom(6).hex()
    orphan = subprocess.Popen(["/bin/sh", "-c", f'echo $$ > "$1" && exec sleep 60 # {token}', "sh",
                               cg.procs_files()[0]])
    try:
        for _ in range(100):
            if orphan.pid in cg.pids():
                break
            time.sleep(0.01)
        assert orphan.pid in cg.pids()
        assert cgroups.sweep_stale() >= 1
        assert orphan.wait(timeout=5) == -signal.SIGKILL
        assert all(not d.exists() for d in cg.dirs.values())
    finally:
        orphan.kill()
        orphan.wait()
        cg.remove()


def test_bwrap_without_namespaces_is_unavailable(tmp_path) -> None:
    """A bwrap that cannot unshare (e.g. a locked-down container) is refused with bwrap's own words."""
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to creating new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    a = SimBackend(bwrap=str(fake)).available()
    assert not a.ok
    assert "cannot create namespaces" in a.reason and "No permissions" in a.reason


async def test_runs_without_seccomp_and_says_so(box: Box, monkeypatch) -> None:
    """No libseccomp: the sandbox still runs, unfiltered, and available() says so."""
    from enclave.backends import seccomp
    from enclave.backends import sim as sim_mod

    def missing() -> bytes:
        raise seccomp.SeccompUnavailable("libseccomp not found (test)")

    monkeypatch.setattr(seccomp, "filter_bpf", missing)
    sim_mod._seccomp_note.cache_clear()
    try:
        backend = SimBackend()
        require_part("the sim backend", backend.available().ok, backend.available().reason)
        assert "WITHOUT a syscall filter" in backend.available().reason
        info = await box.run(backend, "print(open('/proc/self/status').read().split('Seccomp:')[1].split()[0])")
        assert info.reason == "ok" and info.stderr_tail.strip() == "0"
    finally:
        sim_mod._seccomp_note.cache_clear()


async def test_dropped_handle_is_killed(sim, box: Box) -> None:
    """A handle dropped without wait() or async-with still kills its enclave (finaliser)."""
    import gc

    token = os.urandom(6).hex()
    proc = await sim.start(box.spec(SLEEPER.format(token=token)))
    assert procs_with(token)
    del proc
    gc.collect()
    with trio.fail_after(5):
        while procs_with(token):
            await trio.sleep(0.05)
    assert _cgroup_leftovers() == []
