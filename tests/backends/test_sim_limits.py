"""Limits: memory -> "oom", CPU time -> "cpu_time", fork bombs stopped; the node unharmed.

Each runs twice: with the default backend (a cgroup where the host allows,
which on this project's machines it does) and with the rlimit-only fallback.
"""

from __future__ import annotations

import os
import resource
import signal

import pytest
import trio

from tests.parts import require_part

from .conftest import ROOT, Box, procs_with

BACKENDS = ["sim", "sim_plain"]

EAT_MEMORY = """
chunks = []
while True:
    chunks.append(b"x" * (8 << 20))   # touched pages: resident, not just reserved
"""


@pytest.mark.parametrize("which", BACKENDS)
async def test_memory_limit_is_oom(which, request, box: Box) -> None:
    """(e) Allocating past memory_bytes ends the enclave with reason "oom"; the node goes on."""
    backend = request.getfixturevalue(which)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    info = await box.run(backend, EAT_MEMORY, memory_bytes=128 << 20)
    assert info.reason == "oom", info
    if "limits: cgroup v" in backend.available().reason:
        assert info.signal == signal.SIGKILL  # the kernel's OOM killer, inside the enclave's cgroup
    # the node (this process) did not grow and still works
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 << 10
    again = await box.run(backend, "print('still fine')")
    assert again.reason == "ok"


@pytest.mark.parametrize("which", BACKENDS)
async def test_cpu_time_limit(which, request, box: Box) -> None:
    """(f) Spinning past cpu_seconds ends it with SIGXCPU, reason "cpu_time"."""
    backend = request.getfixturevalue(which)
    info = await box.run(backend, "while True: pass", cpu_seconds=1)
    assert info.reason == "cpu_time", info
    assert info.signal == signal.SIGXCPU


async def test_cpu_time_limit_when_sigxcpu_ignored(sim, box: Box) -> None:
    """(f) An AI that ignores SIGXCPU is SIGKILLed at the hard limit one second later: still "cpu_time"."""
    info = await box.run(sim, "import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True: pass",
                         cpu_seconds=1)
    assert info.reason == "cpu_time", info
    assert info.signal == signal.SIGKILL


FORK_COUNT = """
import os, time
n = 0
try:
    for _ in range(500):
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
        n += 1
except OSError as e:
    print("stopped", n, e.errno)
    raise SystemExit(3)
print("not stopped", n)
"""


@pytest.mark.parametrize("which", BACKENDS)
async def test_fork_limit(which, request, box: Box) -> None:
    """(g) fork fails (EAGAIN) once max_pids tasks exist; the sleeping children die with the enclave."""
    if which == "sim_plain":  # RLIMIT_NPROC is per host uid: exact only with a sandbox uid of its own
        require_part("root (a sandbox uid per enclave)", ROOT)
    backend = request.getfixturevalue(which)
    token = os.urandom(6).hex()
    info = await box.run(backend, FORK_COUNT + f"# {token}", max_pids=16)
    assert info.code == 3, info
    stopped = info.stderr_tail.split("stopped", 1)[1].split()
    assert int(stopped[0]) < 16 and int(stopped[1]) == 11  # EAGAIN
    assert procs_with(token) == []


async def test_fork_bomb_contained_and_killed(sim, box: Box) -> None:
    """(g) A real fork bomb stays under the pid limit and is gone after the context exits."""
    token = os.urandom(6).hex()
    spec = box.spec(f"""
import os
while True:
    try:
        os.fork()
    except OSError:
        pass
# {token}
""", max_pids=24)
    peak = 0
    with trio.fail_after(30):
        async with await sim.start(spec) as proc:
            for _ in range(20):
                await trio.sleep(0.05)
                peak = max(peak, len(procs_with(token)))
            assert proc.exit_info is None  # still spinning: contained, not crashed
    assert 2 <= peak <= 24 + 2, peak  # +2: bwrap's monitor and init share the cmdline token
    assert procs_with(token) == []


async def test_threads_bound_cpu_bandwidth(sim, box: Box) -> None:
    """With a cpu cgroup, threads=1 caps two busy processes at about one core together."""
    require_part("the cpu cgroup controller and 2+ cores",
                 "cpu," in sim.available().reason + "," and len(os.sched_getaffinity(0)) >= 2)
    probe = """
import os, time
for _ in range(2):
    if os.fork() == 0:
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            pass
        os._exit(0)
os.wait(); os.wait()
t = os.times()
print(t.children_user + t.children_system)
"""
    info = await box.run(sim, probe, threads=1)
    assert info.reason == "ok", info
    assert float(info.stderr_tail.split()[-1]) < 2.0  # throttled: ~1.5; unthrottled: ~3.0 (2 x 1.5 s)


async def test_concurrent_enclaves_each_get_their_own_cgroup(box: Box, tmp_path) -> None:
    """Two backend instances, two enclaves at once: both limited by their own cgroup."""
    from enclave.backends.sim import SimBackend

    from .conftest import _require

    a, b = _require(SimBackend()), _require(SimBackend())
    require_part("cgroups", "limits: cgroup v" in a.available().reason, a.available().reason)
    other = Box(tmp_path / "b", tmp_path / "b" / "scratch", tmp_path / "b" / "sock")
    other.scratch.mkdir(parents=True)
    other.sock.mkdir()
    results = {}

    async def run(name: str, backend: SimBackend, bx: Box) -> None:
        results[name] = await bx.run(backend, EAT_MEMORY, memory_bytes=96 << 20)

    async with trio.open_nursery() as n:
        n.start_soon(run, "a", a, box)
        n.start_soon(run, "b", b, other)
    for info in results.values():
        assert (info.reason, info.signal) == ("oom", signal.SIGKILL), info
