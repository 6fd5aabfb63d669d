"""Publishing an AI: manifest checked, directory packed deterministically,
encrypted with a fresh AES-256-GCM key, stored as blocks, pinned.

The AI key stays with the publisher (0600, `<data dir>/ai-keys/`) until the
Secret Store takes it over (it will then be split among the secrets peers and
deleted here). Everything streams: memory stays flat whatever the AI's size.
"""
from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from enclave import ai_object
from enclave.ai_manifest import AiManifest, ManifestError, check_files, load_manifest
from enclave.cid import Cid
from enclave.package import encrypt_stream, new_key, pack
from enclave.unixfs import import_chunks

from ..fsutil import atomic_write, private_dir
from .blockstore import Blockstore
from .unixfs import iter_file_blocks

KEYS_DIR = "ai-keys"


@dataclass(frozen=True)
class Published:
    cid: str
    name: str
    version: str
    runtime: str
    plaintext_sha256: str
    plaintext_bytes: int
    object_bytes: int
    blocks: int
    seconds: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def publish_ai(
    directory: str | Path,
    store: Blockstore,
    data_dir: Path,
    progress: Callable[[int], None] | None = None,
) -> Published:
    """Publish the AI in ``directory``; raises ManifestError for a bad AI."""
    t0 = time.monotonic()
    directory = Path(directory)
    manifest = load_manifest(directory)
    manifest_bytes = (directory / "ai.toml").read_bytes()
    key = new_key()
    encrypted = encrypt_stream(pack(directory), key)
    done = 0

    def counted(chunks):
        nonlocal done
        for chunk in chunks:
            done += len(chunk)
            if progress:
                progress(done)
            yield chunk

    # Two passes over the files are unavoidable (the manifest's hashes are
    # checked, then the files are packed); they run side by side on two
    # threads (hashlib and AES-GCM release the GIL), and nothing is pinned or
    # kept unless the check passed: unpinned blocks go at the next gc.
    with ThreadPoolExecutor(max_workers=2) as pool:
        check = pool.submit(check_files, directory, manifest)
        with store.lock:  # a concurrent gc must not collect the half-imported DAG
            with store.batch():
                result = import_chunks(counted(_read_ahead(ai_object.build(manifest_bytes, encrypted), pool)), lambda cid, block: store.put(cid, block, hashed=True))
            check.result()  # raises ManifestError: nothing pinned
            store.pin(result.cid)
    cid = result.cid.encode()
    keys = private_dir(data_dir / KEYS_DIR)
    record = {"cid": cid, "key": key.hex(), "plaintext_sha256": encrypted.plaintext_sha256,
              "name": manifest.name, "version": manifest.version, "created": int(time.time())}
    atomic_write(keys / f"{cid}.json", json.dumps(record).encode(), mode=0o600)
    return Published(cid, manifest.name, manifest.version, manifest.runtime, encrypted.plaintext_sha256,
                     encrypted.plaintext_size, result.size, result.blocks, round(time.monotonic() - t0, 3))


def _read_ahead(chunks, pool: ThreadPoolExecutor):
    """Produce ``chunks`` on a worker thread, one ahead of the consumer, so
    packing and encryption overlap with hashing and writing."""
    it = iter(chunks)
    sentinel = object()
    ahead = pool.submit(next, it, sentinel)
    while (item := ahead.result()) is not sentinel:
        ahead = pool.submit(next, it, sentinel)
        yield item


def load_ai_key(data_dir: Path, cid: str) -> bytes:
    """The key of an AI this node published (for the enclave test hook)."""
    path = data_dir / KEYS_DIR / f"{Cid.decode(cid).encode()}.json"
    try:
        return bytes.fromhex(json.loads(path.read_text())["key"])
    except FileNotFoundError:
        raise KeyError(f"no key for AI {cid} on this node") from None


def read_manifest(cid: str | Cid, store: Blockstore) -> tuple[bytes, AiManifest]:
    """The public manifest of an AI object in the store (only its first blocks are read)."""
    root = Cid.decode(cid) if isinstance(cid, str) else cid
    raw, _ = ai_object.split(iter_file_blocks(root, store.get))
    try:
        from enclave.ai_manifest import parse_manifest

        return raw, parse_manifest(raw)
    except ManifestError:
        raise
