"""dag-pb / UnixFS codec, the importer's structure, and the verifying walker."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enclave.cid import DAG_PB, RAW, Cid
from node.store.unixfs import (
    MAX_DEPTH,
    T_DIRECTORY,
    T_FILE,
    T_RAW,
    DagBuilder,
    DagPbError,
    PBLink,
    PBNode,
    UnixfsData,
    UnixfsError,
    decode_pbnode,
    decode_unixfs,
    encode_pbnode,
    encode_unixfs,
    import_file,
    import_stream,
    iter_file_blocks,
    links_of,
)

LEAF = Cid.for_block(RAW, b"leaf")
LEAF_BYTES = LEAF.to_bytes()


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def ld(field: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field, built by hand for the bad-input tests."""
    return varint(field << 3 | 2) + varint(len(payload)) + payload


def vi(field: int, value: int) -> bytes:
    return varint(field << 3) + varint(value)


GOOD_LINK = ld(1, LEAF_BYTES) + ld(2, b"") + vi(3, 4)


# ---------------------------------------------------------------- dag-pb


def test_empty_block_is_the_spec_vector() -> None:
    assert encode_pbnode(PBNode()) == b""
    assert decode_pbnode(b"") == PBNode((), None)
    assert Cid.for_block(DAG_PB, b"").encode() == \
        "bafybeihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"


@pytest.mark.parametrize("node", [
    PBNode((), b""),
    PBNode((), b"some data"),
    PBNode((PBLink(LEAF, "", 4),), b"\x08\x02"),
    PBNode((PBLink(LEAF), PBLink(LEAF, "name", None), PBLink(LEAF, None, 0)), None),
    PBNode((PBLink(Cid(0, DAG_PB, LEAF.digest), "ünï", 2**40),), b"x" * 300),
])
def test_pbnode_round_trip(node: PBNode) -> None:
    block = encode_pbnode(node)
    assert decode_pbnode(block) == node
    assert encode_pbnode(decode_pbnode(block)) == block


def test_links_come_before_data_and_data_first_is_accepted() -> None:
    node = PBNode((PBLink(LEAF, "", 4),), b"DATA")
    block = encode_pbnode(node)
    assert block == ld(2, GOOD_LINK) + ld(1, b"DATA")
    assert decode_pbnode(ld(1, b"DATA") + ld(2, GOOD_LINK)) == node


BAD_PBNODES = {
    "truncated tag": b"\x80",
    "length past end": b"\x0a\x05abc",
    "unknown field": ld(3, b"x"),
    "field number 0": ld(0, b"x"),
    "Data as varint": vi(1, 5),
    "fixed64 wire type": varint(1 << 3 | 1) + b"\x00" * 8,
    "fixed32 wire type": varint(2 << 3 | 5) + b"\x00" * 4,
    "group wire type": varint(2 << 3 | 3),
    "duplicate Data": ld(1, b"a") + ld(1, b"b"),
    "interleaved": ld(2, GOOD_LINK) + ld(1, b"d") + ld(2, GOOD_LINK),
    "varint over 64 bits": varint(2 << 3 | 2) + b"\xff" * 9 + b"\x7f",
    "varint over 10 bytes": varint(2 << 3 | 2) + b"\xff" * 10 + b"\x01",
    "non-minimal varint": b"\x0a\x80\x00",
    "link without Hash": ld(2, ld(2, b"") + vi(3, 4)),
    "link Hash not a CID": ld(2, ld(1, b"\x01\x02\x03")),
    "link Hash dag-cbor": ld(2, ld(1, b"\x01\x71\x12\x20" + LEAF.digest)),
    "link Name before Hash": ld(2, ld(2, b"") + ld(1, LEAF_BYTES)),
    "link Tsize before Name": ld(2, ld(1, LEAF_BYTES) + vi(3, 4) + ld(2, b"")),
    "link duplicate Hash": ld(2, ld(1, LEAF_BYTES) + ld(1, LEAF_BYTES)),
    "link duplicate Tsize": ld(2, ld(1, LEAF_BYTES) + vi(3, 4) + vi(3, 4)),
    "link Tsize as bytes": ld(2, ld(1, LEAF_BYTES) + ld(3, b"\x04")),
    "link Hash as varint": ld(2, vi(1, 7)),
    "link unknown field": ld(2, ld(1, LEAF_BYTES) + vi(4, 1)),
    "link Name not UTF-8": ld(2, ld(1, LEAF_BYTES) + ld(2, b"\xff\xfe")),
    "link truncated": ld(2, ld(1, LEAF_BYTES)[:-3]),
}


