"""The encrypted AI package: a canonical archive of an AI directory, sealed in chunks.

Two layers, both streaming with constant memory (see ``docs/ai-manifest.md``):

1. **Archive** (:func:`pack` / :func:`unpack`).  An own, minimal format rather
   than tar: its bytes are fully defined by the file paths, contents and the
   executable bit, and not by a tar implementation's choices (PAX vs GNU
   headers, padding, timestamps) that may change between Python versions.  So
   packing the same AI directory always gives the same bytes and the same
   SHA-256, which is what "publishing the same AI twice gives the same
   plaintext hash" rests on.  The unpacker accepts only the canonical form:
   strictly sorted unique paths, safe relative paths, two modes, no links.

2. **Encryption** (:func:`encrypt_stream` / :func:`decrypt_stream`).  A fresh
   AES-256-GCM key per package; the archive is cut into fixed-size chunks,
   each sealed separately with nonce = 8-byte random prefix || 4-byte chunk
   index and AAD = header || chunk index || final flag.  A chunk that is
   altered, moved, dropped, or a stream that is cut short fails with a
   :class:`PackageError` naming the chunk, before its plaintext is released.

Standard library + ``cryptography`` only (trusted base).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from enclave.ai_manifest import MANIFEST_NAME, relpath_problem

__all__ = [
    "PackageError",
    "ARCHIVE_MAGIC",
    "PACKAGE_MAGIC",
    "HEADER_SIZE",
    "TAG_SIZE",
    "DEFAULT_CHUNK_SIZE",
    "new_key",
    "pack",
    "pack_sha256",
    "unpack",
    "encrypt_stream",
    "decrypt_stream",
    "EncryptedStream",
    "DecryptedStream",
    "SealInfo",
    "seal_dir",
    "open_package",
]

# ---- archive format -------------------------------------------------------
ARCHIVE_MAGIC = b"OFARCH\x00\x01"
# path_len u16, mode u16, size u64; path_len == 0 marks the trailer, whose
# "size" field holds the number of files.
_ENTRY = struct.Struct(">HHQ")
_MODES = (0o644, 0o755)
_READ_BLOCK = 1 << 20

# ---- encryption format ----------------------------------------------------
PACKAGE_MAGIC = b"OFAIPKG\x00"
_VERSION = 1
_ALG_AES256GCM = 1
# magic 8s, version u8, algorithm u8, reserved u16, chunk_size u32, nonce_prefix 8s
_HEADER = struct.Struct(">8sBBHI8s")
HEADER_SIZE = _HEADER.size  # 24
TAG_SIZE = 16
KEY_SIZE = 32
DEFAULT_CHUNK_SIZE = 1 << 20
MIN_CHUNK_SIZE = 64
MAX_CHUNK_SIZE = 64 << 20
_MAX_CHUNKS = 1 << 32  # the nonce holds a 4-byte index


class PackageError(ValueError):
    """An AI package or archive is malformed, tampered with, or cannot be (un)packed."""


def new_key() -> bytes:
    """A fresh random AES-256 key.  Use one key per package, never reuse it."""
    return AESGCM.generate_key(bit_length=256)


# ==========================================================================
# archive


def _collect(root: Path) -> list[tuple[bytes, str, Path]]:
    """All regular files under ``root``: (sort key, relative path, full path).

    Refuses symlinks, devices, FIFOs and sockets: an AI is plain files, and
    a link would point somewhere else once unpacked on another machine.
    """
    if not root.is_dir():
        raise PackageError(f'"{root}" is not a directory')
    out: list[tuple[bytes, str, Path]] = []
    stack = [(root, "")]
    while stack:
        directory, prefix = stack.pop()
        with os.scandir(directory) as it:
            for e in it:
                rel = prefix + e.name
                mode = os.lstat(e.path).st_mode
                if stat.S_ISDIR(mode):
                    stack.append((Path(e.path), rel + "/"))
                    continue
                if stat.S_ISLNK(mode):
                    raise PackageError(f'"{rel}" is a symlink; an AI may contain regular files only')
                if not stat.S_ISREG(mode):
                    raise PackageError(f'"{rel}" is not a regular file')
                problem = relpath_problem(rel)
                if problem:
                    raise PackageError(f'"{rel}": path {problem}')
                out.append((rel.encode("utf-8"), rel, Path(e.path)))
    out.sort(key=lambda t: t[0])
    return out


def pack(root: str | os.PathLike[str]) -> Iterator[bytes]:
    """Stream the canonical archive of the AI directory ``root``.

    Files are ordered by the UTF-8 bytes of their relative path; only path,
    size, content and the executable bit (0644 or 0755) are recorded, so
    timestamps, owners and directory order never change the output.  Empty
    directories are not recorded.  Yields the magic, then per file its header
    and its content in blocks of at most 1 MiB, then the trailer.
    """
    files = _collect(Path(root))
    yield ARCHIVE_MAGIC
    for raw, rel, full in files:
        if len(raw) > 0xFFFF:
            raise PackageError(f'"{rel}": path too long')
        try:
            fd = os.open(full, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError as e:
            raise PackageError(f'"{rel}": cannot open: {e.strerror}') from e
        with os.fdopen(fd, "rb", buffering=0) as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise PackageError(f'"{rel}" is not a regular file')
            mode = 0o755 if st.st_mode & stat.S_IXUSR else 0o644
            size = st.st_size
            yield _ENTRY.pack(len(raw), mode, size) + raw
            left = size
            while left:
                block = f.read(min(left, _READ_BLOCK))
                if not block:
                    raise PackageError(f'"{rel}" shrank while being packed')
                left -= len(block)
                yield block
            if f.read(1):
                raise PackageError(f'"{rel}" grew while being packed')
    yield _ENTRY.pack(0, 0, len(files))


def pack_sha256(root: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of the archive of ``root`` (the package's plaintext hash)."""
    h = hashlib.sha256()
    for block in pack(root):
        h.update(block)
    return h.hexdigest()


