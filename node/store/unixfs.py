"""UnixFS files for the store: dag-pb/UnixFS decoding, the verifying file walker,
and file-path wrappers around the importer in :mod:`enclave.unixfs`.

The importer's rules are documented in :mod:`enclave.unixfs`.

The decoder side (:func:`decode_pbnode`, :func:`decode_unixfs`,
:func:`iter_file_blocks`) is meant for DAGs that come from the network, so it
is strict: anything that is not exactly well-formed raises
:class:`UnixfsError` with a message saying what is wrong.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

from enclave.cid import RAW, Cid, CidError, VarintError, decode_uvarint
from enclave.unixfs import (  # the importer lives in the trusted base; re-exported here
    CHUNK_SIZE,
    MAX_CHUNK_SIZE,
    MAX_DEPTH,
    MAX_LINKS,
    T_DIRECTORY,
    T_FILE,
    T_HAMT_SHARD,
    T_METADATA,
    T_RAW,
    T_SYMLINK,
    DagBuilder,
    ImportResult,
    Sink,
    UnixfsData,
    cid_of_chunks,
    encode_unixfs,
    import_stream,
)
from enclave.unixfs import _PB_VARINT_BYTES, _TYPE_NAMES, _UINT64_MAX, _WIRE_BYTES, _WIRE_VARINT, _bytes_field, _varint_field

__all__ = [
    "CHUNK_SIZE",
    "MAX_CHUNK_SIZE",
    "MAX_DEPTH",
    "T_DIRECTORY",
    "T_FILE",
    "T_HAMT_SHARD",
    "T_METADATA",
    "T_RAW",
    "T_SYMLINK",
    "cid_of_chunks",
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

class UnixfsError(ValueError):
    """A dag-pb block, UnixFS message or file DAG is malformed or unsupported."""


class DagPbError(UnixfsError):
    """The protobuf layer of a dag-pb block or UnixFS message is malformed."""


# ---------------------------------------------------------------------------
# protobuf primitives


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
