"""Request/response messages over libp2p streams: one length-prefixed JSON
object each way, strictly validated.

Frame: a 4-byte big-endian length, then that many bytes of UTF-8 JSON whose
top level is an object. Duplicate keys, NaN/Infinity, non-UTF-8 bytes, frames
over the protocol's size limit and nesting deeper than Python's JSON decoder
allows are all rejected with :class:`WireError` (never another exception), so
a handler can answer "malformed" and carry on.

The field helpers (``get_str``, ``get_hex``...) raise :class:`WireError`
naming the field. Used by the DOS and the secrets protocols alike.
"""
from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import struct
from typing import Any, Awaitable, Callable, Sequence

import trio

__all__ = [
    "WireError", "encode_frame", "decode_body", "read_message", "write_message", "request", "fan_out",
    "get", "get_str", "get_int", "get_hex", "get_b64", "get_list", "only_keys", "b64", "canonical_json",
]

log = logging.getLogger("ofnode.wire")
_LEN = struct.Struct(">I")
_HEX = re.compile(r"[0-9a-f]*")


class QuorumError(Exception):
    """Fewer peers than a quorum said yes; ``refusals`` maps peer -> its reason."""

    def __init__(self, message: str, refusals: dict[str, str]) -> None:
        super().__init__(message)
        self.refusals = refusals


class WireError(ValueError):
    """A malformed or oversize message; the text names the problem (safe to send back)."""


# -- JSON -------------------------------------------------------------------
def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise WireError(f"duplicate key {k[:40]!r}")
        out[k] = v
    return out


def _no_constants(name: str) -> Any:
    raise WireError(f"{name} is not allowed")


def decode_body(raw: bytes) -> dict[str, Any]:
    """Strict JSON object from bytes (no size check here: the frame reader does it)."""
    try:
        text = bytes(raw).decode("utf-8")
        obj = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except WireError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError, TypeError):
        raise WireError("not a JSON object (invalid UTF-8 or JSON)") from None
    if not isinstance(obj, dict):
        raise WireError("not a JSON object")
    return obj


def canonical_json(obj: Any) -> bytes:
    """Deterministic JSON: sorted keys, no spaces, ASCII only."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def encode_frame(obj: dict[str, Any], max_size: int) -> bytes:
    body = json.dumps(obj, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()
    if len(body) > max_size:
        raise WireError(f"message of {len(body)} bytes exceeds {max_size}")
    return _LEN.pack(len(body)) + body


# -- streams ----------------------------------------------------------------
async def _read_exactly(stream: Any, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        try:
            chunk = await stream.read(n - len(buf))
        except Exception as e:  # StreamEOF, StreamReset, StreamError...
            raise WireError(f"stream ended after {len(buf)} of {n} bytes ({type(e).__name__})") from None
        if not chunk:
            raise WireError(f"stream ended after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


async def read_message(stream: Any, max_size: int) -> dict[str, Any]:
    (n,) = _LEN.unpack(await _read_exactly(stream, _LEN.size))
    if n > max_size:
        raise WireError(f"message of {n} bytes exceeds {max_size}")
    return decode_body(await _read_exactly(stream, n))


async def write_message(stream: Any, obj: dict[str, Any], max_size: int) -> None:
    await stream.write(encode_frame(obj, max_size))


# A node asking itself (a provider that is also a secrets peer, a publisher
# depositing its own share): libp2p cannot dial its own peer id, so services
# register their handler here and such requests are answered in process,
# through the same encode/decode and size limits as the network path.
LocalHandler = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]
_LOCAL: dict[tuple[str, str], LocalHandler] = {}


def register_local(host: Any, protocol: str, handler: LocalHandler) -> None:
    _LOCAL[(host.get_id().to_base58(), protocol)] = handler


async def serve_stream(stream: Any, handler: LocalHandler, malformed: Callable[[str, str], Awaitable[dict[str, Any]]],
                       *, timeout: float, max_request: int, max_response: int, what: str) -> None:
    """Serve one request/response stream: read a message, answer it with
    ``handler(peer, msg)`` (or ``malformed(peer, reason)``), close. Nothing a
    peer sends, and no failure of the stream, escapes: a stream handler that
    raises would take py-libp2p's whole connection down."""
    try:
        peer = stream.muxed_conn.peer_id.to_base58()
        with trio.move_on_after(timeout):
            try:
                msg = await read_message(stream, max_request)
            except WireError as e:
                answer = await malformed(peer, f"malformed: {e}")
            else:
                answer = await handler(peer, msg)
            await write_message(stream, answer, max_response)
    except Exception as e:  # logged; the node carries on (see above)
        logging.getLogger("ofnode.wire").debug(f"{what} stream failed",
                                               extra={"error": f"{type(e).__name__}: {str(e)[:200]}"})
    finally:
        with trio.move_on_after(1):
            try:
                await stream.close()
            except Exception as e:  # closing a reset stream fails; nothing left to do
                logging.getLogger("ofnode.wire").debug("stream close failed", extra={"error": str(e)[:100]})