def unpack(
    source: bytes | BinaryIO | Iterable[bytes],
    dest: str | os.PathLike[str],
    *,
    max_bytes: int | None = None,
    max_files: int = 100_000,
) -> dict[str, str]:
    """Extract an archive made by :func:`pack` into ``dest``; return its hash tree.

    ``dest`` must not exist or be an empty directory.  Refused (with
    :class:`PackageError`, after removing whatever was written): absolute or
    ``..`` paths and any other unsafe path, duplicate or unsorted paths, modes
    other than 0644/0755, more than ``max_bytes`` of file content or
    ``max_files`` files, a missing trailer and trailing bytes.  The returned
    ``{path: "sha256:<hex>"}`` has the shape of
    :func:`enclave.ai_manifest.hash_tree` (top-level ``ai.toml`` left out),
    computed from the bytes written.
    """
    dest = Path(dest)
    created = not dest.exists()
    if created:
        dest.mkdir(mode=0o755, parents=True)
    elif not dest.is_dir() or any(dest.iterdir()):
        raise PackageError(f'"{dest}" is not an empty directory')
    try:
        return _unpack_into(_Reader(source), dest, max_bytes, max_files)
    except BaseException:
        if created:
            shutil.rmtree(dest, ignore_errors=True)
        else:
            for child in dest.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        raise


