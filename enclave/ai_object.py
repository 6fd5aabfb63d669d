"""The published AI object: what the AI CID names.

    b"OFAI" | version (1 byte, = 1) | manifest length (4 bytes, big endian)
    | manifest (the AI's ai.toml, UTF-8, in clear) | encrypted package

The manifest travels in clear so anyone can inspect what an AI is and needs
(`ofnode ai inspect`) and a provider can apply the manifest rules before
fetching or running it. The CID covers the whole object, and the enclave
checks that this public manifest is byte-identical to the ai.toml inside the
decrypted package, so nobody can present one manifest and run another.
Standard library only (trusted base).
"""
from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator

MAGIC = b"OFAI"
VERSION = 1
MAX_MANIFEST = 1 << 20
HEADER = struct.Struct(">4sBI")


class AiObjectError(ValueError):
    """Not an ofnode AI object, or a malformed one."""


def header(manifest: bytes) -> bytes:
    if len(manifest) > MAX_MANIFEST:
        raise AiObjectError(f"manifest of {len(manifest)} bytes exceeds {MAX_MANIFEST}")
    return HEADER.pack(MAGIC, VERSION, len(manifest)) + manifest


def build(manifest: bytes, encrypted: Iterable[bytes]) -> Iterator[bytes]:
    """The object's bytes, streamed: header, then the encrypted package as it comes."""
    yield header(manifest)
    yield from encrypted


def split(chunks: Iterable[bytes]) -> tuple[bytes, Iterator[bytes]]:
    """Read the header from a chunk stream; return (manifest, the encrypted package's chunks)."""
    it = iter(chunks)
    buf = bytearray()
    for c in it:
        buf += c
        if len(buf) >= HEADER.size:
            break
    if len(buf) < HEADER.size:
        raise AiObjectError("truncated: no AI object header")
    magic, version, length = HEADER.unpack_from(buf)
    if magic != MAGIC:
        raise AiObjectError("not an ofnode AI object (bad magic)")
    if version != VERSION:
        raise AiObjectError(f"unsupported AI object version {version}")
    if length > MAX_MANIFEST:
        raise AiObjectError(f"manifest length {length} exceeds {MAX_MANIFEST}")
    need = HEADER.size + length
    for c in it:
        if len(buf) >= need:
            buf += c
            break
        buf += c
    if len(buf) < need:
        raise AiObjectError("truncated inside the manifest")
    manifest = bytes(buf[HEADER.size:need])
    rest = bytes(buf[need:])

    def tail() -> Iterator[bytes]:
        if rest:
            yield rest
        yield from it

    return manifest, tail()
