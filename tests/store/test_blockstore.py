"""The on-disk blockstore: atomic writes, verification, quarantine, pins and GC."""

from __future__ import annotations

import io
import json
import os
import random
from pathlib import Path

import pytest

from node.store import blockstore as bs_mod
from node.store.blockstore import (
    MAX_BLOCK_SIZE,
    BlockMismatch,
    BlockNotFound,
    Blockstore,
    BlockstoreError,
    CorruptBlock,
)
from enclave.cid import DAG_PB, RAW, Cid
from node.store.unixfs import import_stream, iter_file_blocks


@pytest.fixture
def store(tmp_path: Path) -> Blockstore:
    return Blockstore(tmp_path / "store")


def raw(data: bytes) -> tuple[Cid, bytes]:
    return Cid.for_block(RAW, data), data


def add_file(store: Blockstore, data: bytes) -> Cid:
    return import_stream(io.BytesIO(data), store.put, chunk_size=16, max_links=4).cid


def block_path(store: Blockstore, cid: Cid) -> Path:
    key = cid.to_v1().encode()
    return store.root / "blocks" / key[-3:-1] / key


# ---------------------------------------------------------------- basics


def test_put_get_has_delete(store: Blockstore) -> None:
    cid, data = raw(b"hello world")
    assert not store.has(cid) and cid not in store
    assert store.put(cid, data) is True
    assert store.put(cid, data) is False  # already there, intact
    assert store.has(cid) and cid in store
    assert store.get(cid) == data
    assert block_path(store, cid).read_bytes() == data
    assert list(store.iter_cids()) == [cid]
    assert store.delete(cid) is True
    assert store.delete(cid) is False
    with pytest.raises(BlockNotFound, match=str(cid)):
        store.get(cid)


def test_layout_is_next_to_last_two_chars(store: Blockstore) -> None:
    cid, data = raw(b"layout")
    store.put(cid, data)
    name = cid.encode()
    assert (store.root / "blocks" / name[-3:-1] / name).is_file()


def test_cidv0_and_cidv1_share_one_file(store: Blockstore) -> None:
    block = b"\x0a\x02hi"
    v0 = Cid.for_block(DAG_PB, block, version=0)
    store.put(v0, block)
    assert store.get(v0.to_v1()) == block
    assert list(store.iter_cids()) == [v0.to_v1()]


def test_put_refuses_wrong_data(store: Blockstore) -> None:
    cid, _ = raw(b"right")
    with pytest.raises(BlockMismatch):
        store.put(cid, b"wrong")
    assert not store.has(cid)
    assert store.stat().blocks == 0


def test_put_refuses_oversized_block(store: Blockstore) -> None:
    cid, data = raw(b"\0" * (MAX_BLOCK_SIZE + 1))
    with pytest.raises(ValueError, match="exceeds"):
        store.put(cid, data)


# ---------------------------------------------------------------- atomicity


