"""Provider records through the Kademlia DHT, and fetches that find their peers there."""
from __future__ import annotations

import trio

from node.store.providers import announce, find_providers

from .conftest import add_bytes, make_nodes, random_file, read_file

MiB = 1 << 20


async def test_announce_and_find_providers_deduplicated(tmp_path):
    with trio.fail_after(60):
        async with make_nodes(tmp_path, 4) as nodes:
            hub, p1, p2, seeker = nodes
            for n in (p1, p2, seeker):
                await n.connect(hub)
            await seeker.connect(p2)
            res = add_bytes(p1.store, random_file(MiB, seed=11))
            add_bytes(p2.store, random_file(MiB, seed=11))
            assert await announce(p1.p2p.dht, res.cid)
            assert await announce(p2.p2p.dht, res.cid)
            assert await announce(p2.p2p.dht, res.cid)  # twice: one record still

            found = await find_providers(seeker.p2p.dht, res.cid, 10)
            ids = [i.peer_id for i in found]
            assert sorted(map(str, ids)) == sorted(map(str, [p1.id, p2.id])), (ids, p1.id, p2.id, hub.id)
            assert len(ids) == len(set(ids))
            assert all(i.addrs for i in found)
            # a CIDv0 of a dag-pb root names the same multihash
            assert {i.peer_id for i in await find_providers(seeker.p2p.dht, res.cid, 1)} <= {p1.id, p2.id}
            assert len(await find_providers(seeker.p2p.dht, res.cid, 1)) == 1
            # we never find ourselves
            own = await find_providers(p1.p2p.dht, res.cid, 10)
            assert p1.id not in [i.peer_id for i in own]


async def test_fetch_without_peers_finds_the_provider_through_the_dht(tmp_path):
    data = random_file(3 * MiB, seed=12)
    with trio.fail_after(60):
        async with make_nodes(tmp_path, 4) as (provider, hub, other, client):
            for n in (provider, other, client):
                await n.connect(hub)
            res = add_bytes(provider.store, data)
            assert await announce(provider.p2p.dht, res.cid)
            assert provider.id not in client.p2p.host.get_connected_peers()

            result = await client.exchange.fetch_dag(res.cid)  # no peers given
            assert read_file(client.store, res.cid) == data
            assert result.peers[provider.id.to_base58()].blocks == res.blocks
            assert result.bad_peers == {}
            # the hub was asked for the root (it is connected) and said it lacks it
            assert result.peers[hub.id.to_base58()].dont_haves >= 1
            assert result.peers[hub.id.to_base58()].blocks == 0


async def test_resume_without_peers_probes_connected_peers_for_a_missing_block(tmp_path):
    """The root is already here, nobody announced: the connected peers are asked
    about the first missing block, and the one that has it serves the rest."""
    data = random_file(4 * MiB, seed=13)
    with trio.fail_after(60):
        async with make_nodes(tmp_path, 3) as (holder, bystander, client):
            res = add_bytes(holder.store, data)
            # the client has the root and the first leaves already
            add_bytes(client.store, data)
            leaves = [c for c in client.store.iter_cids() if c.codec == 0x55]
            for c in sorted(leaves, key=str)[: len(leaves) // 2]:
                client.store.delete(c)
            await client.connect(holder)
            await client.connect(bystander)
            result = await client.exchange.fetch_dag(res.cid)
            assert read_file(client.store, res.cid) == data
            assert result.fetched == len(leaves) // 2
            assert result.peers[holder.id.to_base58()].blocks == result.fetched
            assert result.peers[bystander.id.to_base58()].blocks == 0
