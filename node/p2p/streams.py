"""A libp2p stream as a ``trio.abc.Stream``, so TLS (``trio.SSLStream``) and
splicing code work on it like on any trio stream."""
from __future__ import annotations

import trio
from libp2p.abc import INetStream

# yamux resets a stream whose receiver stalls > 5 s; reads are kept moving by
# the splice loops, and this size keeps each write within one yamux window.
MAX_READ = 64 * 1024


class Libp2pStream(trio.abc.Stream):
    def __init__(self, stream: INetStream) -> None:
        self._s = stream
        self._closed = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise trio.ClosedResourceError("stream closed")
        try:
            await self._s.write(bytes(data))
        except Exception as e:  # libp2p raises its own stream errors
            raise trio.BrokenResourceError(str(e)) from e

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._closed:
            raise trio.ClosedResourceError("stream closed")
        try:
            return await self._s.read(min(max_bytes or MAX_READ, MAX_READ))
        except Exception as e:
            if "EOF" in type(e).__name__ or "closed" in str(e).lower():
                return b""
            raise trio.BrokenResourceError(str(e)) from e

    async def send_eof(self) -> None:
        try:
            await self._s.close()
        except Exception:  # already closed or reset: nothing more to send anyway
            pass

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._s.close()
        except Exception:  # closing a reset stream fails harmlessly
            pass
