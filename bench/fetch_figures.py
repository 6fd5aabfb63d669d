"""Block exchange throughput on loopback: Bitswap fetch vs a plain libp2p stream.

    .venv/bin/python bench/fetch_figures.py [--size 256] [--runs 3] [--peers 3] [--window 64] [--inprocess]

One file of ``--size`` MiB (random bytes, 256 KiB chunks) is imported into a
blockstore that every server opens. Then, ``--runs`` times each, over the
same connections:

* stream: one server writes ``--size`` MiB on one libp2p stream (Noise +
  yamux, 1 MiB writes) and the client reads it: the ceiling of the transport.
* fetch x1: the client fetches the whole DAG (the same number of file bytes
  plus 4 small inner nodes) from one server into an empty blockstore: each
  block hashed, written, the batch flushed to disk, the tree walked.
* fetch xN: the same from ``--peers`` servers at once.

Then, unless ``--throttled-rate 0``, fetch x1 and fetch xN again on a
``--throttled-size`` MiB file from servers whose answers are capped at
``--throttled-rate`` MB/s each, as behind slow uplinks: where several peers
pay off.

For every figure the client's CPU time (all its threads, from
``time.process_time``) is printed per MiB moved: on this shared 2-core
machine wall-clock rates swing with other jobs' load, CPU per byte much less.

By default every server runs in its own OS process (``--serve`` mode of this
script) and the client in this one: py-libp2p is CPU-bound (Noise, yamux
framing) and holds the GIL, so hosts in one process share one core and
several peers cannot be faster than one. ``--inprocess`` runs them all in
this process for comparison. Prints MB/s (10^6 bytes per second), medians
and every run.
"""
from __future__ import annotations

import argparse
import io
import logging
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from pathlib import Path
from typing import AsyncIterator, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import multiaddr  # noqa: E402

from bench.results import figure  # noqa: E402
import trio  # noqa: E402
from libp2p.custom_types import TProtocol  # noqa: E402
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr  # noqa: E402

from enclave.cid import Cid  # noqa: E402
from node.identity import Identity  # noqa: E402
from node.metrics import node_metrics  # noqa: E402
from node.p2p.host import P2PHost  # noqa: E402
from node.store.blockstore import Blockstore  # noqa: E402
from node.store.exchange import Exchange  # noqa: E402
from node.store.unixfs import ImportResult, import_stream  # noqa: E402

STREAM_PROTO = TProtocol("/ofnode-bench/stream/1")
CHUNK = 1 << 20
MiB = 1 << 20


def quiet() -> None:
    logging.getLogger("libp2p").setLevel(logging.CRITICAL)
    logging.getLogger("ofnode").setLevel(logging.ERROR)


class CappedExchange(Exchange):
    """Reads blocks no faster than ``rate`` MB/s: a peer behind a slow uplink."""

    rate = 0.0

    def read_block(self, cid: Cid) -> bytes:
        data = super().read_block(cid)
        time.sleep(len(data) / (self.rate * 1e6))  # a worker thread
        return data


class MemoryExchange(Exchange):
    """``--no-disk``: serves every block from memory (loaded at start, unverified)."""

    blocks: dict[Cid, bytes] = {}

    def read_block(self, cid: Cid) -> bytes:
        return self.blocks[cid.to_v1()]


class DiscardStore(Blockstore):
    """``--no-disk``: received blocks are still hashed by the exchange, then dropped."""

    def put(self, cid: Cid, data: bytes, *, hashed: bool = False) -> bool:  # type: ignore[override]
        return True

    @contextmanager
    def batch(self, *, flush: bool = True) -> Iterator[None]:
        yield

    def flush(self) -> None:
        pass


@asynccontextmanager
async def serving(store_dir: Path, rate: float = 0.0, memory: bool = False) -> AsyncIterator[P2PHost]:
    """A host that serves Bitswap from ``store_dir`` and the stream protocol."""
    p2p = P2PHost(identity=Identity.generate(), listen=["/ip4/127.0.0.1/tcp/0"], bootstrap=[], metrics=node_metrics())
    payload = random.Random(7).randbytes(CHUNK)

    async def stream_handler(stream) -> None:
        try:
            want = b""
            while len(want) < 8:
                want += await stream.read(8 - len(want))
            left = int.from_bytes(want, "big")
            while left > 0:
                await stream.write(payload[: min(left, CHUNK)])
                left -= CHUNK
            await stream.close()
        except Exception:
            await stream.reset()

    async with p2p.running():
        p2p.host.set_stream_handler(STREAM_PROTO, stream_handler)
        store = Blockstore(store_dir)
        if memory:
            blocks = {c: store.get(c) for c in store.iter_cids()}
            x: Exchange = type("Memory", (MemoryExchange,), {"blocks": blocks})(p2p.host, store, p2p.metrics)
        elif rate:
            x = type("Capped", (CappedExchange,), {"rate": rate})(p2p.host, store, p2p.metrics)
        else:
            x = Exchange(p2p.host, store, p2p.metrics)
        async with trio.open_nursery() as nursery:
            await nursery.start(x.run)
            yield p2p
            nursery.cancel_scope.cancel()


