"""Leave an enclave container behind the way a crashed node does.

A stand-in node process starts an enclave through the docker backend and is
then SIGKILLed: nothing of ours runs any cleanup, exactly as after a crash.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

_NODE = """
import sys, trio
sys.path.insert(0, {repo!r})
from enclave.backends import EnclaveSpec, runtime_code_dirs
from enclave.backends.docker import DockerBackend
async def main():
    p = await DockerBackend().start(EnclaveSpec(argv=(sys.executable, "-c", "import time; time.sleep(300)"),
        code_dirs=runtime_code_dirs(), socket_dir={sock!r}, scratch_dir={scratch!r}))
    print(p.container_id, flush=True)
    await trio.sleep_forever()
trio.run(main)
"""


def orphan_container(workdir: Path) -> str:
    """Start an enclave container from a process, SIGKILL the process; return the container id."""
    sock, scratch = workdir / "sock", workdir / "scratch"
    sock.mkdir(parents=True, exist_ok=True)
    scratch.mkdir(parents=True, exist_ok=True)
    code = textwrap.dedent(_NODE).format(repo=str(REPO), sock=str(sock), scratch=str(scratch))
    node = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        cid = node.stdout.readline().strip()  # type: ignore[union-attr]
    finally:
        node.kill()
        node.wait()
    if not cid:
        raise RuntimeError("the stand-in node did not start its enclave")
    return cid
