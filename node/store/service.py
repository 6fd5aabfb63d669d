"""The store as the daemon serves it: JSON-RPC methods over the blockstore,
file import/export, and AI publishing, with progress notifications.

Blocking disk and hashing work runs in worker threads (``trio.to_thread``);
progress from those threads is forwarded to the caller at most every 0.2 s.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import trio

from enclave.ai_manifest import ManifestError
from enclave.cid import Cid, CidError
from enclave.unixfs import import_stream

from ..api.jsonrpc import INVALID_PARAMS, NODE_ERROR, RpcError
from ..fsutil import fsync_dir
from ..api.server import ApiServer
from .ai_publish import load_ai_key, publish_ai, read_manifest
from .blockstore import Blockstore, BlockNotFound, CorruptBlock
from .unixfs import UnixfsError, iter_file_blocks

Progress = Callable[[dict[str, Any]], Awaitable[None]]


def parse_cid(value: Any, name: str = "cid") -> Cid:
    if not isinstance(value, str):
        raise RpcError(INVALID_PARAMS, f"{name} must be a CID string")
    try:
        return Cid.decode(value)
    except CidError as e:
        raise RpcError(INVALID_PARAMS, f"{name}: {e}") from None


def _abs_path(value: Any, name: str) -> Path:
    if not isinstance(value, str) or not value:
        raise RpcError(INVALID_PARAMS, f"{name} must be a path string")
    p = Path(value)
    if not p.is_absolute():
        raise RpcError(INVALID_PARAMS, f"{name} must be absolute (the CLI resolves relative paths)")
    return p


class _ThreadProgress:
    """Called from a worker thread; forwards to the async progress at most every 0.2 s."""

    def __init__(self, progress: Progress | None, stage: str, total: int | None = None) -> None:
        self.progress, self.stage, self.total = progress, stage, total
        self._last = 0.0

    def __call__(self, done: int) -> None:
        now = time.monotonic()
        if self.progress is None or now - self._last < 0.2:
            return
        self._last = now
        msg = {"stage": self.stage, "bytes": done}
        if self.total:
            msg["total"] = self.total
        trio.from_thread.run(self.progress, msg)


class StoreService:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.blocks = Blockstore(data_dir / "store")
        # Set by the node: fetch a DAG from the network (Bitswap) into the store.
        self.fetch: Callable[[Cid, Progress], Awaitable[Any]] | None = None
        # Set by the node: tell every secrets peer to release no more shares of an AI.
        self.on_revoke: Callable[[str], Awaitable[dict[str, Any]]] | None = None
        # Set by the node: announce the AI and hand its key to the Secret Store.
        self.on_published: Callable[[str, bytes], Awaitable[dict[str, Any]]] | None = None

    # -- operations (also used in-process by other parts of the node) -----
    def add_file(self, path: Path, on_bytes: Callable[[int], None] | None = None) -> dict[str, Any]:
        t0 = time.monotonic()
        size = path.stat().st_size

        class Counting:
            def __init__(self, f):
                self.f, self.n = f, 0

            def readinto(self, b):
                k = self.f.readinto(b)
                self.n += k or 0
                if on_bytes:
                    on_bytes(self.n)
                return k

        with open(path, "rb", buffering=0) as f, self.blocks.lock:
            with self.blocks.batch():
                r = import_stream(Counting(f), lambda cid, block: self.blocks.put(cid, block, hashed=True))
            self.blocks.pin(r.cid)
        return {"cid": r.cid.encode(), "size": size, "blocks": r.blocks, "seconds": round(time.monotonic() - t0, 3)}

    def get_file(self, cid: Cid, out: Path, on_bytes: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Write the file named by ``cid`` to ``out`` atomically (all blocks must be local)."""
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.ofnode-{os.getpid()}.tmp")
        n = 0
        try:
            with open(tmp, "wb") as f:
                for chunk in iter_file_blocks(cid, self.blocks.get):
                    f.write(chunk)
                    n += len(chunk)
                    if on_bytes:
                        on_bytes(n)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, out)
            fsync_dir(out.parent)
        finally:
            tmp.unlink(missing_ok=True)
        return {"cid": cid.encode(), "path": str(out), "size": n}

    def _complete(self, root: Cid) -> bool:
        """Whether every block of the DAG under ``root`` is here (reads only dag-pb nodes)."""
        from .blockstore import BlockNotFound as _Missing

        try:
            self.blocks._reachable([root])
            return True
        except (_Missing, CorruptBlock, UnixfsError):
            return False

    # -- API ---------------------------------------------------------------
    def register(self, api: ApiServer) -> None:
        blocks = self.blocks

        async def add(path: str, progress: Progress) -> dict[str, Any]:
            p = _abs_path(path, "path")
            if not p.is_file():
                raise RpcError(INVALID_PARAMS, f"{p}: not a file")
            tp = _ThreadProgress(progress, "adding", p.stat().st_size)
            return await trio.to_thread.run_sync(self.add_file, p, tp)

        async def get(cid: str, out: str, progress: Progress) -> dict[str, Any]:
            c, o = parse_cid(cid), _abs_path(out, "out")
            if self.fetch is not None and not await trio.to_thread.run_sync(self._complete, c):
                await progress({"stage": "fetching"})
                try:
                    await self.fetch(c, progress)
                except Exception as e:  # the exchange reports unreachable or lying peers in its message
                    raise RpcError(NODE_ERROR, f"could not fetch {cid}: {e}") from None
            try:
                return await trio.to_thread.run_sync(self.get_file, c, o, _ThreadProgress(progress, "writing"))
            except BlockNotFound as e:
                raise RpcError(NODE_ERROR, f"{e} (not in this node's store)") from None
            except CorruptBlock as e:
                raise RpcError(NODE_ERROR, f"{e}") from None
            except UnixfsError as e:
                raise RpcError(NODE_ERROR, f"{cid} is not a UnixFS file: {e}") from None

        async def pin(cid: str) -> dict[str, Any]:
            c = parse_cid(cid)
            try:
                n = await trio.to_thread.run_sync(blocks.pin, c)
            except (BlockNotFound, CorruptBlock) as e:
                raise RpcError(NODE_ERROR, f"cannot pin {cid}: {e}") from None
            return {"cid": c.to_v1().encode(), "blocks": n}

        async def unpin(cid: str) -> dict[str, Any]:
            return {"cid": cid, "unpinned": await trio.to_thread.run_sync(blocks.unpin, parse_cid(cid))}

        async def ls() -> dict[str, Any]:
            st = await trio.to_thread.run_sync(blocks.stat)
            return {"pins": sorted(c.encode() for c in blocks.pins()), "blocks": st.blocks, "bytes": st.bytes}

        async def gc() -> dict[str, Any]:
            r = await trio.to_thread.run_sync(blocks.gc)
            return {"blocks": r.blocks, "bytes": r.bytes}

        async def verify() -> dict[str, Any]:
            r = await trio.to_thread.run_sync(blocks.verify)
            return {"ok": r.ok, "corrupt": [c.encode() for c in r.corrupt], "stray": r.stray,
                    "clean": not r.corrupt and not r.stray}

        async def ai_publish(dir: str, progress: Progress) -> dict[str, Any]:
            d = _abs_path(dir, "dir")
            if not (d / "ai.toml").is_file():
                raise RpcError(INVALID_PARAMS, f"{d}: no ai.toml (see docs/ai-manifest.md)")
            tp = _ThreadProgress(progress, "publishing")
            try:
                pub = await trio.to_thread.run_sync(publish_ai, d, blocks, self.data_dir, tp)
            except ManifestError as e:
                raise RpcError(INVALID_PARAMS, f"ai.toml: {e}") from None
            out = pub.to_dict()
            if self.on_published is not None:
                await progress({"stage": "depositing key shares"})
                out.update(await self.on_published(pub.cid, load_ai_key(self.data_dir, pub.cid)))
            return out

        async def ai_inspect(cid: str) -> dict[str, Any]:
            c = parse_cid(cid)
            try:
                raw, m = await trio.to_thread.run_sync(read_manifest, c, blocks)
            except BlockNotFound as e:
                raise RpcError(NODE_ERROR, f"{e} (not in this node's store)") from None
            except (ValueError, CorruptBlock) as e:  # AiObjectError, ManifestError, UnixfsError
                raise RpcError(NODE_ERROR, f"{cid} is not a valid AI object: {e}") from None
            return {"cid": c.encode(), "name": m.name, "version": m.version, "runtime": m.runtime,
                    "entry": m.entry, "description": m.description,
                    "resources": {"cpu": m.resources.cpu, "memory": m.resources.memory,
                                  "enclave_size": m.resources.enclave_size, "threads": m.resources.threads},
                    "files": dict(m.files), "manifest": raw.decode()}

        api.method("store.add", add, timeout=3600)
        api.method("store.get", get, timeout=3600)
        api.method("store.pin", pin, timeout=600)
        api.method("store.unpin", unpin)
        api.method("store.ls", ls, timeout=120)
        api.method("store.gc", gc, timeout=600)
        api.method("store.verify", verify, timeout=3600)
        api.method("ai.publish", ai_publish, timeout=3600)
        async def ai_revoke(cid: str) -> dict[str, Any]:
            c = parse_cid(cid)
            if self.on_revoke is None:
                raise RpcError(NODE_ERROR, "this node has no Secret Store to revoke at")
            return await self.on_revoke(c.encode())

        async def ai_rotate(cid: str, dir: str, progress: Progress) -> dict[str, Any]:
            """A new key for an AI: publish the directory again (fresh key, so a
            new CID), then revoke the old CID so no enclave gets its key again."""
            old = parse_cid(cid).encode()
            new = await ai_publish(dir, progress)
            await progress({"stage": "revoking the old key"})
            revoked = await ai_revoke(old)
            return {"old_cid": old, "new_cid": new["cid"], "published": new, "revoked": revoked}

        api.method("ai.inspect", ai_inspect)
        api.method("ai.revoke", ai_revoke)
        api.method("ai.rotate", ai_rotate, timeout=3600)
