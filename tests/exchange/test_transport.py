"""The py-libp2p transport patches (node/p2p/libp2p_patches.py, section 2) and
the exchange's store-writer pipeline, between real hosts on loopback."""
from __future__ import annotations

import random

import trio
from libp2p.custom_types import TProtocol
import libp2p.security.noise.io as noise_io
import libp2p.stream_muxer.yamux.yamux as yamux

from node.p2p import libp2p_patches
from node.store.blockstore import Blockstore
from node.store.exchange import Exchange

from .conftest import add_bytes, make_nodes, random_file, read_file

MiB = 1 << 20
PROTO = TProtocol("/ofnode-test/bulk/1")


async def _copy(tmp_path, size: int, write_sizes: list[int], counters: dict[str, int]) -> bytes:
    """``size`` random bytes from node 1 to node 0 on one stream, written in
    pieces of ``write_sizes`` (cycled); returns what node 0 read. Counts, while
    the bytes flow, yamux window updates and Noise encryptions in ``counters``."""
    payload = random.Random(5).randbytes(size)
    got = bytearray()

    async def handler(stream) -> None:
        await stream.read(1)            # the reader is there: start counting now
        counters.clear()
        sent, i = 0, 0
        while sent < size:
            n = write_sizes[i % len(write_sizes)]
            await stream.write(payload[sent:sent + n])
            sent += n
            i += 1
        await stream.close()

    async with make_nodes(tmp_path, 2) as (reader, writer):
        writer.p2p.host.set_stream_handler(PROTO, handler)
        await reader.connect(writer)
        stream = await reader.p2p.host.new_stream(writer.id, [PROTO])
        await stream.write(b"g")
        with trio.fail_after(60):
            while len(got) < size:
                data = await stream.read(4 * MiB)
                if not data:
                    break
                got.extend(data)
        await stream.close()
    return bytes(got)


async def test_bulk_stream_is_byte_identical_with_fewer_frames_and_updates(tmp_path, monkeypatch):
    counters: dict[str, int] = {}
    write_frame = yamux.Yamux._write_frame
    encrypt = noise_io.NoiseTransportReadWriter.encrypt

    async def counting_write_frame(self, data):
        if data[1] == yamux.TYPE_WINDOW_UPDATE and data[2:4] == b"\0\0":
            counters["window_updates"] = counters.get("window_updates", 0) + 1
        return await write_frame(self, data)

    def counting_encrypt(self, data):
        counters["noise_messages"] = counters.get("noise_messages", 0) + 1
        return encrypt(self, data)

    monkeypatch.setattr(yamux.Yamux, "_write_frame", counting_write_frame)
    monkeypatch.setattr(noise_io.NoiseTransportReadWriter, "encrypt", counting_encrypt)

    size = 8 * MiB + 12345
    # odd sizes: a frame boundary, a Noise message boundary and a batch boundary fall anywhere
    sizes = [1 << 20, 65507, 1, 300_001, 65536, 65519 * 5 + 3]
    got = await _copy(tmp_path, size, sizes, counters)
    assert got == random.Random(5).randbytes(size)

    # yamux frames the writes need at 65,507 payload bytes each (a write's last frame is short)
    payload = noise_io.MAX_PLAINTEXT_LENGTH - yamux.HEADER_SIZE
    frames, left, i = 0, size, 0
    while left > 0:
        n = min(sizes[i % len(sizes)], left)
        frames += -(-n // payload)
        left -= n
        i += 1
    # A window update once half the window (>= 128 KiB) is consumed, not one per 64 KiB frame read.
    assert counters.get("window_updates", 0) <= size // (128 << 10) + 4, counters
    # One Noise message per yamux frame (py-libp2p's 64 KiB frames took two, the second of 17 bytes),
    # plus the window updates; a 1-byte write is one more small frame.
    # (a frame may be cut short where the send window ran out: at most one per window update)
    updates = counters.get("window_updates", 0)
    assert counters["noise_messages"] <= frames + 2 * updates + 4, (counters, frames)


async def test_window_lock_wakes_a_waiting_writer():
    lock = libp2p_patches._WindowLock()
    changed = lock.changed()
    assert lock.changed() is changed and not changed.is_set()
    async with lock:
        assert lock.locked() and not changed.is_set()
    assert changed.is_set() and not lock.locked()
    assert lock.changed() is not changed      # a new wait after the release


async def test_yamux_streams_use_the_patched_window_lock(tmp_path):
    async with make_nodes(tmp_path, 2) as (a, b):
        await a.connect(b)
        stream = await a.p2p.host.new_stream(b.id, [TProtocol("/ipfs/bitswap/1.2.0")])
        assert isinstance(stream.muxed_stream.window_lock, libp2p_patches._WindowLock)
        assert yamux.MAX_MESSAGE_SIZE == noise_io.MAX_PLAINTEXT_LENGTH
        await stream.reset()


async def test_fetch_reports_blocks_only_after_a_flush_that_followed_their_write(tmp_path, monkeypatch):
    """The writer pipeline: stage 2 writes without a flush, stage 3 flushes;
    no block reaches a fetch before a flush that began after it was written."""
    written: set[int] = set()       # result lists written (stage 2 done)
    durable: set[int] = set()       # result lists covered by a finished flush
    reported: list[int] = []
    flushes = 0
    store_blocks = Exchange._store_blocks
    flush = Blockstore.flush
    report = Exchange._written

    def spy_store_blocks(self, store, hashed):
        results, wrote = store_blocks(self, store, hashed)
        written.add(id(results))
        return results, wrote

    def spy_flush(self):
        nonlocal flushes
        before = set(written)
        flush(self)
        flushes += 1
        durable.update(before)

    def spy_written(self, done, error):
        if done is not None:
            reported.append(id(done))
            assert id(done) in durable, "a batch was reported before a flush covered it"
        return report(self, done, error)

    monkeypatch.setattr(Exchange, "_store_blocks", spy_store_blocks)
    monkeypatch.setattr(Blockstore, "flush", spy_flush)
    monkeypatch.setattr(Exchange, "_written", spy_written)

    data = random_file(12 * MiB, seed=9)
    async with make_nodes(tmp_path, 2) as (client, server):
        res = add_bytes(server.store, data)
        await client.connect(server)
        with trio.fail_after(60):
            result = await client.exchange.fetch_dag(res.cid, [server.id])
        assert result.fetched == res.blocks
        assert read_file(client.store, res.cid) == data
    assert reported and flushes >= 1
    assert flushes <= len(reported)     # group commit: never more flushes than batches
