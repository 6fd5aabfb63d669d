"""The runtime's one link to the world: multiplexed streams over one Unix socket.

Frame (all integers big-endian)::

    stream:u32  kind:u8  length:u32  payload[length]        length <= 65536

Kinds: OPEN (1), DATA (2), CLOSE (3) on streams >= 1; CTRL (4) on stream 0
only, whose payload is one UTF-8 JSON object with a string ``"op"``.  Only the
host opens streams, with strictly increasing ids; the OPEN payload is a JSON
object saying what the stream is for (``{"kind":"tls"}`` or
``{"kind":"ai","re":<request id>}``).  CLOSE ends a stream in both directions;
its payload is empty or a UTF-8 reason (an error).  DATA or CLOSE for a stream
already closed is ignored (it may have been in flight); for a stream never
opened it is a protocol error.  Any malformed frame is a
:class:`ChannelError` and ends the channel.  See ``docs/enclave-runtime.md``.

:class:`FrameParser` is shared by both ends (the host drives it from trio);
:class:`Channel` is the runtime's blocking, thread-based end.  Standard
library only (trusted base).
"""

from __future__ import annotations

import json
import queue
import socket
import struct
import threading
from typing import Any, NamedTuple

OPEN, DATA, CLOSE, CTRL = 1, 2, 3, 4
KINDS = {OPEN: "OPEN", DATA: "DATA", CLOSE: "CLOSE", CTRL: "CTRL"}
HEADER = struct.Struct(">IBI")
MAX_PAYLOAD = 64 * 1024


class ChannelError(Exception):
    """A protocol violation or a dead channel."""


class Frame(NamedTuple):
    stream: int
    kind: int
    payload: bytes


def encode(stream: int, kind: int, payload: bytes = b"") -> bytes:
    if kind not in KINDS or not 0 <= stream <= 0xFFFFFFFF or len(payload) > MAX_PAYLOAD:
        raise ValueError(f"bad frame: stream {stream} kind {kind} length {len(payload)}")
    return HEADER.pack(stream, kind, len(payload)) + payload


def encode_ctrl(msg: dict) -> bytes:
    return encode(0, CTRL, json.dumps(msg, separators=(",", ":")).encode())


def encode_data(stream: int, data: bytes) -> bytes:
    """``data`` as as many DATA frames as needed (one empty frame for empty data)."""
    view = memoryview(data)
    return b"".join(encode(stream, DATA, bytes(view[i : i + MAX_PAYLOAD]))
                    for i in range(0, max(len(view), 1), MAX_PAYLOAD))