async def request(host: Any, peer_id: str, protocol: str, msg: dict[str, Any], *, max_request: int,
                  max_response: int, timeout: float) -> dict[str, Any]:
    """Open a stream to ``peer_id``, send ``msg``, return the reply object.

    Raises WireError for anything that goes wrong (unreachable peer, protocol
    not supported, timeout, malformed reply), with the cause in the text.
    """
    from libp2p.peer.id import ID

    frame = encode_frame(msg, max_request)
    me = host.get_id().to_base58()
    if peer_id == me:
        handler = _LOCAL.get((me, protocol))
        if handler is None:
            raise WireError(f"this node does not serve {protocol}")
        with trio.fail_after(timeout):
            reply = await handler(me, decode_body(frame[_LEN.size:]))
        return decode_body(encode_frame(reply, max_response)[_LEN.size:])
    try:
        pid = ID.from_base58(peer_id)
    except Exception:
        raise WireError(f"{peer_id!r} is not a peer id") from None
    stream = None
    finished = False
    deadline = trio.current_time() + timeout
    try:
        # Cancelling py-libp2p 0.8.1 stream I/O midway can break the whole
        # connection (see fan_out): the negotiation is shielded from outer
        # cancellation and bounded by the deadline only. A timeout during the
        # exchange itself still cancels I/O; it means the peer is not answering.
        with trio.CancelScope(deadline=deadline, shield=True) as scope:
            try:
                stream = await host.new_stream(pid, [protocol])
            except Exception as e:
                raise WireError(f"cannot open {protocol} to {peer_id}: {type(e).__name__}: {str(e)[:200]}") from None
        if scope.cancelled_caught:
            raise trio.TooSlowError
        with trio.fail_at(deadline):
            try:
                await stream.write(frame)
            except Exception as e:
                raise WireError(f"send to {peer_id} failed: {type(e).__name__}") from None
            answer = await read_message(stream, max_response)
            finished = True
            return answer
    except trio.TooSlowError:
        raise WireError(f"{peer_id} did not answer within {timeout:g} s") from None
    finally:
        if stream is not None:
            with trio.move_on_after(1) as cleanup:
                cleanup.shield = True  # also when the caller was cancelled
                try:
                    await (stream.close() if finished else stream.reset())
                except Exception:  # the stream is already gone; the answer (or error) is decided
                    pass


