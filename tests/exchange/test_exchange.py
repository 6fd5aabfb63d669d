"""Bitswap between real py-libp2p hosts on loopback, all in this trio process."""
from __future__ import annotations

import os

import pytest
import trio
from libp2p.peer.id import ID

from enclave.cid import Cid, encode_uvarint
from node.store import bitswap_pb2 as pb
from node.store.blockstore import Blockstore
from node.store.exchange import (PROTOCOL_1_1, PROTOCOL_1_2, Exchange, FrameReader, Limits, block_prefix,
                                 decode_message)
from node.store.fetch import FetchError, Progress
from node.store.unixfs import iter_file_blocks, links_of

from .conftest import Node, add_bytes, make_node, make_nodes, random_file, read_file

MiB = 1 << 20


def dag_cids(store: Blockstore, root: Cid) -> set[Cid]:
    out, stack = set(), [root.to_v1()]
    while stack:
        c = stack.pop()
        if c not in out:
            out.add(c)
            stack.extend(x.to_v1() for x in links_of(c, store.get(c)))
    return out


def wanted_blocks(node: Node) -> list[Cid]:
    """Record every want-block the node's exchange sends (a spy on Exchange.want)."""
    seen: list[Cid] = []
    original = node.exchange.want

    def want(peer, cids, *, want_have=False, priority=1):
        cids = list(cids)
        if not want_have:
            seen.extend(cids)
        original(peer, cids, want_have=want_have, priority=priority)

    node.exchange.want = want  # type: ignore[method-assign]
    return seen