def json_object(payload: bytes, what: str) -> dict:
    try:
        obj = json.loads(payload.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise ChannelError(f"{what} is not UTF-8 JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ChannelError(f"{what} is not a JSON object")
    return obj


def decode_ctrl(payload: bytes) -> dict:
    msg = json_object(payload, "control message")
    if not isinstance(msg.get("op"), str):
        raise ChannelError("control message has no string 'op'")
    return msg


class FrameParser:
    """Incremental, strict frame parser: ``feed(bytes) -> [Frame]``.

    Checks the framing rules that need no stream state (length, kind, which
    kinds go on stream 0, control payloads are JSON objects).
    """

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        out = []
        while len(self._buf) >= HEADER.size:
            stream, kind, length = HEADER.unpack_from(self._buf)
            if kind not in KINDS:
                raise ChannelError(f"frame on stream {stream}: unknown kind {kind}")
            if length > MAX_PAYLOAD:
                raise ChannelError(f"frame on stream {stream}: length {length} exceeds {MAX_PAYLOAD}")
            if (stream == 0) != (kind == CTRL):
                raise ChannelError(f"{KINDS[kind]} frame on stream {stream}: CTRL must be on stream 0, "
                                   "and only CTRL")
            if len(self._buf) < HEADER.size + length:
                break
            payload = bytes(self._buf[HEADER.size : HEADER.size + length])
            del self._buf[: HEADER.size + length]
            if kind == CTRL:
                decode_ctrl(payload)
            out.append(Frame(stream, kind, payload))
        return out

    def eof(self) -> None:
        """Call at end of input: a partial frame left over is an error."""
        if self._buf:
            raise ChannelError(f"channel closed inside a frame ({len(self._buf)} bytes left)")


class Stream:
    """One host-opened stream as the runtime sees it: incoming chunks in a queue, None at CLOSE."""

    def __init__(self, sid: int, info: dict, chan: "Channel") -> None:
        self.id, self.info, self.chan = sid, info, chan
        self.inbox: queue.Queue[bytes | None] = queue.Queue()
        self.closed_reason: str | None = None  # set when the host CLOSEd it with a reason
        self.closed = False

    def recv(self, timeout: float) -> bytes | None:
        """Next chunk, or None at CLOSE.  Raises ChannelError on timeout or a dead channel."""
        try:
            item = self.inbox.get(timeout=timeout)
        except queue.Empty:
            raise ChannelError(f"stream {self.id}: no data for {timeout:g}s") from None
        if item is None and self.chan.error:
            raise ChannelError(self.chan.error)
        return item

    def send(self, data: bytes) -> None:
        if not self.closed:
            self.chan.send_raw(encode_data(self.id, data))

    def close(self, reason: str = "") -> None:
        if not self.closed:
            self.closed = True
            with self.chan.lock:
                self.chan.streams.pop(self.id, None)
            self.chan.send_raw(encode(self.id, CLOSE, reason.encode()[:MAX_PAYLOAD]))


class Channel:
    """The runtime's end: a reader thread routes frames, callers block with timeouts.

    Control messages that answer a :meth:`request` (they carry ``"re": id``)
    go to that caller; streams opened for a request (``"re"`` in the OPEN
    info) likewise; everything else lands in :meth:`next_event`, as
    ``("ctrl", msg)`` or ``("stream", Stream)``, along with what worker
    threads :meth:`post`.  Once the channel is dead every wait raises.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.error: str | None = None
        self.lock, self._wlock = threading.Lock(), threading.Lock()
        self._events: queue.Queue[tuple[str, Any] | None] = queue.Queue()
        self._waiters: dict[int, queue.Queue] = {}
        self.streams: dict[int, Stream] = {}
        self._last_open = 0
        self._next_id = 1

    @classmethod
    def connect(cls, address: str, timeout: float = 10.0) -> "Channel":
        if address.startswith("tcp:"):  # Gramine allows no Unix socket to the host; the channel is untrusted anyway
            host, _, port = address[4:].rpartition(":")
            sock = socket.create_connection((host, int(port)), timeout=timeout)
        else:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(address)
        sock.settimeout(None)
        chan = cls(sock)
        threading.Thread(target=chan._read_loop, name="channel-reader", daemon=True).start()
        return chan

    def send_raw(self, data: bytes) -> None:
        try:
            with self._wlock:
                self.sock.sendall(data)
        except OSError as exc:
            raise ChannelError(f"channel send failed: {exc}") from None

    def send(self, msg: dict) -> None:
        self.send_raw(encode_ctrl(msg))

    def post(self, item: tuple[str, Any]) -> None:
        self._events.put(item)

    def request(self, msg: dict, timeout: float) -> tuple[str, Any]:
        """Send ``msg`` with a fresh ``id``; wait for ("ctrl", reply) or ("stream", Stream)."""
        box: queue.Queue = queue.Queue()
        with self.lock:
            rid, self._next_id = self._next_id, self._next_id + 1
            self._waiters[rid] = box
        try:
            self.send({**msg, "id": rid})
            item = box.get(timeout=timeout)
        except queue.Empty:
            raise ChannelError(f"no answer to {msg['op']!r} within {timeout:g}s") from None
        finally:
            with self.lock:
                self._waiters.pop(rid, None)
        if item is None:
            raise ChannelError(self.error or "channel closed")
        if item[0] == "ctrl" and item[1]["op"] == "error":
            raise ChannelError(f"host refused {msg['op']!r}: {item[1].get('error')}")
        return item

    def next_event(self, timeout: float) -> tuple[str, Any]:
        try:
            item = self._events.get(timeout=timeout)
        except queue.Empty:
            raise ChannelError(f"nothing from the host for {timeout:g}s") from None
        if item is None:
            self._events.put(None)  # keep later callers failing too
            raise ChannelError(self.error or "channel closed")
        return item

    # -- the reader thread
    def _route(self, rid: object, item: tuple[str, Any]) -> None:
        with self.lock:
            box = self._waiters.get(rid) if isinstance(rid, int) else None
        (box or self._events).put(item)

    def _handle(self, f: Frame) -> None:
        if f.kind == CTRL:
            msg = decode_ctrl(f.payload)
            return self._route(msg.get("re"), ("ctrl", msg))
        if f.kind == OPEN:
            if f.stream <= self._last_open:
                raise ChannelError(f"OPEN of stream {f.stream}: ids must increase (last {self._last_open})")
            info = json_object(f.payload, f"OPEN payload of stream {f.stream}")
            if info.get("kind") not in ("tls", "ai"):
                raise ChannelError(f"OPEN of stream {f.stream}: payload must be a JSON object with kind tls|ai")
            self._last_open = f.stream
            st = Stream(f.stream, info, self)
            with self.lock:
                self.streams[f.stream] = st
            return self._route(info.get("re"), ("stream", st))
        if f.stream > self._last_open:
            raise ChannelError(f"{KINDS[f.kind]} frame for stream {f.stream}, which was never opened")
        with self.lock:
            st = self.streams.pop(f.stream, None) if f.kind == CLOSE else self.streams.get(f.stream)
        if st is None:
            return  # closed already; the frame was in flight
        if f.kind == CLOSE:
            st.closed, st.closed_reason = True, f.payload.decode("utf-8", "replace") or None
        st.inbox.put(f.payload if f.kind == DATA else None)

    def _read_loop(self) -> None:
        parser = FrameParser()
        try:
            while data := self.sock.recv(256 * 1024):
                for frame in parser.feed(data):
                    self._handle(frame)
            parser.eof()
            self.error = "channel: host closed the channel"
        except (ChannelError, OSError) as exc:
            self.error = f"channel: {exc}"
            try:  # best effort: tell the host why we hang up
                self.send({"op": "error", "error": self.error})
            except ChannelError:
                pass
        with self.lock:
            waiters, streams = list(self._waiters.values()), list(self.streams.values())
            self.streams.clear()
        for q in (*waiters, *(st.inbox for st in streams), self._events):
            q.put(None)
