"""Real py-libp2p hosts on loopback, each with its own Blockstore and Exchange."""
from __future__ import annotations

import io
import logging
import os
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator

import pytest
import trio
from libp2p.peer.peerinfo import PeerInfo

from enclave.cid import Cid
from node.identity import Identity
from node.metrics import Metrics, node_metrics
from node.p2p.host import P2PHost
from node.store.blockstore import Blockstore
from node.store.exchange import Exchange
from node.store.unixfs import ImportResult, import_stream

# The DHT logs a warning for every request it serves; keep test output readable.
logging.getLogger("libp2p").setLevel(logging.ERROR)


@dataclass
class Node:
    p2p: P2PHost
    store: Blockstore
    exchange: Exchange
    metrics: Metrics

    @property
    def id(self):
        return self.p2p.host.get_id()

    def info(self) -> PeerInfo:
        return PeerInfo(self.p2p.host.get_id(), self.p2p.host.get_addrs())

    async def connect(self, other: "Node") -> None:
        assert await self.p2p.connect(other.info())


def add_bytes(store: Blockstore, data: bytes) -> ImportResult:
    return import_stream(io.BytesIO(data), store.put)


def random_file(size: int, seed: int = 1) -> bytes:
    import random
    rng = random.Random(seed)
    return b"".join(rng.randbytes(min(1 << 20, size - i)) for i in range(0, size, 1 << 20))


def read_file(store: Blockstore, root: Cid) -> bytes:
    from node.store.unixfs import iter_file_blocks
    return b"".join(iter_file_blocks(root, store.get))


@asynccontextmanager
async def make_node(path: Path, exchange_cls: type[Exchange] = Exchange, **kwargs) -> AsyncIterator[Node]:
    metrics = node_metrics()
    p2p = P2PHost(identity=Identity.generate(), listen=["/ip4/127.0.0.1/tcp/0"], bootstrap=[], metrics=metrics)
    store = Blockstore(path)
    async with p2p.running():
        x = exchange_cls(p2p.host, store, metrics, dht=p2p.dht, **kwargs)
        async with trio.open_nursery() as nursery:
            await nursery.start(x.run)
            yield Node(p2p, store, x, metrics)
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def make_nodes(tmp_path: Path, n: int, **kwargs) -> AsyncIterator[list[Node]]:
    async with AsyncExitStack() as stack:
        nodes = [await stack.enter_async_context(make_node(tmp_path / f"n{i}", **kwargs)) for i in range(n)]
        yield nodes