def p2p_addr(p2p: P2PHost) -> str:
    return f"{p2p.host.get_addrs()[0]}/p2p/{p2p.host.get_id().to_base58()}"


async def serve_forever(store_dir: str, rate: float, memory: bool) -> None:
    """``--serve``: print our address, serve until stdin closes."""
    quiet()
    async with serving(Path(store_dir), rate, memory) as p2p:
        print(p2p_addr(p2p), flush=True)
        stdin = trio.lowlevel.FdStream(os.dup(0))
        while await stdin.receive_some(1024):
            pass


SERVER_PIDS: list[int] = []   # server processes now running (none with --inprocess)


def servers_cpu() -> float:
    """CPU seconds (user + system) the server processes have used so far."""
    total = 0
    for pid in SERVER_PIDS:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])   # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


@asynccontextmanager
async def server_processes(store_dir: Path, n: int, rate: float, memory: bool) -> AsyncIterator[list[str]]:
    procs = [subprocess.Popen([sys.executable, __file__, "--serve", str(store_dir), "--server-rate", str(rate)]
                              + (["--no-disk"] if memory else []), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) for _ in range(n)]
    try:
        addrs = [await trio.to_thread.run_sync(p.stdout.readline) for p in procs]  # type: ignore[union-attr]
        if not all(addrs):
            raise RuntimeError("a server process failed to start")
        SERVER_PIDS[:] = [p.pid for p in procs]
        yield [a.decode().strip() for a in addrs]
    finally:
        SERVER_PIDS.clear()
        for p in procs:
            p.stdin.close()  # type: ignore[union-attr]
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


@asynccontextmanager
async def server_tasks(store_dir: Path, n: int, rate: float, memory: bool) -> AsyncIterator[list[str]]:
    async with AsyncExitStack() as stack:
        hosts = [await stack.enter_async_context(serving(store_dir, rate, memory)) for _ in range(n)]
        yield [p2p_addr(h) for h in hosts]


async def stream_rate(p2p: P2PHost, info: PeerInfo, size: int) -> tuple[float, float, float, float]:
    """(MB/s, and CPU ms per MiB: client, its event-loop thread, servers) of reading ``size`` bytes off one stream."""
    stream = await p2p.host.new_stream(info.peer_id, [STREAM_PROTO])
    l0, c0, s0 = time.thread_time(), time.process_time(), servers_cpu()
    t0 = time.perf_counter()
    await stream.write(size.to_bytes(8, "big"))
    got = 0
    while got < size:
        data = await stream.read(4 * MiB)
        if not data:
            raise RuntimeError(f"stream ended after {got} of {size} bytes")
        got += len(data)
    dt = time.perf_counter() - t0
    cpu = time.process_time() - c0
    loop = time.thread_time() - l0
    server = servers_cpu() - s0
    await stream.close()
    mib = size / MiB
    return size / dt / 1e6, cpu * 1e3 / mib, loop * 1e3 / mib, server * 1e3 / mib


async def fetch_rate(x: Exchange, root: Cid, infos: list[PeerInfo], window: int) -> tuple[float, float, float, float, str]:
    """(MB/s, CPU ms per MiB: client, its event-loop thread, servers; blocks per peer) of one whole fetch."""
    l0, c0, s0 = time.thread_time(), time.process_time(), servers_cpu()
    t0 = time.perf_counter()
    result = await x.fetch_dag(root, [i.peer_id for i in infos], window=window)
    dt = time.perf_counter() - t0
    cpu = time.process_time() - c0
    loop = time.thread_time() - l0
    server = servers_cpu() - s0
    split = "/".join(str(s.blocks) for s in result.peers.values())
    if os.environ.get("BENCH_DEBUG"):
        print(result, file=sys.stderr)
    mib = result.bytes_fetched / MiB
    return result.bytes_fetched / dt / 1e6, cpu * 1e3 / mib, loop * 1e3 / mib, server * 1e3 / mib, split


async def fetch_once(x: Exchange, dest: Path, root: Cid, infos: list[PeerInfo], window: int,
                     no_disk: bool) -> tuple[float, float, float, float, str]:
    """One fetch into an empty store at ``dest``, by the client's one exchange.

    One exchange for every fetch, as a node has: it remembers what it asked
    each server, so blocks a server still sends for the previous fetch (its
    cancels may arrive after it answered) are late duplicates, not junk that
    would get the server dropped from the next fetch.
    """
    x.store = (DiscardStore if no_disk else Blockstore)(dest)
    try:
        return await fetch_rate(x, root, infos, window)
    finally:
        shutil.rmtree(dest, ignore_errors=True)