@pytest.mark.parametrize("block", list(BAD_PBNODES.values()), ids=list(BAD_PBNODES))
def test_bad_pbnodes(block: bytes) -> None:
    with pytest.raises(DagPbError):
        decode_pbnode(block)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_gives_dagpb_error_only(block: bytes) -> None:
    try:
        node = decode_pbnode(block)
    except DagPbError:
        return
    assert isinstance(node, PBNode)


def test_links_of() -> None:
    assert links_of(LEAF, b"leaf") == []
    block = encode_pbnode(PBNode((PBLink(LEAF, "", 4), PBLink(LEAF, "", 4)), None))
    assert links_of(Cid.for_block(DAG_PB, block), block) == [LEAF, LEAF]


# ---------------------------------------------------------------- UnixFS Data


def test_unixfs_file_encoding_matches_reference_layout() -> None:
    msg = UnixfsData(T_FILE, filesize=262145, blocksizes=(262144, 1))
    # Type=File(2), filesize, then blocksizes unpacked; no Data field.
    assert encode_unixfs(msg) == vi(1, 2) + vi(3, 262145) + vi(4, 262144) + vi(4, 1)
    assert decode_unixfs(encode_unixfs(msg)) == msg


def test_unixfs_all_fields_round_trip() -> None:
    msg = UnixfsData(T_DIRECTORY, data=b"d", filesize=1, blocksizes=(1, 2), hash_type=0x22,
                     fanout=256, mode=0o755, mtime=vi(1, 5))
    assert decode_unixfs(encode_unixfs(msg)) == msg
    assert msg.type_name == "Directory"


def test_unixfs_packed_blocksizes_accepted() -> None:
    packed = vi(1, 2) + vi(3, 3) + ld(4, varint(1) + varint(2))
    assert decode_unixfs(packed).blocksizes == (1, 2)


BAD_UNIXFS = {
    "empty (no Type)": b"",
    "no Type": vi(3, 5),
    "unknown Type": vi(1, 9),
    "unknown field": vi(1, 2) + vi(9, 1),
    "duplicate Type": vi(1, 2) + vi(1, 2),
    "duplicate filesize": vi(1, 2) + vi(3, 1) + vi(3, 1),
    "Type as bytes": ld(1, b"\x02"),
    "Data as varint": vi(1, 2) + vi(2, 1),
    "mtime as varint": vi(1, 2) + vi(8, 1),
    "mode over 32 bits": vi(1, 2) + vi(7, 1 << 33),
    "truncated packed blocksizes": vi(1, 2) + ld(4, b"\x80"),
    "truncated": vi(1, 2) + b"\x12\x05ab",
}


@pytest.mark.parametrize("data", list(BAD_UNIXFS.values()), ids=list(BAD_UNIXFS))
def test_bad_unixfs(data: bytes) -> None:
    with pytest.raises(UnixfsError):
        decode_unixfs(data)


# ---------------------------------------------------------------- importer


def _import_dict(data: bytes, **kwargs: int) -> tuple[Cid, dict[Cid, bytes], list[Cid]]:
    blocks: dict[Cid, bytes] = {}
    order: list[Cid] = []

    def put(cid: Cid, block: bytes) -> None:
        blocks[cid] = block
        order.append(cid)

    root = import_stream(io.BytesIO(data), put, **kwargs).cid
    return root, blocks, order


