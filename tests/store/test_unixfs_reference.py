"""Our UnixFS importer against the js reference importer, block for block.

The reference (tests/helpers/unixfs_ref/cid.mjs) runs ipfs-unixfs-importer
with kubo's ``ipfs add --cid-version 1`` settings. We compare not only the
root CID but the full set of blocks and their sizes, so a difference shows
up at the block where it starts.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from enclave.cid import Cid
from node.store.unixfs import CHUNK_SIZE, MAX_LINKS, cid_of_file, import_file

# name -> size in bytes; chosen around every boundary of the layout.
CASES = {
    "empty": 0,
    "one-byte": 1,
    "chunk-minus-one": CHUNK_SIZE - 1,
    "one-chunk": CHUNK_SIZE,
    "one-chunk-plus-one": CHUNK_SIZE + 1,
    "two-chunks": 2 * CHUNK_SIZE,
    "174-chunks": MAX_LINKS * CHUNK_SIZE,
    "174-chunks-plus-one-byte": MAX_LINKS * CHUNK_SIZE + 1,
    "175-chunks": (MAX_LINKS + 1) * CHUNK_SIZE,
    "64-MiB": 64 << 20,
}


def _write_random(path: Path, size: int, seed: int) -> Path:
    path.write_bytes(random.Random(seed).randbytes(size))
    return path


def _our_blocks(path: Path, **kwargs: int) -> dict:
    blocks: dict[str, int] = {}

    def put(cid: Cid, block: bytes) -> None:
        assert cid.verify(block)
        blocks[cid.encode()] = len(block)

    root = import_file(path, put, **kwargs).cid.encode()
    return {"root": root, "blocks": blocks}


@pytest.fixture(scope="session")
def case_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("unixfs-cases")
    return {name: _write_random(base / name, size, seed=len(name) * 1000 + i)
            for i, (name, size) in enumerate(CASES.items())}


@pytest.fixture(scope="session")
def reference(unixfs_ref, case_files: dict[str, Path]) -> dict[str, dict]:
    names = list(case_files)
    results = unixfs_ref([case_files[n] for n in names], json_out=True)
    return dict(zip(names, results))


@pytest.mark.parametrize("name", list(CASES))
def test_same_dag_as_reference(name: str, case_files: dict[str, Path],
                               reference: dict[str, dict]) -> None:
    ours = _our_blocks(case_files[name])
    assert ours["root"] == reference[name]["root"]
    assert ours["blocks"] == reference[name]["blocks"]
    assert cid_of_file(case_files[name]) == reference[name]["root"]


def test_plain_output_mode(unixfs_ref, case_files: dict[str, Path]) -> None:
    """The helper's default (one CID per line) mode agrees with ours too."""
    paths = [case_files["one-byte"], case_files["two-chunks"]]
    assert unixfs_ref(paths) == [cid_of_file(p) for p in paths]


def test_known_cids_without_reference(tmp_path: Path) -> None:
    """Facts that hold for kubo as well, checked without node."""
    hello = tmp_path / "hello"
    hello.write_bytes(b"hello world")
    assert cid_of_file(hello) == "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    # kubo with raw leaves: the empty file is the raw block of zero bytes.
    assert cid_of_file(empty) == "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"


@pytest.mark.parametrize("max_links", [2, 3])
def test_deep_trees_match_reference(unixfs_ref, tmp_path: Path, max_links: int) -> None:
    """Tiny chunks and fan-out reach depth 4-5, covering every k*m**d+1 edge.

    174*174+1 real chunks would be a 7 GiB file; the layout code does not
    care about the numbers, so small ones exercise the same branches.
    """
    chunk = 4
    files = []
    for n_chunks in range(1, 3 * max_links**3 + 2):
        for tail in (0, 1):  # whole chunks, or the last one a single byte
            size = (n_chunks - tail) * chunk + tail
            path = tmp_path / f"f{n_chunks}-{tail}"
            files.append(_write_random(path, size, seed=n_chunks * 2 + tail))
    refs = unixfs_ref(files, json_out=True, chunk_size=chunk, max_children=max_links)
    for path, ref in zip(files, refs):
        ours = _our_blocks(path, chunk_size=chunk, max_links=max_links)
        assert ours == ref, path.name