@asynccontextmanager
async def client_exchange(client: P2PHost, work: Path) -> AsyncIterator[Exchange]:
    x = Exchange(client.host, Blockstore(work / "client-idle"), client.metrics)
    async with trio.open_nursery() as nursery:
        await nursery.start(x.run)
        yield x
        nursery.cancel_scope.cancel()


def make_source(path: Path, mib: int, seed: int) -> "ImportResult":
    rng = random.Random(seed)
    data = b"".join(rng.randbytes(MiB) for _ in range(mib))
    store = Blockstore(path)
    with store.batch():
        res = import_stream(io.BytesIO(data), store.put)
    return res


Figure = tuple[float, float, float, float]   # MB/s; CPU ms/MiB of the client, its loop thread, the servers


def cpu_text(cpu: float, loop: float, server: float) -> str:
    return f"CPU ms/MiB client {cpu:5.2f} (loop {loop:5.2f}) servers {server:5.2f}"


def summary(figures: dict[str, list[Figure]]) -> dict[str, float]:
    med = {}
    for k, v in figures.items():
        rate, cpu, loop, server = (statistics.median(f[i] for f in v) for i in range(4))
        med[k], med[k + " cpu"], med[k + " loop"], med[k + " server"] = rate, cpu, loop, server
        print(f"{k:16s} median {rate:6.1f} MB/s  {cpu_text(cpu, loop, server)}"
              f"   runs: {' '.join(f'{f[0]:.1f}' for f in v)}")
    return med