class FlippingExchange(Exchange):
    """A lying server: every block it sends has one byte flipped."""

    def read_block(self, cid: Cid) -> bytes:
        data = bytearray(super().read_block(cid))
        if data:
            data[len(data) // 2] ^= 0x5A
        return bytes(data)


class SilentExchange(Exchange):
    """A server that takes want-lists and never answers."""

    def _update_ledger(self, peer, msg) -> None:
        pass


async def test_fetch_50_mib_byte_identical(tmp_path):
    data = random_file(50 * MiB, seed=50)
    seen: list[Progress] = []
    with trio.fail_after(120):
        async with make_nodes(tmp_path, 2) as (a, b):
            res = add_bytes(a.store, data)
            await b.connect(a)
            result = await b.exchange.fetch_dag(res.cid, [a.id], progress=seen.append, progress_interval=0)
            assert read_file(b.store, res.cid) == data
            assert result.blocks == res.blocks == 200 + 2 + 1
            assert result.fetched == res.blocks and result.present == 0
            assert result.file_bytes == len(data)
            assert result.bad_peers == {} and result.duplicates == 0
            assert result.peers[a.id.to_base58()].blocks == res.blocks
            assert b.store.verify().corrupt == []
            assert b.metrics.get("ofnode_bitswap_blocks_received_total", result="stored") == res.blocks
            assert a.metrics.get("ofnode_bitswap_blocks_sent_total") == res.blocks
    # progress: monotonic, totals known by the end, final call complete
    done = [p.blocks_done for p in seen]
    assert done == sorted(done)
    assert seen[-1].blocks_done == seen[-1].blocks_total == res.blocks
    assert seen[-1].bytes_done == seen[-1].bytes_total == len(data)
    assert any(p.bytes_total == len(data) and p.blocks_total is None for p in seen)  # size known before the count


async def test_corrupting_peer_is_flagged_and_fetch_completes(tmp_path):
    data = random_file(8 * MiB, seed=3)
    with trio.fail_after(60):
        async with make_nodes(tmp_path, 3) as (good1, good2, client), \
                make_node(tmp_path / "evil", FlippingExchange) as evil:
            for n in (good1, good2, evil):
                res = add_bytes(n.store, data)
                await client.connect(n)
            result = await client.exchange.fetch_dag(res.cid, [evil.id, good1.id, good2.id], window=16)
            assert read_file(client.store, res.cid) == data
            assert evil.id.to_base58() in result.bad_peers
            assert set(result.bad_peers) == {evil.id.to_base58()}
            # nothing but the DAG was stored: the altered blocks were never written
            assert client.store.verify().corrupt == []
            assert set(client.store.iter_cids()) == dag_cids(good1.store, res.cid)
            assert client.metrics.get("ofnode_bitswap_offences_total", reason="bad_block") >= 1


async def test_interrupted_fetch_resumes_with_only_missing_blocks(tmp_path):
    data = random_file(16 * MiB, seed=4)
    with trio.fail_after(60):
        async with make_nodes(tmp_path, 2) as (a, b):
            res = add_bytes(a.store, data)
            everything = dag_cids(a.store, res.cid)
            await b.connect(a)
            with trio.CancelScope() as scope:
                def stop_midway(p: Progress) -> None:
                    if p.blocks_fetched >= 20:
                        scope.cancel()
                await b.exchange.fetch_dag(res.cid, [a.id], window=4, progress=stop_midway, progress_interval=0)
            assert scope.cancelled_caught
            await trio.sleep(0.3)  # let in-flight answers land (and be ignored)
            before = set(b.store.iter_cids())
            assert 20 <= len(before) < len(everything)
            assert res.cid in before  # the root came first

            asked = wanted_blocks(b)
            result = await b.exchange.fetch_dag(res.cid, [a.id])
            assert set(asked) == everything - before
            assert len(asked) == len(set(asked))
            assert result.present == len(before)
            assert result.fetched == len(everything - before)
            assert read_file(b.store, res.cid) == data


async def test_complete_dag_needs_no_peers(tmp_path):
    with trio.fail_after(30):
        async with make_node(tmp_path / "a") as a:
            res = add_bytes(a.store, random_file(3 * MiB))
            result = await a.exchange.fetch_dag(res.cid, [])
            assert result.fetched == 0 and result.present == res.blocks == result.blocks


async def test_dont_have_sends_blocks_to_another_peer(tmp_path):
    data = random_file(6 * MiB, seed=6)
    with trio.fail_after(60):
        async with make_nodes(tmp_path, 3) as (partial, full, client):
            res = add_bytes(full.store, data)
            add_bytes(partial.store, data)
            leaves = [c for c in dag_cids(partial.store, res.cid) if c.codec == 0x55]
            for c in leaves[::2]:
                partial.store.delete(c)
            for n in (partial, full):
                await client.connect(n)
            result = await client.exchange.fetch_dag(res.cid, [partial.id, full.id], window=8)
            assert read_file(client.store, res.cid) == data
            assert result.peers[partial.id.to_base58()].dont_haves > 0
            assert result.bad_peers == {}


async def test_only_peer_lacking_the_root_fails_fast(tmp_path):
    with trio.fail_after(30):
        async with make_nodes(tmp_path, 2) as (a, b):
            res = add_bytes(Blockstore(tmp_path / "elsewhere"), random_file(MiB))
            await b.connect(a)
            t0 = trio.current_time()
            with pytest.raises(FetchError, match="none of the peers"):
                await b.exchange.fetch_dag(res.cid, [a.id])
            assert trio.current_time() - t0 < 5


async def test_silent_peer_is_paused_and_its_wants_go_elsewhere(tmp_path):
    data = random_file(4 * MiB, seed=7)
    with trio.fail_after(60):
        async with make_nodes(tmp_path, 2) as (good, client), \
                make_node(tmp_path / "silent", SilentExchange) as silent:
            for n in (silent, good):
                res = add_bytes(n.store, data)
                await client.connect(n)
            result = await client.exchange.fetch_dag(res.cid, [silent.id, good.id], window=8, peer_timeout=1.0)
            assert read_file(client.store, res.cid) == data
            assert result.peers[silent.id.to_base58()].stalls >= 1
            assert result.peers[silent.id.to_base58()].blocks == 0


async def test_nothing_arrives_stall_timeout(tmp_path):
    with trio.fail_after(30):
        async with make_node(tmp_path / "c") as client, make_node(tmp_path / "s", SilentExchange) as silent:
            res = add_bytes(silent.store, random_file(MiB))
            await client.connect(silent)
            with pytest.raises(FetchError, match="no progress") as err:
                await client.exchange.fetch_dag(res.cid, [silent.id], peer_timeout=0.5, stall_timeout=2)
            assert err.value.result.fetched == 0


async def test_two_fetches_of_one_dag_at_once(tmp_path):
    data = random_file(4 * MiB, seed=8)
    results = []
    with trio.fail_after(60):
        async with make_nodes(tmp_path, 2) as (a, b):
            res = add_bytes(a.store, data)
            await b.connect(a)

            async def one():
                results.append(await b.exchange.fetch_dag(res.cid, [a.id]))
            async with trio.open_nursery() as n:
                n.start_soon(one)
                n.start_soon(one)
            assert read_file(b.store, res.cid) == data
    assert len(results) == 2


# -- the wire, seen from a hand-made peer -----------------------------------------


class RawPeer:
    """A host that speaks Bitswap by hand and collects what arrives on streams
    the *other* side opens (which is where Helia and go read answers)."""

    def __init__(self, node: Node, protocols=(PROTOCOL_1_2,)) -> None:
        self.node = node
        self.inbox_send, self.inbox = trio.open_memory_channel(100)
        self.raw: list[pb.Message] = []
        for proto in (PROTOCOL_1_2, PROTOCOL_1_1):  # take over from the node's own Exchange
            node.p2p.host.remove_stream_handler(proto)
        for proto in protocols:
            node.p2p.host.set_stream_handler(proto, self._handle)

    async def _handle(self, stream) -> None:
        reader = FrameReader(stream, Limits())
        try:
            while (body := await reader.read()) is not None:
                self.raw.append(pb.Message.FromString(body))
                await self.inbox_send.send(decode_message(body))
        except Exception:
            pass

    async def send(self, to: ID, raw: bytes, protocol=PROTOCOL_1_2, close: bool = True):
        stream = await self.node.p2p.host.new_stream(to, [protocol])
        await stream.write(raw)
        if close:
            await stream.close()
        return stream


def frame(m: pb.Message) -> bytes:
    body = m.SerializeToString()
    return encode_uvarint(len(body)) + body


@pytest.mark.parametrize("protocol", [PROTOCOL_1_2, PROTOCOL_1_1])
async def test_answers_come_on_a_stream_the_server_opens(tmp_path, protocol):
    with trio.fail_after(30):
        async with make_nodes(tmp_path, 2) as (server, client):
            raw = RawPeer(client, protocols=(protocol,))
            res = add_bytes(server.store, b"hello world")
            absent = Cid.for_block(0x55, b"absent")
            await client.connect(server)
            m = pb.Message()
            m.wantlist.entries.add(block=res.cid.to_bytes(), priority=1)
            m.wantlist.entries.add(block=absent.to_bytes(), wantType=pb.Message.Wantlist.Have, sendDontHave=True)
            await raw.send(server.id, frame(m), protocol)  # closed at once, as Helia does
            got = await raw.inbox.receive()
            assert got.blocks == [(1, 0x55, b"hello world")]
            assert got.presences == [(absent, False)]


async def test_garbage_never_crashes_the_server_and_gets_the_sender_banned(tmp_path):
    data = random_file(2 * MiB, seed=9)
    with trio.fail_after(60):
        async with make_nodes(tmp_path, 3) as (server, attacker_node, honest):
            res = add_bytes(server.store, data)
            raw = RawPeer(attacker_node)
            await attacker_node.connect(server)
            good = Cid.for_block(0x55, data[:262144])

            # A want-list with bad CIDs among good ones: the good one is answered.
            m = pb.Message()
            m.wantlist.entries.add(block=b"\x01\x55\x12\x20" + b"\x00" * 5)
            m.wantlist.entries.add(block=b"\xff" * 40)
            m.wantlist.entries.add(block=good.to_bytes())
            await raw.send(server.id, frame(m))
            got = await raw.inbox.receive()
            assert [Cid.for_block(c, d) for _, c, d in got.blocks] == [good]
            assert server.metrics.get("ofnode_bitswap_offences_total", reason="bad_cid") == 2

            # Not protobuf, then a length prefix over the limit: each stream is reset.
            for evil in (encode_uvarint(10) + b"\xff" * 10, encode_uvarint(64 << 20) + b"x" * 100):
                s = await raw.send(server.id, evil, close=False)
                with pytest.raises(Exception):
                    with trio.fail_after(5):
                        while await s.read(1024):
                            pass
            assert server.metrics.get("ofnode_bitswap_offences_total", reason="undecodable") == 2
            assert server.exchange.is_banned(attacker_node.id)
            with trio.fail_after(5):
                while attacker_node.id in server.p2p.host.get_connected_peers():
                    await trio.sleep(0.05)

            # The server is fine and serves an honest peer.
            await honest.connect(server)
            result = await honest.exchange.fetch_dag(res.cid, [server.id])
            assert read_file(honest.store, res.cid) == data and result.bad_peers == {}


async def test_oversize_and_unwanted_blocks_are_not_stored(tmp_path):
    with trio.fail_after(30):
        async with make_nodes(tmp_path, 2) as (victim, attacker_node):
            raw = RawPeer(attacker_node)
            await attacker_node.connect(victim)
            m = pb.Message()
            junk = b"nobody asked for this"
            m.payload.add(prefix=block_prefix(Cid.for_block(0x55, junk)), data=junk)
            m.payload.add(prefix=b"\x01\x55\x12\x20", data=bytes((2 << 20) + 1))
            await raw.send(victim.id, frame(m))
            with trio.fail_after(5):
                while victim.metrics.get("ofnode_bitswap_offences_total", reason="bad_block") < 1:
                    await trio.sleep(0.05)
            assert victim.metrics.get("ofnode_bitswap_offences_total", reason="oversize_block") == 1
            assert list(victim.store.iter_cids()) == []


async def test_corrupt_block_in_the_store_is_answered_dont_have(tmp_path):
    with trio.fail_after(30):
        async with make_nodes(tmp_path, 2) as (server, client):
            raw = RawPeer(client)
            res = add_bytes(server.store, b"precious bytes")
            path = next((tmp_path / "n0" / "blocks").rglob(res.cid.encode()))
            path.write_bytes(b"rotten bytes!!")
            await client.connect(server)
            m = pb.Message()
            m.wantlist.entries.add(block=res.cid.to_bytes(), sendDontHave=True)
            await raw.send(server.id, frame(m))
            got = await raw.inbox.receive()
            assert got.blocks == [] and got.presences == [(res.cid, False)]
            assert server.metrics.get("ofnode_bitswap_corrupt_local_total") == 1
            assert not server.store.has(res.cid)  # quarantined


async def test_unsupported_cid_gets_dont_have_without_penalty(tmp_path):
    with trio.fail_after(30):
        async with make_nodes(tmp_path, 2) as (server, client):
            raw = RawPeer(client)
            await client.connect(server)
            cbor = bytes((1, 0x71, 0x12, 0x20)) + os.urandom(32)   # a dag-cbor CID: not ours to have
            m = pb.Message()
            m.wantlist.entries.add(block=cbor, wantType=pb.Message.Wantlist.Have, sendDontHave=True)
            await raw.send(server.id, frame(m))
            await raw.inbox.receive()
            assert [(p.cid, p.type) for p in raw.raw[0].blockPresences] == [(cbor, pb.Message.DontHave)]
            assert server.metrics.get("ofnode_bitswap_offences_total", reason="unsupported_cid") == 1
            assert server.metrics.get("ofnode_bitswap_offences_total", reason="bad_cid") == 0
            assert not server.exchange.is_banned(client.id)


async def test_penalties_fade(tmp_path):
    with trio.fail_after(30):
        async with make_node(tmp_path / "a") as a, make_node(tmp_path / "b") as b:
            x = a.exchange
            for _ in range(4):
                x.penalise(b.id, "bad_block")        # 80 points: not yet
            assert not x.is_banned(b.id)
            await trio.sleep(0.5)
            x._records[b.id].updated -= 100          # later: forgiven
            x.penalise(b.id, "bad_block")
            assert not x.is_banned(b.id) and x._records[b.id].score == 20
            for _ in range(5):
                x.penalise(b.id, "bad_block")
            assert x.is_banned(b.id)


async def test_connection_lost_mid_fetch(tmp_path):
    """One of two peers drops the connection half-way: what it owed goes to
    the other (the dropped one is paused, then redialled)."""
    data = random_file(16 * MiB, seed=14)
    with trio.fail_after(60):
        async with make_nodes(tmp_path, 3) as (a, b, client):
            for n in (a, b):
                res = add_bytes(n.store, data)
                await client.connect(n)
            dropped = trio.Event()

            async with trio.open_nursery() as nursery:
                def watch(p: Progress) -> None:
                    if p.blocks_fetched >= 20 and not dropped.is_set():
                        dropped.set()
                        nursery.start_soon(a.p2p.host.disconnect, client.id)
                result = await client.exchange.fetch_dag(res.cid, [a.id, b.id], window=8, progress=watch,
                                                         progress_interval=0)
            assert dropped.is_set()
            assert read_file(client.store, res.cid) == data
            assert result.bad_peers == {}
            assert result.peers[b.id.to_base58()].blocks > 0


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), RuntimeError("a bug of ours")])
async def test_store_writer_failure_fails_the_fetch_and_the_writer_goes_on(tmp_path, error):
    """The writer thread reports a failed batch to the fetches (no hang until
    the stall timeout) and keeps serving the next one."""
    data = random_file(2 * MiB, seed=9)
    with trio.fail_after(60):
        async with make_nodes(tmp_path, 2) as (server, client):
            res = add_bytes(server.store, data)
            await client.connect(server)
            real_put = client.store.put

            def failing_put(cid, block, *, hashed=False):
                raise error

            client.store.put = failing_put  # type: ignore[method-assign]
            with pytest.raises(FetchError, match="blockstore failed"):
                await client.exchange.fetch_dag(res.cid, [server.id], stall_timeout=30)
            client.store.put = real_put  # type: ignore[method-assign]
            await client.exchange.fetch_dag(res.cid, [server.id])
            assert read_file(client.store, res.cid) == data