async def fan_out(items: Sequence[Any], fn: Callable[[Any], Awaitable[None]], *, enough: Callable[[], bool]) -> None:
    """Run ``fn(item)`` for every item at once; return when ``enough()`` holds after
    one finishes, or when all have finished.

    Calls still running on return are *not* cancelled: they go on as trio
    system tasks until they end by themselves (each is bounded by its own
    timeout). py-libp2p 0.8.1 cannot cancel stream I/O safely: a write
    cancelled after the Noise layer encrypted it desynchronises the Noise
    nonces, the other side fails to authenticate the next frame and drops the
    whole connection, with every stream on it. ``fn`` must not raise (errors
    are logged and dropped).
    """
    items = list(items)
    if not items:
        return
    send, recv = trio.open_memory_channel[None](len(items))

    async def run(item: Any) -> None:
        try:
            await fn(item)
        except Exception as e:  # fn is meant to catch its own errors
            log.debug("fan_out call failed", extra={"error": f"{type(e).__name__}: {str(e)[:200]}"})
        finally:
            try:
                send.send_nowait(None)
            except (trio.ClosedResourceError, trio.BrokenResourceError, trio.WouldBlock):
                pass

    for item in items:
        trio.lowlevel.spawn_system_task(run, item)
    remaining = len(items)
    async with recv:
        while remaining:
            await recv.receive()
            remaining -= 1
            if enough():
                return


# -- fields -----------------------------------------------------------------
def only_keys(d: dict[str, Any], required: set[str], optional: set[str] = frozenset(), where: str = "message") -> None:  # type: ignore[assignment]
    missing = required - set(d)
    if missing:
        raise WireError(f"{where}: missing field(s) {sorted(missing)}")
    extra = set(d) - required - set(optional)
    if extra:
        raise WireError(f"{where}: unknown field(s) {sorted(str(k)[:40] for k in extra)[:5]}")


def get(d: dict[str, Any], key: str, typ: type | tuple[type, ...]) -> Any:
    if key not in d:
        raise WireError(f"{key}: missing")
    v = d[key]
    types = typ if isinstance(typ, tuple) else (typ,)
    if not isinstance(v, types) or (isinstance(v, bool) and bool not in types):
        name = "/".join(t.__name__ for t in types)
        raise WireError(f"{key}: expected {name}, got {type(v).__name__}")
    return v


def get_str(d: dict[str, Any], key: str, *, max_len: int = 256, pattern: re.Pattern[str] | None = None) -> str:
    v = get(d, key, str)
    if len(v) > max_len:
        raise WireError(f"{key}: longer than {max_len} characters")
    if pattern is not None and not pattern.fullmatch(v):
        raise WireError(f"{key}: not valid")
    return v


def get_int(d: dict[str, Any], key: str, lo: int = 0, hi: int = 2**53) -> int:
    v = get(d, key, int)
    if not lo <= v <= hi:
        raise WireError(f"{key}: must lie in {lo}..{hi}")
    return v


def get_hex(d: dict[str, Any], key: str, *, size: int | None = None, min_size: int = 0, max_size: int = 1 << 16) -> bytes:
    v = get(d, key, str)
    if len(v) > 2 * max(size or 0, max_size) or len(v) % 2 or not _HEX.fullmatch(v):
        raise WireError(f"{key}: expected lowercase hex")
    raw = bytes.fromhex(v)
    if size is not None and len(raw) != size:
        raise WireError(f"{key}: expected {size} bytes, got {len(raw)}")
    if not min_size <= len(raw) <= max_size:
        raise WireError(f"{key}: expected {min_size}..{max_size} bytes, got {len(raw)}")
    return raw


def get_b64(d: dict[str, Any], key: str, *, max_size: int, min_size: int = 1) -> bytes:
    v = get(d, key, str)
    if len(v) > (max_size + 2) // 3 * 4:
        raise WireError(f"{key}: longer than {max_size} bytes")
    try:
        raw = base64.b64decode(v, validate=True)
    except (binascii.Error, ValueError):
        raise WireError(f"{key}: not base64") from None
    if not min_size <= len(raw) <= max_size:
        raise WireError(f"{key}: expected {min_size}..{max_size} bytes, got {len(raw)}")
    return raw


def get_list(d: dict[str, Any], key: str, *, max_len: int) -> list[Any]:
    v = get(d, key, list)
    if len(v) > max_len:
        raise WireError(f"{key}: more than {max_len} items")
    return v


def b64(data: bytes) -> str:
    return base64.b64encode(bytes(data)).decode()
