"""Splice a consumer's libp2p stream onto an enclave stream.

The provider only ever copies bytes it cannot read: TLS runs end to end between
the consumer and the enclave. ``observe`` exists so tests can assert exactly
that (what passed through the relay is ciphertext); it sees each chunk once.
"""
from __future__ import annotations

from typing import Callable

import trio

CHUNK = 64 * 1024


async def _pump(src: trio.abc.Stream, dst: trio.abc.Stream, direction: str,
                observe: Callable[[str, bytes], None] | None) -> None:
    try:
        while chunk := await src.receive_some(CHUNK):
            if observe:
                observe(direction, chunk)
            await dst.send_all(chunk)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        # Half-close: the other direction may still be carrying the answer.
        send_eof = getattr(dst, "send_eof", None)
        try:
            if send_eof:
                await send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


async def splice(consumer: trio.abc.Stream, enclave: trio.abc.Stream, *, timeout: float = 300.0,
                 observe: Callable[[str, bytes], None] | None = None) -> None:
    """Copy both ways until both sides are done, or ``timeout`` passes."""
    with trio.move_on_after(timeout):
        async with trio.open_nursery() as n:
            n.start_soon(_pump, consumer, enclave, "to_enclave", observe)
            n.start_soon(_pump, enclave, consumer, "to_consumer", observe)
    for s in (consumer, enclave):
        with trio.move_on_after(1):
            await s.aclose()