def test_write_goes_through_fsynced_temp_file(store: Blockstore,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    renames: list[tuple[str, str]] = []
    fsyncs: list[int] = []
    real_replace, real_fsync = os.replace, os.fsync

    def replace(src, dst):  # type: ignore[no-untyped-def]
        assert Path(src).is_file()
        renames.append((str(src), str(dst)))
        real_replace(src, dst)

    def fsync(fd: int) -> None:
        fsyncs.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(bs_mod.os, "replace", replace)
    monkeypatch.setattr(bs_mod.os, "fsync", fsync)
    cid, data = raw(b"atomic")
    store.put(cid, data)
    (src, dst), = renames
    assert Path(src).parent == Path(dst).parent  # same directory: rename is atomic
    assert Path(src).name.startswith(".tmp-")
    assert dst == str(block_path(store, cid))
    assert len(fsyncs) >= 2  # the file, then its directory


def test_failed_write_leaves_nothing(store: Blockstore, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(src, dst):  # type: ignore[no-untyped-def]
        raise OSError("disk on fire")

    monkeypatch.setattr(bs_mod.os, "replace", boom)
    cid, data = raw(b"never lands")
    with pytest.raises(OSError, match="disk on fire"):
        store.put(cid, data)
    monkeypatch.undo()
    assert not store.has(cid)
    shard = block_path(store, cid).parent
    assert list(shard.iterdir()) == []


def test_crash_leftover_temp_files_are_cleaned_at_open(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = Blockstore(root)
    cid, data = raw(b"survivor")
    store.put(cid, data)
    # What a crash between write and rename leaves behind:
    shard = block_path(store, cid).parent
    half = shard / f".tmp-{cid.encode()}.deadbeef0000"
    half.write_bytes(data[:3])
    other_shard = root / "blocks" / "zz"
    other_shard.mkdir()
    (other_shard / ".tmp-whatever.123").write_bytes(b"junk")
    pins_tmp = root / ".tmp-pins.json.abcdef"
    pins_tmp.write_text("{")
    assert list(store.iter_cids()) == [cid]  # temp files are never blocks

    reopened = Blockstore(root)
    assert not half.exists() and not pins_tmp.exists()
    assert list(other_shard.iterdir()) == []
    assert list(reopened.iter_cids()) == [cid]
    assert reopened.get(cid) == data
    assert reopened.stat().blocks == 1


# ---------------------------------------------------------------- corruption


@pytest.mark.parametrize("damage", ["flip", "truncate", "grow"])
def test_corrupt_block_is_quarantined(store: Blockstore, damage: str) -> None:
    cid, data = raw(b"precious bytes")
    store.put(cid, data)
    path = block_path(store, cid)
    if damage == "flip":
        path.write_bytes(b"Precious bytes")
    elif damage == "truncate":
        path.write_bytes(data[:-1])
    else:
        path.write_bytes(b"\0" * (MAX_BLOCK_SIZE + 10))
    with pytest.raises(CorruptBlock) as err:
        store.get(cid)
    assert err.value.cid == cid
    assert not path.exists() and not store.has(cid)
    quarantined = list((store.root / "quarantine").iterdir())
    assert quarantined == [err.value.quarantined_to]
    assert quarantined[0].name.startswith(cid.encode() + ".")
    with pytest.raises(BlockNotFound):
        store.get(cid)
    store.put(cid, data)  # a good copy can be stored again
    assert store.get(cid) == data


def test_put_replaces_a_corrupt_copy(store: Blockstore) -> None:
    cid, data = raw(b"heal me")
    store.put(cid, data)
    block_path(store, cid).write_bytes(b"rotten")
    assert store.put(cid, data) is True
    assert store.get(cid) == data
    assert len(list((store.root / "quarantine").iterdir())) == 1


def test_verify_reports_and_quarantines(store: Blockstore) -> None:
    good = [raw(bytes([i]) * 10) for i in range(5)]
    for cid, data in good:
        store.put(cid, data)
    bad = [good[1][0], good[3][0]]
    for cid in bad:
        block_path(store, cid).write_bytes(b"bitrot")
    stray = store.root / "blocks" / "aa" / "not-a-cid"
    stray.parent.mkdir(exist_ok=True)
    stray.write_bytes(b"?")
    report = store.verify()
    assert report.ok == 3
    assert sorted(report.corrupt, key=str) == sorted(bad, key=str)
    assert report.stray == ["blocks/aa/not-a-cid"]
    assert len(list((store.root / "quarantine").iterdir())) == 2
    assert store.verify().corrupt == []
    assert store.stat().blocks == 3


# ---------------------------------------------------------------- pins and GC


def test_pins_and_gc(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = Blockstore(root)
    rng = random.Random(7)
    keep_data, drop_data = rng.randbytes(300), rng.randbytes(200)
    keep = add_file(store, keep_data)
    drop = add_file(store, drop_data)
    loose, loose_data = raw(b"loose block")
    store.put(loose, loose_data)
    before = store.stat()

    n_keep = store.pin(keep)
    assert n_keep > 20  # 19 leaves + inner nodes
    assert store.pins() == {keep}
    assert Blockstore(root).pins() == {keep}  # persisted
    doc = json.loads((root / "pins.json").read_text())
    assert doc == {"version": 1, "recursive": [keep.encode()]}

    freed = store.gc()
    after = store.stat()
    assert after.blocks == n_keep
    assert freed.blocks == before.blocks - after.blocks
    assert freed.bytes == before.bytes - after.bytes
    assert b"".join(iter_file_blocks(keep, store.get)) == keep_data
    assert not store.has(drop) and not store.has(loose)
    assert store.gc().blocks == 0

    assert store.unpin(keep) is True
    assert store.unpin(keep) is False
    assert store.gc().blocks == n_keep
    assert store.stat().blocks == 0
    assert Blockstore(root).pins() == set()


def test_shared_blocks_survive_gc(store: Blockstore) -> None:
    shared = b"S" * 16  # one identical 16-byte chunk in both files
    a = add_file(store, shared + b"a" * 16)
    b = add_file(store, shared + b"b" * 16)
    store.pin(a)
    store.gc()
    assert not store.has(b)
    assert b"".join(iter_file_blocks(a, store.get)) == shared + b"a" * 16


def test_pin_needs_the_whole_dag(store: Blockstore) -> None:
    data = random.Random(8).randbytes(100)
    root = add_file(store, data)
    leaf = Cid.for_block(RAW, data[:16])
    store.delete(leaf)
    with pytest.raises(BlockNotFound):
        store.pin(root)
    assert store.pins() == set()


def test_pin_accepts_cidv0_root(store: Blockstore) -> None:
    block = b"\x0a\x02hi"
    v0 = Cid.for_block(DAG_PB, block, version=0)
    store.put(v0, block)
    assert store.pin(v0) == 1
    assert store.pins() == {v0.to_v1()}
    assert store.gc().blocks == 0


@pytest.mark.parametrize("damage", ["corrupt", "missing"])
def test_gc_aborts_when_a_pinned_dag_is_incomplete(store: Blockstore, damage: str) -> None:
    root = add_file(store, random.Random(9).randbytes(100))
    store.pin(root)
    root_block = store.get(root)
    unpinned, data = raw(b"garbage")
    store.put(unpinned, data)
    if damage == "corrupt":
        block_path(store, root).write_bytes(b"rot")
    else:
        store.delete(root)
    before = store.stat().blocks
    with pytest.raises(BlockstoreError, match="gc aborted"):
        store.gc()
    # Nothing deleted (the blocks below the gap may still be wanted); only a
    # corrupt root was moved to quarantine by the walk.
    assert store.stat().blocks == before - (damage == "corrupt")
    assert store.has(unpinned)
    store.put(root, root_block)  # re-fetched from a peer, say
    assert store.gc().blocks == 1
    assert not store.has(unpinned)


def test_damaged_pin_file_refuses_to_open(tmp_path: Path) -> None:
    root = tmp_path / "store"
    Blockstore(root)
    (root / "pins.json").write_text('{"version": 1, "recursive": ["nope"]}')
    with pytest.raises(BlockstoreError, match="unreadable"):
        Blockstore(root)


def test_stat(store: Blockstore) -> None:
    for i in range(4):
        store.put(*raw(b"x" * (i + 1)))
    stat = store.stat()
    assert (stat.blocks, stat.bytes) == (4, 1 + 2 + 3 + 4)


# ---------------------------------------------------------------- fast paths


def test_batch_puts_are_flushed_once_by_syncfs(store: Blockstore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside a batch no fsync per block; leaving it flushes the store's filesystem once."""
    flushes: list[Path] = []
    fsyncs: list[int] = []
    real_flush, real_fsync = bs_mod._flush_filesystem, os.fsync
    monkeypatch.setattr(bs_mod, "_flush_filesystem", lambda root: (flushes.append(root), real_flush(root)))
    monkeypatch.setattr(bs_mod.os, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd)))
    blocks = [raw(os.urandom(100)) for _ in range(20)]
    with store.batch():
        for cid, data in blocks:
            assert store.put(cid, memoryview(data), hashed=True)
    assert flushes == [store.root] and fsyncs == []
    assert all(store.get(cid) == data for cid, data in blocks)
    bs_mod._flush_filesystem(store.root)  # syncfs itself works here (or falls back to sync)


def test_batch_that_writes_nothing_does_not_flush(store: Blockstore, monkeypatch: pytest.MonkeyPatch) -> None:
    cid, data = raw(b"already here")
    store.put(cid, data)
    flushes: list[Path] = []
    monkeypatch.setattr(bs_mod, "_flush_filesystem", flushes.append)
    with store.batch():
        assert not store.put(cid, data)   # present and intact: nothing written
    assert flushes == []
    with store.batch():
        assert store.put(*raw(b"new"))
    assert flushes == [store.root]


def test_put_remakes_a_shard_removed_behind_its_back(store: Blockstore) -> None:
    cid, data = raw(b"first")
    store.put(cid, data)
    shard = block_path(store, cid).parent
    block_path(store, cid).unlink()
    shard.rmdir()                      # the store still believes the shard exists
    assert store.put(cid, data)
    assert store.get(cid) == data


def test_put_survives_a_leftover_temp_file_of_the_same_name(store: Blockstore,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    cid, data = raw(b"collide")
    path = block_path(store, cid)
    path.parent.mkdir(parents=True, exist_ok=True)
    seq = 10**9
    (path.parent / f".tmp-{path.name}.{os.getpid()}.{seq}").write_bytes(b"stale")
    monkeypatch.setattr(bs_mod, "_tmp_seq", iter([seq]))
    assert store.put(cid, data)
    assert store.get(cid) == data


@pytest.mark.parametrize("size", [0, 1, 262144, MAX_BLOCK_SIZE])
def test_read_block_file_sizes(tmp_path: Path, size: int) -> None:
    f = tmp_path / "b"
    data = os.urandom(size)
    f.write_bytes(data)
    assert bs_mod._read_block_file(f) == data


def test_oversize_file_on_disk_is_corrupt(store: Blockstore) -> None:
    cid, data = raw(b"small")
    store.put(cid, data)
    block_path(store, cid).write_bytes(bytes(MAX_BLOCK_SIZE + 5))
    assert len(bs_mod._read_block_file(block_path(store, cid))) == MAX_BLOCK_SIZE + 1
    with pytest.raises(CorruptBlock):
        store.get(cid)
