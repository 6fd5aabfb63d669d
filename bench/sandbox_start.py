"""Cost of the sim sandbox: time from start() to exit, sandboxed vs. plain.

Run: .venv/bin/python bench/sandbox_start.py [runs]
Prints p50 and p90 over ``runs`` (default 20) in milliseconds, for `true` and
`python -c 'import sys'`: plain subprocess, bare bwrap (namespaces + one
bind), and the full sim backend (cgroup, seccomp, uid drop, all mounts).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from enclave.backends import EnclaveSpec, runtime_code_dirs
from enclave.backends.sim import SimBackend

from bench.results import figure

TRUE = ["/usr/bin/true"]
PY = [sys.executable, "-c", "import sys"]


def pct(xs: list[float], p: float) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[int(p) - 1] if len(xs) > 1 else xs[0]


async def measure(fn: Callable[[], Awaitable[None]], runs: int) -> list[float]:
    await fn()  # warm up (page cache, backend probes)
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        await fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


async def main(runs: int) -> None:
    backend = SimBackend()
    print(f"sim backend: {backend.available().reason}")
    with tempfile.TemporaryDirectory() as tmp:
        scratch, sock = Path(tmp, "scratch"), Path(tmp, "sock")
        scratch.mkdir()
        sock.mkdir()

        def plain(argv: list[str]) -> Callable[[], Awaitable[None]]:
            async def run() -> None:
                subprocess.run(argv, check=True)  # noqa: ASYNC221 - timing a blocking run on purpose
            return run

        def bare_bwrap(argv: list[str]) -> Callable[[], Awaitable[None]]:
            cmd = ["bwrap", "--unshare-all", "--die-with-parent", "--ro-bind", "/", "/", *argv]

            async def run() -> None:
                subprocess.run(cmd, check=True)  # noqa: ASYNC221 - timing a blocking run on purpose
            return run

        def sim(argv: list[str], phase: list[float] | None = None) -> Callable[[], Awaitable[None]]:
            spec = EnclaveSpec(argv=tuple(argv), code_dirs=runtime_code_dirs(), socket_dir=sock,
                               scratch_dir=scratch, memory_bytes=512 << 20, cpu_seconds=30, max_pids=32)

            async def run() -> None:
                t = time.perf_counter()
                async with await backend.start(spec) as proc:
                    if phase is not None:
                        phase.append((time.perf_counter() - t) * 1000)
                    info = await proc.wait()
                assert info.reason == "ok", info
            return run

        for label, argv in (("true", TRUE), ("python -c 'import sys'", PY)):
            started: list[float] = []
            rows = [
                ("plain subprocess", await measure(plain(argv), runs)),
                ("bare bwrap", await measure(bare_bwrap(argv), runs)),
                ("sim backend", await measure(sim(argv, started), runs)),
            ]
            print(f"\n{label}: start -> exit, {runs} runs")
            for name, xs in rows:
                print(f"  {name:18s} p50 {pct(xs, 50):7.1f} ms   p90 {pct(xs, 90):7.1f} ms")
            started = started[1:]  # drop the warm-up
            print(f"  {'(sim start() returns)':18s} p50 {pct(started, 50):7.1f} ms")
            base = pct(rows[0][1], 50)
            print(f"  sandbox overhead p50: {pct(rows[2][1], 50) - base:.1f} ms")
            key = "true" if argv is TRUE else "python"
            figure(f"sim_start_exit_{key}", pct(rows[2][1], 50), "ms", label=f"sim sandbox start -> exit of `{label}`, p50",
                   reference=base, reference_label="plain subprocess")


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 20)
