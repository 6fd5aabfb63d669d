"""A fetch killed with SIGKILL mid-way resumes where it stopped, store intact."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import trio

from enclave.cid import Cid
from node.store.blockstore import Blockstore
from node.store.exchange import Exchange
from node.store.unixfs import iter_file_blocks

from .conftest import add_bytes, make_node, random_file

REPO = Path(__file__).resolve().parents[2]
MiB = 1 << 20


class SlowExchange(Exchange):
    """Serves at most ~50 blocks a second, so a fetch can be caught half-way."""

    def read_block(self, cid: Cid) -> bytes:
        time.sleep(0.02)  # a worker thread: the trio loop keeps running
        return super().read_block(cid)


async def run_fetcher(store: Path, root: Cid, addr: str, kill_after: int | None) -> list[str]:
    """Run fetch_proc; SIGKILL it once it reports ``kill_after`` blocks fetched."""
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "tests.exchange.fetch_proc", str(store), root.encode(), addr],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    lines: list[str] = []
    buf = b""
    try:
        assert proc.stdout is not None
        while True:
            chunk = await proc.stdout.receive_some(4096)
            if not chunk:
                break
            buf += chunk
            *complete, buf = buf.split(b"\n")
            for line in complete:
                lines.append(line.decode())
                if kill_after is not None and line.startswith(b"progress") and int(line.split()[2]) >= kill_after:
                    proc.kill()  # SIGKILL: no cleanup of any kind
                    await proc.wait()
                    return lines
        await proc.wait()
        return lines
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_sigkill_mid_fetch_then_resume(tmp_path):
    data = random_file(24 * MiB, seed=21)
    with trio.fail_after(120):
        async with make_node(tmp_path / "server", SlowExchange) as server:
            res = add_bytes(server.store, data)
            addr = f"{server.p2p.host.get_addrs()[0]}/p2p/{server.id.to_base58()}"
            store_dir = tmp_path / "client"

            first = await run_fetcher(store_dir, res.cid, addr, kill_after=30)
            assert not any(line.startswith("done") for line in first)
            report = Blockstore(store_dir).verify()
            assert report.corrupt == [] and report.stray == []
            kept = report.ok
            assert 30 <= kept < res.blocks

            second = await run_fetcher(store_dir, res.cid, addr, kill_after=None)
            done = [line for line in second if line.startswith("done")]
            assert done, second
            fetched, present, blocks = map(int, done[0].split()[1:])
            assert blocks == res.blocks
            assert present == kept and fetched == res.blocks - kept

    store = Blockstore(store_dir)
    assert store.verify().corrupt == []
    assert b"".join(iter_file_blocks(res.cid, store.get)) == data