async def run(args: argparse.Namespace) -> None:
    quiet()
    work = Path(tempfile.mkdtemp(prefix="fetch-bench-", dir=args.dir))
    many = f"fetch x{args.peers}"
    try:
        res = make_source(work / "source", args.size, 1)
        print(f"file {args.size} MiB, {res.blocks} blocks, root {res.cid}")
        print(f"servers {'in this process (CPU figures include them)' if args.inprocess else 'one OS process each'}, "
              f"{os.cpu_count()} CPUs, window {args.window} blocks"
              f"{f', answers capped at {args.server_rate:g} MB/s per server' if args.server_rate else ''}"
              f"{', NO DISK (blocks served from memory, received blocks not stored)' if args.no_disk else ''}")
        print("MB/s = file bytes moved / wall time (10^6 B/s); CPU ms/MiB = the client's CPU time "
              "(all threads) per MiB moved, of which its trio loop thread (network, Bitswap), and the servers' "
              "(their processes; 0 with --inprocess, where the client's includes them)")
        servers = server_tasks if args.inprocess else server_processes
        async with servers(work / "source", args.peers, args.server_rate, args.no_disk) as addrs:
            infos = [info_from_p2p_addr(multiaddr.Multiaddr(a)) for a in addrs]
            client = P2PHost(identity=Identity.generate(), listen=["/ip4/127.0.0.1/tcp/0"], bootstrap=[],
                             metrics=node_metrics())
            async with client.running(), AsyncExitStack() as stack:
                for info in infos:
                    assert await client.connect(info)
                labels = [("fetch x1", infos[:1])] + ([(many, infos)] if args.peers > 1 else [])
                figures: dict[str, list[Figure]] = {"stream": []}
                figures.update({label: [] for label, _ in labels})
                x = await stack.enter_async_context(client_exchange(client, work))
                for run_no in range(args.runs):
                    fig = await stream_rate(client, infos[0], args.size * MiB)
                    figures["stream"].append(fig)
                    print(f"run {run_no + 1}: {'stream':10s} {fig[0]:6.1f} MB/s  {cpu_text(*fig[1:])}")
                    for label, peers in labels:
                        *fig, split = await fetch_once(x, work / f"client-{run_no}-{len(peers)}",
                                                       res.cid, peers, args.window, args.no_disk)
                        figures[label].append(tuple(fig))  # type: ignore[arg-type]
                        print(f"run {run_no + 1}: {label:10s} {fig[0]:6.1f} MB/s  {cpu_text(*fig[1:])}"
                              f"  (blocks per peer {split})")
        print()
        med = summary(figures)
        # Each fetch is compared with the stream measured just before it: under
        # other jobs' load the rate swings between runs, much less within one.
        pairs = [f[0] / st[0] * 100 for f, st in zip(figures["fetch x1"], figures["stream"])]
        print(f"fetch x1 / stream (rate, same run)      {statistics.median(pairs):5.1f} %   runs: "
              + " ".join(f"{r:.0f} %" for r in pairs))
        figure("fetch_rate", statistics.median(r[0] for r in figures["fetch x1"]), "MB/s",
               label=f"Bitswap fetch of {args.size} MiB from one peer, median of {args.runs}",
               reference=statistics.median(r[0] for r in figures["stream"]),
               reference_label="plain libp2p stream of the same bytes", better="higher")
        figure("fetch_vs_stream", statistics.median(pairs), "%", label="fetch / stream, median of per-run ratios",
               target=60, better="higher")
        print(f"fetch x1 / stream, CPU per byte: client {med['fetch x1 cpu'] / med['stream cpu']:4.2f} x,"
              f" its loop thread {med['fetch x1 loop'] / med['stream loop']:4.2f} x,"
              f" client + server {(med['fetch x1 cpu'] + med['fetch x1 server']) / (med['stream cpu'] + med['stream server']):4.2f} x")
        if args.peers > 1:
            pairs = [m[0] / one[0] * 100 for m, one in zip(figures[many], figures["fetch x1"])]
            print(f"{many} / fetch x1 (unthrottled)      {statistics.median(pairs):5.1f} %   runs: "
                  + " ".join(f"{r:.0f} %" for r in pairs))
            figure("many_vs_one", statistics.median(pairs), "%", label=f"{many} / fetch x1, unthrottled servers",
                   better="higher")
        if args.peers > 1 and args.throttled_rate > 0 and not args.server_rate:
            await throttled(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


async def throttled(args: argparse.Namespace, work: Path) -> None:
    """fetch x1 vs xN from servers capped at ``--throttled-rate`` MB/s each."""
    many = f"fetch x{args.peers}"
    res = make_source(work / "source-small", args.throttled_size, 2)
    print(f"\nthrottled: {args.throttled_size} MiB file, each server's answers capped at "
          f"{args.throttled_rate:g} MB/s")
    servers = server_tasks if args.inprocess else server_processes
    async with servers(work / "source-small", args.peers, args.throttled_rate, False) as addrs:
        infos = [info_from_p2p_addr(multiaddr.Multiaddr(a)) for a in addrs]
        client = P2PHost(identity=Identity.generate(), listen=["/ip4/127.0.0.1/tcp/0"], bootstrap=[],
                         metrics=node_metrics())
        async with client.running(), AsyncExitStack() as stack:
            for info in infos:
                assert await client.connect(info)
            figures: dict[str, list[Figure]] = {"fetch x1 capped": [], f"{many} capped": []}
            x = await stack.enter_async_context(client_exchange(client, work))
            for run_no in range(args.runs):
                for label, peers in (("fetch x1 capped", infos[:1]), (f"{many} capped", infos)):
                    *fig, split = await fetch_once(x, work / f"capped-{run_no}-{len(peers)}", res.cid,
                                                   peers, args.window, False)
                    figures[label].append(tuple(fig))  # type: ignore[arg-type]
                    print(f"run {run_no + 1}: {label:16s} {fig[0]:6.1f} MB/s  (blocks per peer {split})")
    print()
    med = summary(figures)
    pairs = [m[0] / one[0] * 100 for m, one in zip(figures[f"{many} capped"], figures["fetch x1 capped"])]
    print(f"{many} / fetch x1 (capped servers)   {statistics.median(pairs):5.1f} %   runs: "
          + " ".join(f"{r:.0f} %" for r in pairs))
    figure("many_vs_one_capped", statistics.median(pairs), "%",
           label=f"{many} / fetch x1, servers capped at {args.throttled_rate:g} MB/s", target=100, better="higher")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=256, help="MiB (default 256)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--peers", type=int, default=3)
    ap.add_argument("--window", type=int, default=64, help="blocks in flight")
    ap.add_argument("--inprocess", action="store_true", help="all hosts in this process")
    ap.add_argument("--dir", default=None, help="where the stores go (default: system temp)")
    ap.add_argument("--server-rate", type=float, default=0.0,
                    help="cap each server's Bitswap answers at this many MB/s, as an uplink would (0: no cap)")
    ap.add_argument("--throttled-rate", type=float, default=20.0,
                    help="after the main runs, fetch x1 vs xN from servers capped at this many MB/s (0: skip)")
    ap.add_argument("--throttled-size", type=int, default=64, help="MiB for the throttled runs (default 64)")
    ap.add_argument("--no-disk", action="store_true",
                    help="diagnostic: servers answer from memory, the client hashes blocks but does not store them")
    ap.add_argument("--serve", metavar="STORE", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        trio.run(serve_forever, args.serve, args.server_rate, args.no_disk)
    else:
        trio.run(run, args)


if __name__ == "__main__":
    main()
