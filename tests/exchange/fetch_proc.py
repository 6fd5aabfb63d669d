"""Fetch a DAG into a store directory, in a process of its own (for the SIGKILL test).

    python -m tests.exchange.fetch_proc <store dir> <root cid> <peer multiaddr/p2p/...>

Prints ``progress <blocks done> <fetched>`` lines while it runs and
``done <fetched> <present> <blocks>`` at the end.
"""
from __future__ import annotations

import logging
import sys

import multiaddr
import trio
from libp2p.peer.peerinfo import info_from_p2p_addr

from enclave.cid import Cid
from node.identity import Identity
from node.metrics import node_metrics
from node.p2p.host import P2PHost
from node.store.blockstore import Blockstore
from node.store.exchange import Exchange
from node.store.fetch import Progress


async def main(store_dir: str, root: str, addr: str) -> None:
    logging.getLogger("libp2p").setLevel(logging.CRITICAL)
    p2p = P2PHost(identity=Identity.generate(), listen=["/ip4/127.0.0.1/tcp/0"], bootstrap=[], metrics=node_metrics())
    store = Blockstore(store_dir)
    async with p2p.running():
        x = Exchange(p2p.host, store, p2p.metrics, dht=p2p.dht)
        async with trio.open_nursery() as nursery:
            await nursery.start(x.run)

            def show(p: Progress) -> None:
                print(f"progress {p.blocks_done} {p.blocks_fetched}", flush=True)

            info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
            result = await x.fetch_dag(Cid.decode(root), [info], window=4, progress=show, progress_interval=0)
            print(f"done {result.fetched} {result.present} {result.blocks}", flush=True)
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main, *sys.argv[1:4])
