"""UnixFS files: our own importer, dag-pb/UnixFS codec and file walker.

The importer gives the same root CID as ``ipfs add --cid-version 1`` in kubo
and as js ``ipfs-unixfs-importer`` with the matching options, so a model or
data set added here can be fetched or checked with stock IPFS tools and vice
versa. The rules (checked block for block against the js importer by
``tests/store/test_unixfs_reference.py``):

* The file is cut into fixed 262144-byte chunks; the last one may be shorter.
  An empty file is a single empty chunk.
* Every chunk is a *raw leaf*: a CIDv1 with the raw codec over the bytes.
* A file of one chunk is just that raw leaf (no dag-pb node at all); this is
  also true of the empty file, whose CID is the raw CID of zero bytes.
* Otherwise the leaves are laid out *balanced*: the leaves are grouped in
  order into nodes of at most 174 links, those nodes again into groups of 174,
  and so on until one node remains. A trailing group of a single entry is
  still wrapped in its own node (only a whole file of one chunk is reduced to
  its leaf), so e.g. 175 chunks give a root with two links, the second to a
  node that has one link to the last leaf.
* Each inner node is dag-pb (CIDv1) with Links first, then Data. A link has
  the child's binary CID, the Name "" (present, empty) and Tsize, the total
  encoded size of the child's whole sub-DAG (the block's length plus its
  links' Tsizes; for a raw leaf its length). Data is UnixFS
  ``{Type=File, filesize, blocksizes…}`` where blocksizes are the file bytes
  under each link, written one varint field each (not packed), and no Data
  field.

The decoder side (:func:`decode_pbnode`, :func:`decode_unixfs`,
:func:`iter_file_blocks`) is meant for DAGs that come from the network, so it
is strict: anything that is not exactly well-formed raises
:class:`UnixfsError` with a message saying what is wrong.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, Final, NamedTuple

from .cid import DAG_PB, RAW, Cid, CidError, VarintError, decode_uvarint, encode_uvarint

__all__ = [
    "CHUNK_SIZE",
    "MAX_LINKS",
    "UnixfsError",
    "DagPbError",
    "PBLink",
    "PBNode",
    "UnixfsData",
    "ImportResult",
    "Sink",
    "encode_pbnode",
    "decode_pbnode",
    "encode_unixfs",
    "decode_unixfs",
    "links_of",
    "DagBuilder",
    "import_stream",
    "import_file",
    "cid_of_file",
    "iter_file_blocks",
]

CHUNK_SIZE: Final = 262144
MAX_LINKS: Final = 174
# Chunks larger than this would make blocks that bitswap peers refuse.
MAX_CHUNK_SIZE: Final = 1 << 20
# Far deeper than any real file (174**8 chunks is ~10**12 TiB); bounds the
# walker's recursion on hostile DAGs.
MAX_DEPTH: Final = 32

# UnixFS Data.Type values (unixfs.proto).
T_RAW: Final = 0
T_DIRECTORY: Final = 1
T_FILE: Final = 2
T_METADATA: Final = 3
T_SYMLINK: Final = 4
T_HAMT_SHARD: Final = 5
_TYPE_NAMES: Final = {T_RAW: "Raw", T_DIRECTORY: "Directory", T_FILE: "File",
                      T_METADATA: "Metadata", T_SYMLINK: "Symlink", T_HAMT_SHARD: "HAMTShard"}

_WIRE_VARINT: Final = 0
_WIRE_BYTES: Final = 2
# Protobuf varints are at most 10 bytes (64 bits).
_PB_VARINT_BYTES: Final = 10
_UINT64_MAX: Final = (1 << 64) - 1

_RAW_CID_PREFIX: Final = encode_uvarint(1) + encode_uvarint(RAW) + bytes((0x12, 0x20))
_DAG_PB_CID_PREFIX: Final = encode_uvarint(1) + encode_uvarint(DAG_PB) + bytes((0x12, 0x20))

Sink = Callable[[Cid, bytes], object]
"""Receives every block the importer makes, children before parents."""


class UnixfsError(ValueError):
    """A dag-pb block, UnixFS message or file DAG is malformed or unsupported."""


class DagPbError(UnixfsError):
    """The protobuf layer of a dag-pb block or UnixFS message is malformed."""


# ---------------------------------------------------------------------------
# protobuf primitives


def _key(field_no: int, wire: int) -> bytes:
    return encode_uvarint(field_no << 3 | wire)


def _bytes_field(field_no: int, payload: bytes) -> bytes:
    return _key(field_no, _WIRE_BYTES) + encode_uvarint(len(payload)) + payload


def _varint_field(field_no: int, value: int) -> bytes:
    return _key(field_no, _WIRE_VARINT) + encode_uvarint(value)


def _read_varint(buf: bytes, pos: int, what: str) -> tuple[int, int]:
    try:
        value, pos = decode_uvarint(buf, pos, _PB_VARINT_BYTES)
    except VarintError as exc:
        raise DagPbError(f"{what}: {exc}") from None
    if value > _UINT64_MAX:
        raise DagPbError(f"{what}: varint exceeds 64 bits")
    return value, pos


def _iter_fields(buf: bytes, what: str) -> Iterator[tuple[int, int, int | bytes]]:
    """Yield ``(field number, wire type, value)`` for each protobuf field.

    Only varint and length-delimited wire types exist in the dag-pb and
    UnixFS schemas, so any other wire type is an error here already.
    """
    pos, end = 0, len(buf)
    while pos < end:
        tag, pos = _read_varint(buf, pos, what)
        field_no, wire = tag >> 3, tag & 7
        if field_no == 0:
            raise DagPbError(f"{what}: field number 0 is invalid")
        if wire == _WIRE_VARINT:
            value, pos = _read_varint(buf, pos, what)
            yield field_no, wire, value
        elif wire == _WIRE_BYTES:
            length, pos = _read_varint(buf, pos, what)
            if length > end - pos:
                raise DagPbError(f"{what}: field {field_no} runs past the end of the data")
            yield field_no, wire, buf[pos:pos + length]
            pos += length
        else:
            raise DagPbError(f"{what}: unsupported wire type {wire} for field {field_no}")


# ---------------------------------------------------------------------------
# dag-pb


@dataclass(frozen=True, slots=True)
class PBLink:
    """One dag-pb link. ``name``/``tsize`` are None when absent on the wire."""

    cid: Cid
    name: str | None = None
    tsize: int | None = None


@dataclass(frozen=True, slots=True)
class PBNode:
    """A decoded dag-pb block. ``data`` is None when the field is absent."""

    links: tuple[PBLink, ...] = ()
    data: bytes | None = None


def encode_pbnode(node: PBNode) -> bytes:
    """Encode in canonical dag-pb form: every Link (Hash, Name, Tsize), then Data."""
    out = bytearray()
    for link in node.links:
        body = _bytes_field(1, link.cid.to_bytes())
        if link.name is not None:
            body += _bytes_field(2, link.name.encode("utf-8"))
        if link.tsize is not None:
            body += _varint_field(3, link.tsize)
        out += _bytes_field(2, body)
    if node.data is not None:
        out += _bytes_field(1, node.data)
    return bytes(out)


def _decode_link(buf: bytes) -> PBLink:
    hash_: bytes | None = None
    name: str | None = None
    tsize: int | None = None
    last = 0
    for field_no, wire, value in _iter_fields(buf, "PBLink"):
        if field_no not in (1, 2, 3):
            raise DagPbError(f"PBLink: unknown field {field_no}")
        if field_no <= last:
            raise DagPbError(f"PBLink: field {field_no} is duplicated or out of order"
                             " (must be Hash=1, Name=2, Tsize=3, each at most once)")
        last = field_no
        expected = _WIRE_VARINT if field_no == 3 else _WIRE_BYTES
        if wire != expected:
            raise DagPbError(f"PBLink: wrong wire type {wire} for field {field_no}")
        if field_no == 1:
            hash_ = value  # type: ignore[assignment]
        elif field_no == 2:
            try:
                name = value.decode("utf-8")  # type: ignore[union-attr]
            except UnicodeDecodeError:
                raise DagPbError("PBLink: Name is not valid UTF-8") from None
        else:
            tsize = value  # type: ignore[assignment]
    if hash_ is None:
        raise DagPbError("PBLink: Hash is missing")
    try:
        cid = Cid.from_bytes(hash_)
    except CidError as exc:
        raise DagPbError(f"PBLink: bad Hash: {exc}") from None
    return PBLink(cid, name, tsize)


def decode_pbnode(block: bytes | bytearray | memoryview) -> PBNode:
    """Decode a dag-pb block, enforcing the spec's strictness rules.

    Rejected: unknown fields or wire types, a duplicate Data, Links and Data
    interleaved, PBLink fields out of order or duplicated, a link without a
    Hash or whose Hash is not a CID we support, a Name that is not UTF-8.
    Data before Links is accepted, as the dag-pb spec asks (old data has it).
    """
    buf = bytes(block)
    links: list[PBLink] = []
    data: bytes | None = None
    for field_no, wire, value in _iter_fields(buf, "PBNode"):
        if wire != _WIRE_BYTES:
            raise DagPbError(f"PBNode: wrong wire type {wire} for field {field_no}")
        if field_no == 1:
            if data is not None:
                raise DagPbError("PBNode: duplicate Data field")
            data = value  # type: ignore[assignment]
        elif field_no == 2:
            if data is not None and links:
                raise DagPbError("PBNode: Links and Data are interleaved")
            links.append(_decode_link(value))  # type: ignore[arg-type]
        else:
            raise DagPbError(f"PBNode: unknown field {field_no}")
    return PBNode(tuple(links), data)


def links_of(cid: Cid, block: bytes) -> list[Cid]:
    """The CIDs a block links to (none for raw blocks)."""
    if cid.codec == RAW:
        return []
    return [link.cid for link in decode_pbnode(block).links]


# ---------------------------------------------------------------------------
# UnixFS Data message


@dataclass(frozen=True, slots=True)
class UnixfsData:
    """The UnixFS ``Data`` protobuf carried in a dag-pb node's Data field.

    Fields we never write (hashType, fanout, mode, mtime) are kept so that a
    decoded message re-encodes to the same bytes; ``mtime`` stays opaque.
    """

    type: int
    data: bytes | None = None
    filesize: int | None = None
    blocksizes: tuple[int, ...] = ()
    hash_type: int | None = None
    fanout: int | None = None
    mode: int | None = None
    mtime: bytes | None = field(default=None, repr=False)

    @property
    def type_name(self) -> str:
        return _TYPE_NAMES.get(self.type, str(self.type))


def encode_unixfs(msg: UnixfsData) -> bytes:
    """Encode fields in field-number order; blocksizes unpacked, as kubo and js do."""
    out = bytearray(_varint_field(1, msg.type))
    if msg.data is not None:
        out += _bytes_field(2, msg.data)
    if msg.filesize is not None:
        out += _varint_field(3, msg.filesize)
    for size in msg.blocksizes:
        out += _varint_field(4, size)
    if msg.hash_type is not None:
        out += _varint_field(5, msg.hash_type)
    if msg.fanout is not None:
        out += _varint_field(6, msg.fanout)
    if msg.mode is not None:
        out += _varint_field(7, msg.mode)
    if msg.mtime is not None:
        out += _bytes_field(8, msg.mtime)
    return bytes(out)


_UNIXFS_WIRE: Final = {1: _WIRE_VARINT, 2: _WIRE_BYTES, 3: _WIRE_VARINT, 4: _WIRE_VARINT,
                       5: _WIRE_VARINT, 6: _WIRE_VARINT, 7: _WIRE_VARINT, 8: _WIRE_BYTES}
_UNIXFS_NAMES: Final = {1: "type", 2: "data", 3: "filesize", 5: "hash_type", 6: "fanout",
                        7: "mode", 8: "mtime"}


def decode_unixfs(buf: bytes | bytearray | memoryview) -> UnixfsData:
    """Decode a UnixFS Data message strictly.

    Type is required and must be a known value; fields other than the eight
    of unixfs.proto, wrong wire types and repeated singular fields are
    errors. blocksizes may be unpacked (what everyone writes) or packed
    (which protobuf requires parsers to accept).
    """
    buf = bytes(buf)
    values: dict[str, int | bytes] = {}
    blocksizes: list[int] = []
    for field_no, wire, value in _iter_fields(buf, "UnixFS Data"):
        if field_no not in _UNIXFS_WIRE:
            raise DagPbError(f"UnixFS Data: unknown field {field_no}")
        if field_no == 4:
            if wire == _WIRE_VARINT:
                blocksizes.append(value)  # type: ignore[arg-type]
            elif wire == _WIRE_BYTES:
                pos = 0
                while pos < len(value):  # type: ignore[arg-type]
                    size, pos = _read_varint(value, pos, "UnixFS Data blocksizes")  # type: ignore[arg-type]
                    blocksizes.append(size)
            else:  # pragma: no cover - _iter_fields already refuses other wire types
                raise DagPbError(f"UnixFS Data: wrong wire type {wire} for blocksizes")
            continue
        if wire != _UNIXFS_WIRE[field_no]:
            raise DagPbError(f"UnixFS Data: wrong wire type {wire} for field {field_no}")
        name = _UNIXFS_NAMES[field_no]
        if name in values:
            raise DagPbError(f"UnixFS Data: duplicate {name} field")
        values[name] = value
    if "type" not in values:
        raise DagPbError("UnixFS Data: required Type field is missing")
    if values["type"] not in _TYPE_NAMES:
        raise UnixfsError(f"UnixFS Data: unknown Type {values['type']}")
    if "mode" in values and values["mode"] > 0xFFFFFFFF:  # type: ignore[operator]
        raise DagPbError("UnixFS Data: mode exceeds 32 bits")
    return UnixfsData(blocksizes=tuple(blocksizes), **values)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# importer


class _Entry(NamedTuple):
    """A finished child waiting for its parent: binary CID, Tsize, file bytes."""

    cid: bytes
    tsize: int
    filesize: int


@dataclass(frozen=True, slots=True)
class ImportResult:
    """Root CID, number of file bytes and number of blocks produced."""

    cid: Cid
    size: int
    blocks: int


class DagBuilder:
    """Builds the balanced DAG from chunks fed in order, in constant memory.

    Only the pending entries of each level are kept (at most ``max_links``
    per level), never the file. A level's group is turned into a node as soon
    as it is full, and :meth:`finish` closes the partial groups bottom-up.
    The result is the same tree as batching the whole level at once (which is
    what the js importer does), because full groups are closed identically
    either way and a level that ends with a single entry overall is the root.
    """

    def __init__(self, put: Sink | None = None, max_links: int = MAX_LINKS) -> None:
        if max_links < 2:
            raise ValueError("max_links must be at least 2")
        self._put = put
        self._max_links = max_links
        self._pending: list[list[_Entry]] = [[]]
        self._counts: list[int] = [0]  # entries ever added per level
        self.size = 0
        self.blocks = 0

    def add_chunk(self, chunk: bytes | bytearray | memoryview) -> None:
        """Add the next chunk of file bytes as a raw leaf."""
        n = len(chunk)
        digest = hashlib.sha256(chunk).digest()
        cid = _RAW_CID_PREFIX + digest
        if self._put is not None:
            self._put(Cid(1, RAW, digest), bytes(chunk))
        self.size += n
        self.blocks += 1
        self._push(0, _Entry(cid, n, n))

    def finish(self) -> ImportResult:
        """Close all partial groups and return the root."""
        if self._counts[0] == 0:
            self.add_chunk(b"")  # an empty file is one empty raw leaf
        level = 0
        while self._counts[level] != 1:
            pending = self._pending[level]
            if pending:
                self._pending[level] = []
                self._push(level + 1, self._make_node(pending))
            level += 1
        root = self._pending[level][0]
        return ImportResult(Cid.from_bytes(root.cid), self.size, self.blocks)

    def _push(self, level: int, entry: _Entry) -> None:
        if level == len(self._pending):
            self._pending.append([])
            self._counts.append(0)
        pending = self._pending[level]
        pending.append(entry)
        self._counts[level] += 1
        if len(pending) == self._max_links:
            self._pending[level] = []
            self._push(level + 1, self._make_node(pending))

    def _make_node(self, children: list[_Entry]) -> _Entry:
        filesize = sum(c.filesize for c in children)
        data = encode_unixfs(UnixfsData(T_FILE, filesize=filesize,
                                        blocksizes=tuple(c.filesize for c in children)))
        out = bytearray()
        for c in children:
            link = _bytes_field(1, c.cid) + b"\x12\x00" + _varint_field(3, c.tsize)
            out += _bytes_field(2, link)
        out += _bytes_field(1, data)
        block = bytes(out)
        digest = hashlib.sha256(block).digest()
        if self._put is not None:
            self._put(Cid(1, DAG_PB, digest), block)
        self.blocks += 1
        return _Entry(_DAG_PB_CID_PREFIX + digest,
                      len(block) + sum(c.tsize for c in children), filesize)


def _fill(readinto: Callable[[memoryview], int | None], view: memoryview) -> int:
    """Read until ``view`` is full or EOF; short reads must not cut a chunk."""
    got = 0
    size = len(view)
    while got < size:
        n = readinto(view[got:])
        if n is None:
            raise BlockingIOError("non-blocking stream returned no data")
        if n == 0:
            break
        got += n
    return got


def import_stream(stream: BinaryIO, put: Sink | None = None, *,
                  chunk_size: int = CHUNK_SIZE, max_links: int = MAX_LINKS) -> ImportResult:
    """Import everything readable from a binary stream.

    ``put(cid, block)`` is called once per block, leaves before the nodes
    that link to them (so a sink that writes to a blockstore never holds a
    node whose children are missing); pass None to only compute the CID.
    ``chunk_size`` and ``max_links`` exist for tests: any other value than
    the defaults gives CIDs that kubo would not produce.
    """
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk_size must be between 1 and {MAX_CHUNK_SIZE}")
    builder = DagBuilder(put, max_links)
    view = memoryview(bytearray(chunk_size))
    readinto = getattr(stream, "readinto", None)
    if readinto is None:
        def readinto(target: memoryview) -> int:
            data = stream.read(len(target))
            target[:len(data)] = data
            return len(data)
    while True:
        n = _fill(readinto, view)
        if n:
            builder.add_chunk(view[:n])
        if n < chunk_size:
            break
    return builder.finish()


def import_file(path: str | os.PathLike[str], put: Sink | None = None, *,
                chunk_size: int = CHUNK_SIZE, max_links: int = MAX_LINKS) -> ImportResult:
    """Import a file from disk (see :func:`import_stream`)."""
    # Unbuffered: readinto then reads straight into our chunk buffer.
    with open(path, "rb", buffering=0) as stream:
        return import_stream(stream, put, chunk_size=chunk_size, max_links=max_links)


def cid_of_file(path: str | os.PathLike[str]) -> str:
    """The kubo-compatible CIDv1 of a file, computed offline without storing blocks."""
    return import_file(path).cid.encode()


# ---------------------------------------------------------------------------
# walking a file DAG


def iter_file_blocks(root: Cid | str, get_block: Callable[[Cid], bytes]) -> Iterator[bytes]:
    """Yield a UnixFS file's bytes in order, walking its DAG from ``root``.

    ``get_block(cid)`` may come from an untrusted peer: every block is
    re-hashed against its CID, every node must be a UnixFS File (or legacy
    Raw) whose blocksizes match its links, and every child must deliver
    exactly the number of bytes its parent announced. Any violation raises
    :class:`UnixfsError`.
    """
    root_cid = Cid.decode(root) if isinstance(root, str) else root
    yield from _walk(root_cid, get_block, 0, None)


def _walk(cid: Cid, get_block: Callable[[Cid], bytes], depth: int,
          expected: int | None) -> Iterator[bytes]:
    if depth > MAX_DEPTH:
        raise UnixfsError(f"DAG deeper than {MAX_DEPTH} levels")
    block = get_block(cid)
    if not cid.verify(block):
        raise UnixfsError(f"block {cid} does not match its CID")
    if cid.codec == RAW:
        if expected is not None and len(block) != expected:
            raise UnixfsError(f"raw block {cid} has {len(block)} bytes, parent says {expected}")
        yield bytes(block)
        return
    node = decode_pbnode(block)
    if node.data is None:
        raise UnixfsError(f"dag-pb node {cid} has no UnixFS Data")
    meta = decode_unixfs(node.data)
    if meta.type not in (T_FILE, T_RAW):
        raise UnixfsError(f"node {cid} is a UnixFS {meta.type_name}, not a file")
    if meta.type == T_RAW and node.links:
        raise UnixfsError(f"UnixFS Raw node {cid} must not have links")
    if len(meta.blocksizes) != len(node.links):
        raise UnixfsError(f"node {cid} has {len(node.links)} links"
                          f" but {len(meta.blocksizes)} blocksizes")
    inline = meta.data or b""
    total = len(inline) + sum(meta.blocksizes)
    if meta.filesize is not None and meta.filesize != total:
        raise UnixfsError(f"node {cid} says filesize {meta.filesize}"
                          f" but its data and blocksizes add up to {total}")
    if expected is not None and total != expected:
        raise UnixfsError(f"node {cid} holds {total} bytes, parent says {expected}")
    if inline:
        yield inline
    # Each child checks its own total against ``size`` before yielding, so
    # the bytes add up without counting them here.
    for link, size in zip(node.links, meta.blocksizes):
        yield from _walk(link.cid, get_block, depth + 1, size)