def _unpack_into(r: "_Reader", dest: Path, max_bytes: int | None, max_files: int) -> dict[str, str]:
    if r.read_exact(len(ARCHIVE_MAGIC), "archive magic") != ARCHIVE_MAGIC:
        raise PackageError("not an AI archive (bad magic)")
    tree: dict[str, str] = {}
    prev = b""
    count = 0
    total = 0
    while True:
        path_len, mode, size = _ENTRY.unpack(r.read_exact(_ENTRY.size, f"entry {count} header"))
        if path_len == 0:
            if mode != 0 or size != count:
                raise PackageError(f"archive trailer is corrupt (says {size} files, found {count})")
            if r.read_upto(1):
                raise PackageError("trailing data after the archive trailer")
            return tree
        raw = r.read_exact(path_len, f"entry {count} path")
        try:
            rel = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise PackageError(f"entry {count}: path is not UTF-8") from None
        problem = relpath_problem(rel)
        if problem:
            raise PackageError(f'entry {count}: path "{rel}" {problem}')
        if raw == prev:
            raise PackageError(f'entry {count}: duplicate path "{rel}"')
        if raw < prev:
            raise PackageError(f'entry {count}: path "{rel}" is out of order')
        if mode not in _MODES:
            raise PackageError(f'entry {count}: "{rel}" has mode {mode:o} (only 644 or 755)')
        count += 1
        if count > max_files:
            raise PackageError(f"archive has more than {max_files} files")
        total += size
        if max_bytes is not None and total > max_bytes:
            raise PackageError(f"archive content exceeds {max_bytes} bytes")
        prev = raw
        digest = _write_file(r, dest, rel, mode, size)
        if rel != MANIFEST_NAME:
            tree[rel] = digest


def _write_file(r: "_Reader", dest: Path, rel: str, mode: int, size: int) -> str:
    """Create ``dest/rel`` (which must not exist) from the next ``size`` bytes."""
    target = dest.joinpath(*rel.split("/"))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except (FileExistsError, NotADirectoryError):
        raise PackageError(f'"{rel}" conflicts with another file in the archive') from None
    h = hashlib.sha256()
    with os.fdopen(fd, "wb", buffering=0) as f:
        left = size
        while left:
            block = r.read_upto(min(left, _READ_BLOCK))
            if not block:
                raise PackageError(f'"{rel}": archive ends inside the file')
            h.update(block)
            f.write(block)
            left -= len(block)
        os.fchmod(f.fileno(), mode)
    return "sha256:" + h.hexdigest()


# ==========================================================================
# encryption


def _aad(header: bytes, index: int, final: bool) -> bytes:
    return header + index.to_bytes(4, "big") + (b"\x01" if final else b"\x00")


def _check_key(key: bytes) -> AESGCM:
    if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_SIZE:
        raise PackageError(f"key must be {KEY_SIZE} bytes")
    return AESGCM(bytes(key))