def test_node_structure() -> None:
    data = random.Random(1).randbytes(4 * 10 - 1)
    root, blocks, _ = _import_dict(data, chunk_size=4, max_links=3)
    for cid, block in blocks.items():
        assert cid.verify(block) and cid.version == 1
        if cid.codec == RAW:
            continue
        node = decode_pbnode(block)
        meta = decode_unixfs(node.data)
        assert encode_pbnode(node) == block  # canonical
        assert meta.type == T_FILE and meta.data is None
        assert 1 <= len(node.links) <= 3
        assert all(link.name == "" for link in node.links)
        assert meta.filesize == sum(meta.blocksizes)
    assert b"".join(iter_file_blocks(root, blocks.__getitem__)) == data


def test_children_are_put_before_parents() -> None:
    root, blocks, order = _import_dict(random.Random(2).randbytes(100), chunk_size=3, max_links=2)
    seen: set[Cid] = set()
    for cid in order:
        assert set(links_of(cid, blocks[cid])) <= seen
        seen.add(cid)
    assert order[-1] == root


def test_tsize_is_cumulative() -> None:
    root, blocks, _ = _import_dict(random.Random(3).randbytes(50), chunk_size=2, max_links=3)

    def total(cid: Cid) -> int:
        return len(blocks[cid]) + sum(total(c) for c in links_of(cid, blocks[cid]))

    for cid, block in blocks.items():
        if cid.codec == DAG_PB:
            for link in decode_pbnode(block).links:
                assert link.tsize == total(link.cid)


class ShortReads(io.RawIOBase):
    """A stream that returns at most 1000 bytes per read, like a pipe."""

    def __init__(self, data: bytes) -> None:
        self._src = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        chunk = self._src.read(min(len(b), 1000))
        b[:len(chunk)] = chunk
        return len(chunk)


class ReadOnly:
    def __init__(self, data: bytes) -> None:
        self._src = io.BytesIO(data)

    def read(self, n: int) -> bytes:
        return self._src.read(min(n, 777))


def test_short_reads_do_not_move_chunk_boundaries(tmp_path: Path) -> None:
    data = random.Random(4).randbytes(3 * 262144 + 12345)
    path = tmp_path / "f"
    path.write_bytes(data)
    expected = import_file(path).cid
    assert import_stream(ShortReads(data)).cid == expected
    assert import_stream(ReadOnly(data)).cid == expected  # type: ignore[arg-type]
    result = import_stream(io.BytesIO(data))
    assert (result.cid, result.size, result.blocks) == (expected, len(data), 4 + 1)


def test_builder_memory_is_bounded() -> None:
    builder = DagBuilder(None, max_links=3)
    for i in range(500):
        builder.add_chunk(bytes([i % 256]))
        assert all(len(level) < 3 for level in builder._pending)
        assert len(builder._pending) <= 7
    builder.finish()


def test_parameters_are_checked() -> None:
    with pytest.raises(ValueError):
        DagBuilder(max_links=1)
    with pytest.raises(ValueError):
        import_stream(io.BytesIO(b""), chunk_size=0)
    with pytest.raises(ValueError):
        import_stream(io.BytesIO(b""), chunk_size=(1 << 20) + 1)


# ---------------------------------------------------------------- walker


@pytest.mark.parametrize("size", [0, 1, 5, 12, 13, 100])
def test_walk_round_trip(size: int) -> None:
    data = random.Random(size).randbytes(size)
    root, blocks, _ = _import_dict(data, chunk_size=4, max_links=3)
    assert b"".join(iter_file_blocks(root, blocks.__getitem__)) == data
    assert b"".join(iter_file_blocks(root.encode(), blocks.__getitem__)) == data


