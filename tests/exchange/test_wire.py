"""The Bitswap wire format: encoding, strict decoding, framing limits."""
from __future__ import annotations

import os

import pytest
import trio

from enclave.cid import DAG_PB, RAW, Cid, decode_uvarint, encode_uvarint
from node.store import bitswap_pb2 as pb
from node.store.exchange import (
    DONT_HAVE,
    HAVE,
    FrameReader,
    Limits,
    ProtocolViolation,
    block_prefix,
    decode_message,
    cid_well_formed,
    encode_answer,
    encode_frame,
    parse_prefix,
)


def test_descriptor_does_not_clash_with_libp2p_bitswap() -> None:
    import libp2p.bitswap.pb.bitswap_pb2 as theirs

    assert pb.DESCRIPTOR.name == "ofnode/bitswap/bitswap.proto"
    assert theirs.DESCRIPTOR.name != pb.DESCRIPTOR.name
    assert pb.Message.DESCRIPTOR.full_name == "ofnode.bitswap.v1.Message"


def test_prefixes_round_trip() -> None:
    for cid in (Cid.for_block(RAW, b"x"), Cid.for_block(DAG_PB, b"y"), Cid.for_block(DAG_PB, b"z", 0)):
        assert parse_prefix(block_prefix(cid)) == (cid.version, cid.codec)
    # what go-cid writes for CIDv0: version 0, dag-pb, sha2-256, 32
    assert block_prefix(Cid.for_block(DAG_PB, b"z", 0)) == bytes((0, 0x70, 0x12, 0x20))


