"""The AI package: deterministic archive, safe unpack, chunked AES-256-GCM."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import struct
from pathlib import Path

import pytest

from enclave.ai_manifest import hash_tree
from enclave.package import (
    ARCHIVE_MAGIC,
    HEADER_SIZE,
    TAG_SIZE,
    PackageError,
    decrypt_stream,
    encrypt_stream,
    new_key,
    open_package,
    pack,
    pack_sha256,
    seal_dir,
    unpack,
)

CHUNK = 256  # small chunks so a few KiB make many of them


def write(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


FILES = {
    "ai.toml": b'name = "x"\n',
    "model.onnx": bytes(range(256)) * 20,
    "sub/dir/data.bin": os.urandom(3000),
    "sub/a-file.txt": b"hello",
    "sub-x.txt": b"sibling",
    "empty": b"",
    "ünï.txt": b"unicode name",
}


@pytest.fixture
def ai(tmp_path: Path) -> Path:
    root = write(tmp_path / "ai", FILES)
    os.chmod(root / "model.onnx", 0o755)
    return root


def archive(entries: list[tuple[bytes, int, bytes]], count: int | None = None, magic: bytes = ARCHIVE_MAGIC) -> bytes:
    """Hand-craft an archive: (path, mode, data) entries, then the trailer."""
    out = [magic]
    for path, mode, data in entries:
        out.append(struct.pack(">HHQ", len(path), mode, len(data)) + path + data)
    out.append(struct.pack(">HHQ", 0, 0, len(entries) if count is None else count))
    return b"".join(out)


def seal(data: bytes, key: bytes, chunk_size: int = CHUNK) -> bytes:
    return b"".join(encrypt_stream([data], key, chunk_size=chunk_size))


def split(sealed: bytes, chunk_size: int = CHUNK) -> tuple[bytes, list[bytes]]:
    n = chunk_size + TAG_SIZE
    body = sealed[HEADER_SIZE:]
    return sealed[:HEADER_SIZE], [body[i:i + n] for i in range(0, len(body), n)]


# ==== pack ====================================================================


def test_pack_is_deterministic(ai: Path) -> None:
    assert b"".join(pack(ai)) == b"".join(pack(ai))


def test_pack_ignores_mtime_owner_order_and_group_bits(ai: Path, tmp_path: Path) -> None:
    first = b"".join(pack(ai))
    other = tmp_path / "other"
    other.mkdir()
    for rel in reversed(sorted(FILES)):  # different creation order
        p = other / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes((ai / rel).read_bytes())
        os.utime(p, (1_000_000, 1_234_567_890))
    os.chmod(other / "model.onnx", 0o700)  # owner-exec -> 0755 either way
    os.chmod(other / "empty", 0o600)  # not executable -> 0644 either way
    os.utime(other / "sub", (5, 5))
    assert b"".join(pack(other)) == first
    assert pack_sha256(other) == hashlib.sha256(first).hexdigest()


def test_pack_records_executable_bit(ai: Path) -> None:
    before = b"".join(pack(ai))
    os.chmod(ai / "model.onnx", 0o644)
    assert b"".join(pack(ai)) != before


def test_pack_content_change_changes_output(ai: Path) -> None:
    before = pack_sha256(ai)
    (ai / "sub" / "a-file.txt").write_bytes(b"hellO")
    assert pack_sha256(ai) != before


def test_pack_sorted_by_bytes(ai: Path) -> None:
    data = b"".join(pack(ai))
    paths = []
    pos = len(ARCHIVE_MAGIC)
    while True:
        n, _mode, size = struct.unpack(">HHQ", data[pos:pos + 12])
        pos += 12
        if n == 0:
            assert size == len(FILES)
            break
        paths.append(data[pos:pos + n])
        pos += n + size
    assert pos == len(data)
    assert paths == sorted(p.encode() for p in FILES)
    # Whole-path byte order, not directory-walk order: "-" (0x2d) < "/" (0x2f).
    assert paths.index(b"sub-x.txt") < paths.index(b"sub/a-file.txt")


def test_pack_empty_dir(tmp_path: Path) -> None:
    (tmp_path / "only-dirs" / "x").mkdir(parents=True)
    assert b"".join(pack(tmp_path / "only-dirs")) == archive([])


def test_pack_refuses_symlink(ai: Path) -> None:
    os.symlink("/etc/passwd", ai / "sub" / "link")
    with pytest.raises(PackageError, match='"sub/link" is a symlink'):
        list(pack(ai))


def test_pack_refuses_dir_symlink(ai: Path, tmp_path: Path) -> None:
    os.symlink(tmp_path, ai / "up")
    with pytest.raises(PackageError, match="symlink"):
        list(pack(ai))


def test_pack_refuses_fifo(ai: Path) -> None:
    os.mkfifo(ai / "pipe")
    with pytest.raises(PackageError, match='"pipe" is not a regular file'):
        list(pack(ai))


def test_pack_refuses_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(PackageError, match="not a directory"):
        list(pack(tmp_path / "missing"))


def test_pack_streams_in_bounded_pieces(tmp_path: Path) -> None:
    root = write(tmp_path / "big", {"big.bin": b"\x01" * (3 << 20)})
    pieces = list(pack(root))
    assert max(len(p) for p in pieces) <= 1 << 20
    assert sum(len(p) for p in pieces) == len(ARCHIVE_MAGIC) + 12 + 7 + (3 << 20) + 12


# ==== unpack ==================================================================


def test_unpack_round_trip(ai: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    tree = unpack(b"".join(pack(ai)), dest)
    for rel, data in FILES.items():
        assert (dest / rel).read_bytes() == (ai / rel).read_bytes()
    assert tree == hash_tree(dest) == hash_tree(ai)
    assert "ai.toml" not in tree and (dest / "ai.toml").exists()
    assert (dest / "model.onnx").stat().st_mode & 0o777 == 0o755
    assert (dest / "empty").stat().st_mode & 0o777 == 0o644
    assert b"".join(pack(dest)) == b"".join(pack(ai))


@pytest.mark.parametrize("source", ["bytes", "file", "pieces"])
def test_unpack_sources(ai: Path, tmp_path: Path, source: str) -> None:
    data = b"".join(pack(ai))
    src = {"bytes": data, "file": io.BytesIO(data), "pieces": (data[i:i + 7] for i in range(0, len(data), 7))}[source]
    assert unpack(src, tmp_path / "out") == hash_tree(ai)


def test_unpack_into_existing_empty_dir(ai: Path, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    unpack(b"".join(pack(ai)), tmp_path / "out")


def test_unpack_refuses_non_empty_dest(ai: Path, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("x")
    with pytest.raises(PackageError, match="not an empty directory"):
        unpack(b"".join(pack(ai)), tmp_path / "out")


@pytest.mark.parametrize("path", [b"../evil", b"a/../../evil", b"/tmp/evil", b"./x", b"a//b", b"a\\..\\b", b"C:x", b"x/"])
def test_unpack_refuses_unsafe_paths(tmp_path: Path, path: bytes) -> None:
    dest = tmp_path / "deep" / "out"
    dest.parent.mkdir()
    with pytest.raises(PackageError, match="path"):
        unpack(archive([(b"a.txt", 0o644, b"ok"), (path, 0o644, b"evil")]), dest)
    assert not dest.exists()  # cleaned up
    assert not (tmp_path / "evil").exists() and not (tmp_path / "deep" / "evil").exists()
    assert not Path("/tmp/evil").exists()


def test_unpack_refuses_duplicates(tmp_path: Path) -> None:
    with pytest.raises(PackageError, match='duplicate path "a"'):
        unpack(archive([(b"a", 0o644, b"1"), (b"a", 0o644, b"2")]), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unpack_refuses_unsorted(tmp_path: Path) -> None:
    with pytest.raises(PackageError, match="out of order"):
        unpack(archive([(b"b", 0o644, b"1"), (b"a", 0o644, b"2")]), tmp_path / "out")


def test_unpack_refuses_file_dir_conflict(tmp_path: Path) -> None:
    with pytest.raises(PackageError, match="conflicts"):
        unpack(archive([(b"a", 0o644, b"1"), (b"a/b", 0o644, b"2")]), tmp_path / "out")


@pytest.mark.parametrize("mode", [0o777, 0o4755, 0o600, 0o120777])
def test_unpack_refuses_other_modes(tmp_path: Path, mode: int) -> None:
    with pytest.raises(PackageError, match="mode"):
        unpack(archive([(b"a", mode, b"1")]), tmp_path / "out")


def test_unpack_refuses_non_utf8_path(tmp_path: Path) -> None:
    with pytest.raises(PackageError, match="not UTF-8"):
        unpack(archive([(b"\xff", 0o644, b"1")]), tmp_path / "out")


@pytest.mark.parametrize("mutate,match", [
    (lambda a: b"NOTMAGIC" + a[8:], "bad magic"),
    (lambda a: a[:-1], "truncated"),
    (lambda a: a[:-12], "truncated"),
    (lambda a: a[:len(ARCHIVE_MAGIC) + 12 + 1 + 2], "ends inside the file"),
    (lambda a: a + b"\x00", "trailing data"),
    (lambda a: a[:-1] + b"\x05", "trailer is corrupt"),
])
def test_unpack_refuses_malformed(tmp_path: Path, mutate, match: str) -> None:
    good = archive([(b"a", 0o644, b"12345")])
    with pytest.raises(PackageError, match=match):
        unpack(mutate(good), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unpack_limits(ai: Path, tmp_path: Path) -> None:
    data = b"".join(pack(ai))
    with pytest.raises(PackageError, match="exceeds 100 bytes"):
        unpack(data, tmp_path / "a", max_bytes=100)
    with pytest.raises(PackageError, match="more than 2 files"):
        unpack(data, tmp_path / "b", max_files=2)


def test_unpack_failure_empties_existing_dest(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    with pytest.raises(PackageError):
        unpack(archive([(b"d/a", 0o644, b"1"), (b"d/a", 0o644, b"2")]), tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


# ==== encryption ===============================================================


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 10 * CHUNK + 17])
def test_round_trip_sizes(size: int) -> None:
    key = new_key()
    data = os.urandom(size)
    stream = encrypt_stream([data[:5], data[5:]], key, chunk_size=CHUNK)
    sealed = b"".join(stream)
    full_chunks = size // CHUNK
    assert len(sealed) == HEADER_SIZE + size + (full_chunks + 1) * TAG_SIZE == stream.ciphertext_size
    assert stream.plaintext_sha256 == hashlib.sha256(data).hexdigest()
    assert stream.plaintext_size == size
    out = decrypt_stream(sealed, key)
    assert b"".join(out) == data
    assert out.plaintext_sha256 == stream.plaintext_sha256
    assert out.chunk_size == CHUNK


def test_ciphertext_is_fresh_each_time() -> None:
    key = new_key()
    a, b = seal(b"x" * 1000, key), seal(b"x" * 1000, key)
    assert a[:8] == b[:8] and a != b  # random nonce prefix


def test_publishing_same_dir_twice_gives_same_plaintext_hash(ai: Path, tmp_path: Path) -> None:
    infos, blobs = [], []
    for _ in range(2):
        out = io.BytesIO()
        infos.append(seal_dir(ai, out, new_key(), chunk_size=1024))
        blobs.append(out.getvalue())
    assert infos[0].plaintext_sha256 == infos[1].plaintext_sha256 == pack_sha256(ai)
    assert blobs[0] != blobs[1]
    assert infos[0].ciphertext_size == len(blobs[0])


def test_decrypt_yields_chunk_sized_pieces_lazily() -> None:
    key = new_key()
    sealed = seal(os.urandom(10 * CHUNK + 3), key)
    pieces = list(decrypt_stream(io.BytesIO(sealed), key))
    assert [len(p) for p in pieces] == [CHUNK] * 10 + [3]


def test_flipped_ciphertext_byte_names_the_chunk() -> None:
    key = new_key()
    data = os.urandom(6 * CHUNK)
    header, chunks = split(seal(data, key))
    bad = bytearray(chunks[3])
    bad[10] ^= 0x01
    tampered = header + b"".join(chunks[:3]) + bytes(bad) + b"".join(chunks[4:])
    got = []
    with pytest.raises(PackageError, match=r"^chunk 3: authentication failed"):
        for piece in decrypt_stream(tampered, key):
            got.append(piece)
    assert b"".join(got) == data[:3 * CHUNK]  # only verified chunks were released


def test_flipped_tag_byte() -> None:
    key = new_key()
    header, chunks = split(seal(os.urandom(2 * CHUNK + 5), key))
    last = bytearray(chunks[-1])
    last[-1] ^= 0x80
    with pytest.raises(PackageError, match=r"^chunk 2: authentication failed"):
        list(decrypt_stream(header + b"".join(chunks[:-1]) + bytes(last), key))


@pytest.mark.parametrize("offset,match", [
    (0, "bad magic"),
    (8, "unsupported version"),
    (9, "unsupported algorithm"),
    (13, "chunk 0: authentication failed"),  # chunk size (still in range) is bound by the AAD
    (16, "chunk 0: authentication failed"),  # nonce prefix
    (23, "chunk 0: authentication failed"),
])
def test_tampered_header(offset: int, match: str) -> None:
    key = new_key()
    sealed = bytearray(seal(os.urandom(3 * CHUNK), key))
    sealed[offset] ^= 0x01
    with pytest.raises(PackageError, match=match):
        list(decrypt_stream(bytes(sealed), key))


def test_chunk_size_out_of_range_in_header() -> None:
    key = new_key()
    sealed = bytearray(seal(b"abc", key))
    sealed[12:16] = (1 << 30).to_bytes(4, "big")
    with pytest.raises(PackageError, match="chunk size"):
        list(decrypt_stream(bytes(sealed), key))


def test_truncated_at_chunk_boundary() -> None:
    key = new_key()
    header, chunks = split(seal(os.urandom(4 * CHUNK + 9), key))
    with pytest.raises(PackageError, match=r"^chunk 2: missing, the package is truncated"):
        list(decrypt_stream(header + b"".join(chunks[:2]), key))


def test_truncated_when_plaintext_is_whole_chunks() -> None:
    key = new_key()
    header, chunks = split(seal(os.urandom(4 * CHUNK), key))
    assert len(chunks) == 5 and len(chunks[-1]) == TAG_SIZE  # an empty final chunk
    with pytest.raises(PackageError, match=r"^chunk 4: missing"):
        list(decrypt_stream(header + b"".join(chunks[:4]), key))


def test_truncated_inside_chunk() -> None:
    key = new_key()
    sealed = seal(os.urandom(4 * CHUNK + 9), key)
    cut = HEADER_SIZE + 2 * (CHUNK + TAG_SIZE) + 100
    with pytest.raises(PackageError, match=r"^chunk 2: authentication failed"):
        list(decrypt_stream(sealed[:cut], key))


@pytest.mark.parametrize("cut,match", [(0, "header: truncated"), (10, "header: truncated"),
                                       (HEADER_SIZE, "chunk 0: missing"), (HEADER_SIZE + 5, "chunk 0: truncated")])
def test_truncated_early(cut: int, match: str) -> None:
    key = new_key()
    with pytest.raises(PackageError, match=match):
        list(decrypt_stream(seal(b"hello" * 100, key)[:cut], key))


def test_reordered_chunks() -> None:
    key = new_key()
    header, chunks = split(seal(os.urandom(5 * CHUNK), key))
    chunks[1], chunks[2] = chunks[2], chunks[1]
    with pytest.raises(PackageError, match=r"^chunk 1: authentication failed"):
        list(decrypt_stream(header + b"".join(chunks), key))


def test_dropped_middle_chunk() -> None:
    key = new_key()
    header, chunks = split(seal(os.urandom(5 * CHUNK), key))
    del chunks[2]
    with pytest.raises(PackageError, match=r"^chunk 2: authentication failed"):
        list(decrypt_stream(header + b"".join(chunks), key))


def test_final_chunk_replaced_by_full_one_is_detected() -> None:
    key = new_key()
    header, chunks = split(seal(os.urandom(5 * CHUNK), key))  # final chunk is the empty one
    with pytest.raises(PackageError, match=r"chunk 4: missing"):
        list(decrypt_stream(header + b"".join(chunks[:4]), key))


def test_chunks_from_another_package_are_detected() -> None:
    key = new_key()
    h1, c1 = split(seal(b"a" * 3 * CHUNK, key))
    _h2, c2 = split(seal(b"b" * 3 * CHUNK, key))
    with pytest.raises(PackageError, match=r"^chunk 1: authentication failed"):
        list(decrypt_stream(h1 + c1[0] + c2[1] + b"".join(c1[2:]), key))


def test_trailing_bytes_after_final_chunk() -> None:
    key = new_key()
    sealed = seal(os.urandom(CHUNK * 2), key)  # ends with an empty final chunk
    with pytest.raises(PackageError, match="chunk 2"):
        list(decrypt_stream(sealed + b"\x00", key))
    sealed = seal(os.urandom(CHUNK * 2 + 7), key)
    with pytest.raises(PackageError, match="chunk 2"):
        list(decrypt_stream(sealed + os.urandom(CHUNK + TAG_SIZE), key))


def test_wrong_key() -> None:
    sealed = seal(b"secret model weights", new_key())
    with pytest.raises(PackageError, match=r"^chunk 0: authentication failed \(wrong key"):
        list(decrypt_stream(sealed, new_key()))


def test_bad_key_length() -> None:
    with pytest.raises(PackageError, match="32 bytes"):
        encrypt_stream([b""], b"short")
    with pytest.raises(PackageError, match="32 bytes"):
        decrypt_stream(b"", os.urandom(16))


def test_expected_plaintext_hash() -> None:
    key = new_key()
    data = os.urandom(1000)
    sealed = seal(data, key)
    good = hashlib.sha256(data).hexdigest()
    assert b"".join(decrypt_stream(sealed, key, expected_sha256="sha256:" + good)) == data
    with pytest.raises(PackageError, match="is not the expected"):
        list(decrypt_stream(sealed, key, expected_sha256="00" * 32))


def test_streams_are_lazy_iterators_with_hash_after_end() -> None:
    key = new_key()
    enc = encrypt_stream([b"abc"], key, chunk_size=CHUNK)
    assert iter(enc) is enc
    header = next(enc)
    assert len(header) == HEADER_SIZE
    with pytest.raises(PackageError, match="after the whole stream"):
        _ = enc.plaintext_sha256
    sealed = header + b"".join(enc)
    assert list(enc) == []  # exhausted, like any iterator
    assert enc.plaintext_sha256 == hashlib.sha256(b"abc").hexdigest()
    dec = decrypt_stream(sealed, key)
    with pytest.raises(PackageError, match="after the whole stream"):
        _ = dec.plaintext_sha256
    assert next(dec) == b"abc"
    with pytest.raises(StopIteration):
        next(dec)
    assert dec.plaintext_sha256 == enc.plaintext_sha256


def test_decrypt_is_lazy() -> None:
    key = new_key()
    pulled = []

    def source():
        sealed = seal(os.urandom(3 * CHUNK), key)
        for i in range(0, len(sealed), 100):
            pulled.append(i)
            yield sealed[i:i + 100]

    dec = decrypt_stream(source(), key)
    assert pulled == []
    next(dec)
    assert len(pulled) <= (HEADER_SIZE + CHUNK + TAG_SIZE) // 100 + 2


def test_chunk_size_bounds() -> None:
    with pytest.raises(PackageError, match="chunk size"):
        encrypt_stream([b""], new_key(), chunk_size=10)


# ==== end to end ===============================================================


def test_seal_and_open_package(ai: Path, tmp_path: Path) -> None:
    key = new_key()
    pkg = tmp_path / "ai.pkg"
    with open(pkg, "wb") as f:
        info = seal_dir(ai, f, key, chunk_size=1024)
    with open(pkg, "rb") as f:
        tree = open_package(f, key, tmp_path / "out", expected_sha256=info.plaintext_sha256)
    assert tree == hash_tree(ai)
    assert pack_sha256(tmp_path / "out") == info.plaintext_sha256


def test_open_package_cleans_up_on_tamper(ai: Path, tmp_path: Path) -> None:
    key = new_key()
    out = io.BytesIO()
    seal_dir(ai, out, key, chunk_size=1024)
    data = bytearray(out.getvalue())
    data[-5] ^= 1  # last chunk: files before it were already written
    with pytest.raises(PackageError, match="authentication failed"):
        open_package(bytes(data), key, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_open_package_truncated_cleans_up(ai: Path, tmp_path: Path) -> None:
    key = new_key()
    out = io.BytesIO()
    seal_dir(ai, out, key, chunk_size=1024)
    data = out.getvalue()
    with pytest.raises(PackageError):
        open_package(data[: HEADER_SIZE + 2 * (1024 + TAG_SIZE)], key, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    shutil.rmtree(tmp_path / "out", ignore_errors=True)