def _node(meta: UnixfsData, *links: tuple[Cid, int]) -> tuple[Cid, bytes]:
    block = encode_pbnode(PBNode(tuple(PBLink(c, "", t) for c, t in links), encode_unixfs(meta)))
    return Cid.for_block(DAG_PB, block), block


def test_walk_legacy_dagpb_leaves() -> None:
    """Old (CIDv0-style) files keep data inside dag-pb File or Raw nodes."""
    a_cid, a = _node(UnixfsData(T_FILE, data=b"abc", filesize=3))
    b_cid, b = _node(UnixfsData(T_RAW, data=b"de", filesize=2))
    root, r = _node(UnixfsData(T_FILE, data=b"<", filesize=6, blocksizes=(3, 2)),
                    (a_cid, len(a)), (b_cid, len(b)))
    blocks = {a_cid: a, b_cid: b, root: r}
    assert b"".join(iter_file_blocks(root, blocks.__getitem__)) == b"<abcde"


def _walk_error(root: Cid, blocks: dict[Cid, bytes], match: str) -> None:
    with pytest.raises(UnixfsError, match=match):
        b"".join(iter_file_blocks(root, blocks.__getitem__))


def test_walk_rejects_tampered_block() -> None:
    root, blocks, _ = _import_dict(b"0123456789", chunk_size=4)
    leaf = next(c for c in blocks if c.codec == RAW)
    blocks[leaf] = b"XXXX"
    _walk_error(root, blocks, "does not match its CID")


def test_walk_rejects_wrong_sizes() -> None:
    leaf = Cid.for_block(RAW, b"abcd")
    root, block = _node(UnixfsData(T_FILE, filesize=5, blocksizes=(5,)), (leaf, 4))
    _walk_error(root, {root: block, leaf: b"abcd"}, "has 4 bytes, parent says 5")
    root, block = _node(UnixfsData(T_FILE, filesize=9, blocksizes=(4,)), (leaf, 4))
    _walk_error(root, {root: block, leaf: b"abcd"}, "filesize 9")
    root, block = _node(UnixfsData(T_FILE, filesize=4, blocksizes=(4, 4)), (leaf, 4))
    _walk_error(root, {root: block, leaf: b"abcd"}, "1 links but 2 blocksizes")
    inner, inner_block = _node(UnixfsData(T_FILE, filesize=4, blocksizes=(4,)), (leaf, 4))
    root, block = _node(UnixfsData(T_FILE, filesize=3, blocksizes=(3,)), (inner, 50))
    _walk_error(root, {root: block, inner: inner_block, leaf: b"abcd"},
                "holds 4 bytes, parent says 3")


def test_walk_rejects_non_files() -> None:
    root, block = _node(UnixfsData(T_DIRECTORY))
    _walk_error(root, {root: block}, "Directory, not a file")
    leaf = Cid.for_block(RAW, b"ab")
    root, block = _node(UnixfsData(T_RAW, data=b"x", blocksizes=(2,)), (leaf, 2))
    _walk_error(root, {root: block, leaf: b"ab"}, "must not have links")
    bare = encode_pbnode(PBNode((), None))
    _walk_error(Cid.for_block(DAG_PB, bare), {Cid.for_block(DAG_PB, bare): bare}, "no UnixFS Data")
    garbage = b"\xff\xff\xff"
    with pytest.raises(DagPbError):
        list(iter_file_blocks(Cid.for_block(DAG_PB, garbage), lambda c: garbage))


def test_walk_depth_is_bounded() -> None:
    cid, block = Cid.for_block(RAW, b"x"), b"x"
    blocks = {cid: block}
    for _ in range(MAX_DEPTH + 1):
        cid, block = _node(UnixfsData(T_FILE, filesize=1, blocksizes=(1,)), (cid, 1))
        blocks[cid] = block
    _walk_error(cid, blocks, "deeper than")