@pytest.mark.parametrize("prefix", [
    b"",
    bytes((1, 0x55, 0x12)),                 # truncated
    bytes((1, 0x55, 0x12, 0x20, 0)),        # trailing byte
    bytes((1, 0x71, 0x12, 0x20)),           # dag-cbor
    bytes((1, 0x55, 0x13, 0x40)),           # sha2-512
    bytes((0, 0x55, 0x12, 0x20)),           # CIDv0 raw
    bytes((2, 0x55, 0x12, 0x20)),           # version 2
    bytes((0x81, 0x00, 0x55, 0x12, 0x20)),  # non-minimal varint
])
def test_bad_prefixes_are_refused(prefix: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        parse_prefix(prefix)


def test_encode_answer_matches_protobuf() -> None:
    blocks = [os.urandom(n) for n in (1, 127, 128, 300_000)] + [b""]
    cids = [Cid.for_block(RAW, b) for b in blocks]
    pres = [(cids[0].to_bytes(), HAVE), (Cid.for_block(DAG_PB, b"q", 0).to_bytes(), DONT_HAVE)]
    ours = encode_answer([(block_prefix(c), b) for c, b in zip(cids, blocks)], pres)
    m = pb.Message()
    for c, b in zip(cids, blocks):
        m.payload.add(prefix=block_prefix(c), data=b)
    for c, t in pres:
        m.blockPresences.add(cid=c, type=t)
    # same message (protobuf omits the empty data field; we write it)
    from enclave.cid import decode_uvarint
    n, pos = decode_uvarint(ours, 0)
    assert n == len(ours) - pos
    assert pb.Message.FromString(ours[pos:]) == m


def test_decode_keeps_good_entries_and_counts_bad_ones() -> None:
    good = Cid.for_block(RAW, b"good")
    m = pb.Message()
    m.wantlist.entries.add(block=good.to_bytes(), priority=5, wantType=pb.Message.Wantlist.Have, sendDontHave=True)
    m.wantlist.entries.add(block=b"\x01\x55\x12\x20short")           # truncated digest
    m.wantlist.entries.add(block=b"")                                 # empty
    m.wantlist.entries.add(block=good.to_bytes(), wantType=7)         # unknown want type
    m.wantlist.entries.add(block=good.to_bytes(), cancel=True)
    m.payload.add(prefix=b"\x01\x71\x12\x20", data=b"cbor")           # unsupported codec
    m.payload.add(prefix=block_prefix(good), data=b"good")
    m.blockPresences.add(cid=b"junk", type=HAVE)
    m.blockPresences.add(cid=good.to_bytes(), type=9)
    m.blockPresences.add(cid=good.to_bytes(), type=DONT_HAVE)
    m.blocks.append(b"1.0.0 block")
    msg = decode_message(m.SerializeToString())
    assert [(w.cid, w.priority, w.cancel, w.want_have, w.send_dont_have) for w in msg.wants] == [
        (good, 5, False, True, True), (good, 0, True, False, False)]
    assert msg.blocks == [(1, RAW, b"good")]
    assert msg.presences == [(good, False)]
    assert msg.offences == {"bad_cid": 3, "bad_entry": 2, "bad_prefix": 1, "v1_0_blocks": 1}


def test_decode_limits() -> None:
    lim = Limits(max_entries=3, max_message=1 << 20)
    m = pb.Message()
    for i in range(5):
        m.wantlist.entries.add(block=Cid.for_block(RAW, bytes([i])).to_bytes())
    msg = decode_message(m.SerializeToString(), lim)
    assert len(msg.wants) == 3 and msg.offences == {"too_many_entries": 1}
    big = pb.Message()
    big.payload.add(prefix=block_prefix(Cid.for_block(RAW, b"")), data=bytes((2 << 20) + 1))
    assert decode_message(big.SerializeToString(), Limits()).offences == {"oversize_block": 1}
    with pytest.raises(ProtocolViolation):
        decode_message(bytes(lim.max_message + 1), lim)
    for garbage in (b"\xff\xff\xff", b"\x0a\x05ab", os.urandom(64) + b"\x07"):
        with pytest.raises(ProtocolViolation):
            decode_message(garbage)


class _FakeStream:
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = list(chunks)

    async def read(self, n: int = -1) -> bytes:
        await trio.lowlevel.checkpoint()
        if not self.chunks:
            return b""
        c = self.chunks.pop(0)
        if c is None:
            await trio.sleep_forever()
        return c


async def _frames(chunks: list[bytes], limits: Limits = Limits()) -> list[bytes]:
    r = FrameReader(_FakeStream(chunks), limits)  # type: ignore[arg-type]
    out = []
    while (body := await r.read()) is not None:
        out.append(body)
    return out


async def test_frame_reader_reassembles_split_frames() -> None:
    a, b = b"x" * 300, b"y" * 5
    wire = encode_uvarint(len(a)) + a + encode_uvarint(len(b)) + b + encode_uvarint(0)
    chunks = [wire[i:i + 7] for i in range(0, len(wire), 7)]
    assert await _frames(chunks) == [a, b, b""]


@pytest.mark.parametrize("wire", [
    encode_uvarint((4 << 20) + 1),            # announces more than 4 MiB
    b"\xff" * 10,                              # varint too long
    b"\x80\x00",                               # not minimal
    encode_uvarint(100) + b"short",            # stream ends inside the message
    b"\x85",                                   # stream ends inside the length
])
async def test_frame_reader_rejects_bad_framing(wire: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        await _frames([wire])


async def test_frame_reader_times_out_on_a_silent_peer() -> None:
    with trio.fail_after(5):
        with pytest.raises(trio.TooSlowError):
            await _frames([b"\x05ab", None], Limits(message_timeout=0.2))  # type: ignore[list-item]
        with pytest.raises(trio.TooSlowError):
            await _frames([None], Limits(idle_timeout=0.2))  # type: ignore[list-item]


def test_unsupported_cids_are_not_offences() -> None:
    cbor = bytes((1, 0x71, 0x12, 0x20)) + bytes(32)           # dag-cbor, sha2-256
    blake = bytes((1, 0x55, 0x1E, 0x20)) + bytes(32)
    for good_shape in (cbor, blake, bytes((0x12, 0x20)) + bytes(32)):
        assert cid_well_formed(good_shape)
    for bad in (b"", b"\x01", cbor[:-1], cbor + b"\x00", bytes((2, 0x55, 0x12, 0x20)) + bytes(32),
                bytes((1, 0x55, 0x12, 0x00))):
        assert not cid_well_formed(bad)
    m = pb.Message()
    m.wantlist.entries.add(block=cbor, sendDontHave=True)
    m.wantlist.entries.add(block=blake)                         # no DontHave wanted
    m.wantlist.entries.add(block=b"\x01\x55\x12")               # malformed
    msg = decode_message(m.SerializeToString())
    assert msg.wants == [] and msg.unsupported == [cbor]
    assert msg.offences == {"unsupported_cid": 2, "bad_cid": 1}


# ---------------------------------------------------------------- payload scan (no protobuf parse)


def _payloads_by_protobuf(body: bytes) -> list[tuple[bytes, bytes]]:
    return [(b.prefix, b.data) for b in pb.Message.FromString(body).payload]


def test_payload_scan_matches_protobuf_on_answers() -> None:
    from node.store.exchange import _scan_payloads

    blocks = [(block_prefix(Cid.for_block(RAW, d)), d) for d in (b"a", os.urandom(300), os.urandom(262144))]
    blocks.append((block_prefix(Cid.for_block(DAG_PB, b"n", 0)), b"n"))
    frame = encode_answer(blocks, [])
    _, pos = decode_uvarint(frame, 0)
    body = frame[pos:]
    scanned = _scan_payloads(body)
    assert scanned is not None
    assert [(p, bytes(d)) for p, d in scanned] == _payloads_by_protobuf(body) == blocks
    # the same message as protobuf encodes it
    m = pb.Message()
    for prefix, data in blocks:
        m.payload.add(prefix=prefix, data=data)
    assert [(p, bytes(d)) for p, d in _scan_payloads(m.SerializeToString())] == blocks  # type: ignore[union-attr]
    msg = decode_message(body)
    assert [(v, c, bytes(d)) for v, c, d in msg.blocks] == [(1, RAW, b"a"), (1, RAW, blocks[1][1]),
                                                          (1, RAW, blocks[2][1]), (0, DAG_PB, b"n")]


def test_payload_scan_leaves_every_other_shape_to_protobuf() -> None:
    from node.store.exchange import _scan_payloads

    prefix = block_prefix(Cid.for_block(RAW, b"x"))
    empty = pb.Message()
    empty.payload.add(prefix=prefix, data=b"")          # proto3 omits the empty data field
    with_presence = pb.Message()
    with_presence.payload.add(prefix=prefix, data=b"x")
    with_presence.blockPresences.add(cid=Cid.for_block(RAW, b"y").to_bytes(), type=DONT_HAVE)
    data_first = bytes([0x1A, 7, 0x12, 1]) + b"x" + bytes([0x0A, len(prefix)]) + prefix
    data_first = bytes([0x1A, len(data_first) - 2]) + data_first[2:]
    non_minimal = bytes([0x1A, 0x80 | 7, 0x00, 0x0A, 4]) + prefix + bytes([0x12, 0])
    for body in (empty.SerializeToString(), with_presence.SerializeToString(), data_first, non_minimal,
                 bytes([0x1A, 50, 0x0A, 1, 0])):   # truncated
        assert _scan_payloads(body) is None
    # ... and decode_message still gives protobuf's answer for them
    assert [(v, c, bytes(d)) for v, c, d in decode_message(with_presence.SerializeToString()).blocks] == [(1, RAW, b"x")]
    assert decode_message(with_presence.SerializeToString()).presences == [(Cid.for_block(RAW, b"y"), False)]
    with pytest.raises(ProtocolViolation):
        decode_message(bytes([0x1A, 50, 0x0A, 1, 0]))


def test_payload_scan_agrees_with_protobuf_on_mutations() -> None:
    """Whatever the scan accepts, protobuf decodes to the same blocks."""
    import random

    from node.store.exchange import _scan_payloads

    rng = random.Random(5)
    blocks = [(block_prefix(Cid.for_block(RAW, bytes([i]) * 40)), bytes([i]) * 40) for i in range(3)]
    frame = encode_answer(blocks, [])
    _, pos = decode_uvarint(frame, 0)
    body = frame[pos:]
    assert _scan_payloads(body) is not None
    accepted = 0
    for _ in range(3000):
        b = bytearray(body)
        for _ in range(rng.randint(1, 3)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        b = bytes(b[: rng.randint(0, len(b))]) if rng.random() < 0.2 else bytes(b)
        scanned = _scan_payloads(b)
        if scanned is None:
            continue
        accepted += 1
        assert [(p, bytes(d)) for p, d in scanned] == _payloads_by_protobuf(b)
    assert accepted > 100
