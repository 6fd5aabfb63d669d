"""UnixFS importer: the kubo-compatible CID of a byte stream, in constant memory.

Part of the trusted base: the enclave runtime re-hashes the encrypted AI it is
handed against its CID with this code, so an untrusted host cannot swap bytes.
The node's store uses the same code to add files (node/store/unixfs.py holds
the strict decoder and DAG walker for blocks that come from the network).
Standard library only.

The rules (checked block for block against js ipfs-unixfs-importer by
tests/store/test_unixfs_reference.py):

* The file is cut into fixed 262144-byte chunks; the last one may be shorter.
  An empty file is a single empty chunk.
* Every chunk is a *raw leaf*: a CIDv1 with the raw codec over the bytes.
* A file of one chunk is just that raw leaf (no dag-pb node at all); this is
  also true of the empty file, whose CID is the raw CID of zero bytes.
* Otherwise the leaves are laid out *balanced*: grouped in order into nodes
  of at most 174 links, those nodes again into groups of 174, and so on until
  one node remains. A trailing group of a single entry is still wrapped in its
  own node (only a whole file of one chunk is reduced to its leaf).
* Each inner node is dag-pb (CIDv1) with Links first, then Data. A link has
  the child's binary CID, the Name "" and Tsize, the total encoded size of the
  child's sub-DAG. Data is UnixFS ``{Type=File, filesize, blocksizes…}``,
  blocksizes written one varint field each (not packed), and no Data field.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import BinaryIO, Final, NamedTuple

from enclave.cid import DAG_PB, RAW, Cid, encode_uvarint

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



# ---------------------------------------------------------------------------
# protobuf primitives


def _key(field_no: int, wire: int) -> bytes:
    return encode_uvarint(field_no << 3 | wire)


def _bytes_field(field_no: int, payload: bytes) -> bytes:
    return _key(field_no, _WIRE_BYTES) + encode_uvarint(len(payload)) + payload


def _varint_field(field_no: int, value: int) -> bytes:
    return _key(field_no, _WIRE_VARINT) + encode_uvarint(value)



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




def import_chunks(chunks: Iterable[bytes], put: Sink | None = None) -> ImportResult:
    """Import the concatenation of ``chunks`` (any sizes) in constant memory."""
    builder = DagBuilder(put)
    buf = bytearray()
    for c in chunks:
        buf += c
        while len(buf) >= CHUNK_SIZE:
            builder.add_chunk(memoryview(buf)[:CHUNK_SIZE])
            del buf[:CHUNK_SIZE]
    if buf or builder.blocks == 0:
        builder.add_chunk(bytes(buf))
    return builder.finish()


def cid_of_chunks(chunks: Iterable[bytes]) -> str:
    """The CIDv1 of the concatenation of ``chunks``: how the enclave checks what it is given."""
    return import_chunks(chunks).cid.encode()