class EncryptedStream:
    """Iterator over the package bytes: the header, then each sealed chunk.

    Lazy: nothing is read or encrypted until it is iterated.  Once exhausted,
    ``plaintext_sha256`` (hex SHA-256 of all plaintext), ``plaintext_size``
    and ``ciphertext_size`` are set.
    """

    def __init__(self, chunks: Iterable[bytes], key: bytes, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
            raise PackageError(f"chunk size {chunk_size} outside {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE}")
        self._aead = _check_key(key)
        self._chunks = chunks
        self.chunk_size = chunk_size
        self.header = _HEADER.pack(PACKAGE_MAGIC, _VERSION, _ALG_AES256GCM, 0, chunk_size, os.urandom(8))
        self._prefix = self.header[-8:]
        self._sha: str | None = None
        self.plaintext_size = 0
        self.ciphertext_size = 0
        self._gen = self._run()

    @property
    def plaintext_sha256(self) -> str:
        """Hex SHA-256 of the plaintext; only available once the stream is exhausted."""
        if self._sha is None:
            raise PackageError("plaintext hash is known only after the whole stream was read")
        return self._sha

    def _seal(self, index: int, data: bytes | bytearray | memoryview, final: bool) -> bytes:
        if index >= _MAX_CHUNKS:
            raise PackageError("package too large: more than 2**32 chunks")
        nonce = self._prefix + index.to_bytes(4, "big")
        return self._aead.encrypt(nonce, data, _aad(self.header, index, final))

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        return next(self._gen)

    def _run(self) -> Iterator[bytes]:
        size = self.chunk_size
        h = hashlib.sha256()
        buf = bytearray()
        index = 0
        yield self.header
        out = len(self.header)
        for piece in self._chunks:
            h.update(piece)
            self.plaintext_size += len(piece)
            mv = memoryview(piece)
            if buf:
                take = size - len(buf)
                buf += mv[:take]
                mv = mv[take:]
                if len(buf) < size:
                    continue
                sealed = self._seal(index, buf, False)
                index += 1
                out += len(sealed)
                yield sealed
                buf.clear()
            while len(mv) >= size:  # whole chunks straight from the input, no copy
                sealed = self._seal(index, mv[:size], False)
                index += 1
                out += len(sealed)
                yield sealed
                mv = mv[size:]
            buf += mv
        # The final chunk is always shorter than chunk_size (possibly empty):
        # its length marks the end, and its AAD's final flag makes that binding.
        sealed = self._seal(index, buf, True)
        out += len(sealed)
        self.ciphertext_size = out
        self._sha = h.hexdigest()
        yield sealed


def encrypt_stream(chunks: Iterable[bytes], key: bytes, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> EncryptedStream:
    """Seal plaintext ``chunks`` (any sizes) with ``key``; see :class:`EncryptedStream`."""
    return EncryptedStream(chunks, key, chunk_size)


class DecryptedStream:
    """Iterator over the authenticated plaintext chunks of a package (lazy).

    Each chunk is yielded only after its tag verified.  The stream raises
    :class:`PackageError` if the package is cut short, has trailing bytes, or
    (with ``expected_sha256``) decrypts to other plaintext.  Afterwards
    ``plaintext_sha256`` and ``plaintext_size`` are set.
    """

    def __init__(self, source: bytes | BinaryIO | Iterable[bytes], key: bytes,
                 expected_sha256: str | None = None) -> None:
        self._aead = _check_key(key)
        self._source = source
        self._expected = expected_sha256
        self._sha: str | None = None
        self.plaintext_size = 0
        self.chunk_size: int | None = None
        self._gen = self._run()

    @property
    def plaintext_sha256(self) -> str:
        """Hex SHA-256 of the plaintext; only available once the stream is exhausted."""
        if self._sha is None:
            raise PackageError("plaintext hash is known only after the whole stream was read")
        return self._sha

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        return next(self._gen)

    def _read_header(self, r: "_Reader") -> bytes:
        header = r.read_upto(HEADER_SIZE)
        if len(header) < HEADER_SIZE:
            raise PackageError("header: truncated")
        magic, version, alg, reserved, chunk_size, _prefix = _HEADER.unpack(header)
        if magic != PACKAGE_MAGIC:
            raise PackageError("header: not an AI package (bad magic)")
        if version != _VERSION:
            raise PackageError(f"header: unsupported version {version}")
        if alg != _ALG_AES256GCM or reserved != 0:
            raise PackageError(f"header: unsupported algorithm {alg}/{reserved}")
        if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
            raise PackageError(f"header: chunk size {chunk_size} outside {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE}")
        self.chunk_size = chunk_size
        return header

    def _run(self) -> Iterator[bytes]:
        r = _Reader(self._source)
        header = self._read_header(r)
        prefix = header[-8:]
        sealed_size = self.chunk_size + TAG_SIZE
        h = hashlib.sha256()
        index = 0
        while True:
            sealed = r.read_upto(sealed_size)
            if not sealed:
                raise PackageError(f"chunk {index}: missing, the package is truncated")
            if len(sealed) < TAG_SIZE:
                raise PackageError(f"chunk {index}: truncated")
            if index >= _MAX_CHUNKS:
                raise PackageError("package has more than 2**32 chunks")
            final = len(sealed) < sealed_size
            nonce = prefix + index.to_bytes(4, "big")
            try:
                plain = self._aead.decrypt(nonce, sealed, _aad(header, index, final))
            except InvalidTag:
                raise PackageError(
                    f"chunk {index}: authentication failed "
                    "(wrong key, or the package was altered, reordered or truncated)"
                ) from None
            h.update(plain)
            self.plaintext_size += len(plain)
            if final:
                if r.read_upto(1):
                    raise PackageError(f"chunk {index}: trailing data after the final chunk")
                digest = h.hexdigest()
                if self._expected is not None and digest != self._expected.removeprefix("sha256:"):
                    raise PackageError(f"plaintext hash {digest} is not the expected {self._expected}")
                self._sha = digest
                if plain:
                    yield plain
                return
            yield plain
            index += 1


def decrypt_stream(source: bytes | BinaryIO | Iterable[bytes], key: bytes, *,
                   expected_sha256: str | None = None) -> DecryptedStream:
    """Open a package from bytes, a binary file, or an iterable of byte chunks."""
    return DecryptedStream(source, key, expected_sha256)


# ==========================================================================
# convenience


@dataclass(frozen=True)
class SealInfo:
    """What :func:`seal_dir` produced."""

    plaintext_sha256: str
    plaintext_size: int
    ciphertext_size: int


def seal_dir(root: str | os.PathLike[str], out: BinaryIO, key: bytes, *,
             chunk_size: int = DEFAULT_CHUNK_SIZE) -> SealInfo:
    """Pack and encrypt the AI directory ``root`` into the binary file ``out``."""
    stream = encrypt_stream(pack(root), key, chunk_size=chunk_size)
    for block in stream:
        out.write(block)
    return SealInfo(stream.plaintext_sha256, stream.plaintext_size, stream.ciphertext_size)


def open_package(source: bytes | BinaryIO | Iterable[bytes], key: bytes, dest: str | os.PathLike[str], *,
                 expected_sha256: str | None = None, max_bytes: int | None = None) -> dict[str, str]:
    """Decrypt and unpack a package into ``dest``; returns the hash tree of the files.

    On any error ``dest`` is left empty (or removed if this call created it).
    """
    return unpack(decrypt_stream(source, key, expected_sha256=expected_sha256), dest, max_bytes=max_bytes)


# ==========================================================================
# input adapter


class _Reader:
    """Exact-size reads over bytes, a binary file, or an iterable of byte chunks."""

    def __init__(self, source: bytes | bytearray | memoryview | BinaryIO | Iterable[bytes]) -> None:
        self._file = None
        self._it: Iterator[bytes] | None = None
        self._pending = memoryview(b"")
        if isinstance(source, (bytes, bytearray, memoryview)):
            self._pending = memoryview(source)
            self._it = iter(())
        elif hasattr(source, "read"):
            self._file = source
        else:
            self._it = iter(source)

    def read_upto(self, n: int) -> bytes:
        """Up to ``n`` bytes; fewer only at the end of the input."""
        if self._file is not None:
            first = self._file.read(n)
            if len(first) == n or not first:
                return bytes(first)
            parts = [first]
            got = len(first)
            while got < n:
                more = self._file.read(n - got)
                if not more:
                    break
                parts.append(more)
                got += len(more)
            return b"".join(parts)
        if len(self._pending) >= n:
            out = self._pending[:n]
            self._pending = self._pending[n:]
            return bytes(out)
        if not self._pending:
            # Fast path: the next piece is exactly what was asked for.
            piece = next(self._it, b"")  # type: ignore[arg-type]
            if len(piece) == n or not piece:
                return bytes(piece)
            self._pending = memoryview(piece)
            return self.read_upto(n)
        parts = [bytes(self._pending)]
        got = len(self._pending)
        self._pending = memoryview(b"")
        while got < n:
            try:
                piece = next(self._it)  # type: ignore[arg-type]
            except StopIteration:
                break
            if not piece:
                continue
            take = n - got
            if len(piece) > take:
                mv = memoryview(piece)
                parts.append(bytes(mv[:take]))
                self._pending = mv[take:]
                got = n
            else:
                parts.append(piece)
                got += len(piece)
        return b"".join(parts)

    def read_exact(self, n: int, what: str) -> bytes:
        """Exactly ``n`` bytes, else :class:`PackageError` naming ``what``."""
        data = self.read_upto(n)
        if len(data) != n:
            raise PackageError(f"{what}: truncated")
        return data
