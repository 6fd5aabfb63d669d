"""Targeted fixes to py-libp2p 0.8.1 (pinned), applied once at import.

Each patch replaces one module-level name with a wrapper that keeps the
original's behaviour; each is measured and explained here, and is dropped when
libp2p fixes the cause upstream.

1. Signed peer records on every pubsub RPC. py-libp2p attaches the sender's
   signed peer record to *every* GossipSub RPC and re-verifies it (ed25519 via
   PyNaCl, plus peerstore updates) on every RPC received: ~16 % of a node's CPU
   under gossip load (py-spy, 10-node testnet at 5 msg/s). A record is
   immutable bytes: once a given peer's exact record bytes verified, the same
   bytes from the same peer need not be verified again. A different record
   (new addresses, new sequence number) goes through the original path.
2. Yamux + Noise throughput (:func:`apply_stream_throughput`). Bulk data
   (Bitswap answers, any long stream) cost py-libp2p ~4 ms of CPU per MiB on
   each side, almost all per-frame Python work, not crypto. Measured with
   py-spy and CPU time per MiB on a 256 MiB loopback copy
   (bench/fetch_figures.py; docs/performance.md has the numbers). Each change
   keeps the wire format and the behaviour seen by callers:

   a. Yamux data frames of at most one Noise message: py-libp2p built
      64 KiB frames (65,536 bytes with the header), one byte-run over Noise's
      65,519-byte plaintext limit, so every frame went out as two Noise
      messages, the second of 17 bytes: twice the encryptions, socket writes,
      reads and decryptions. Frames are now 65,519 bytes (payload 65,507),
      within every implementation's 64 KiB frame size.
   b. Window updates as go-yamux sends them: once half of the receive window
      has been consumed, not after every read (py-libp2p's "release on read"
      plus a slack branch sent one per read, i.e. per frame: a frame back to
      the sender, parsed, decrypted and locked for, per 64 KiB).
   c. Noise transport reads buffered: one socket read of up to 256 KiB
      serves several Noise messages, instead of two reads (length, body), each
      through three wrappers and a lock, per message. Only the transport phase
      is buffered; the handshake reads exactly what it needs as before, so no
      byte that follows it can be swallowed.
   d. ``read_exactly`` (yamux and msgio) returns the first read as it is when
      it already has all ``n`` bytes, instead of copying it twice.
   e. Yamux frame writes skip building a debug log line (f-strings, a struct
      unpack) unless debug logging is on; the ``PY_YAMUX_*`` tuning
      environment is read once at import instead of ``os.getenv`` several
      times per frame.
   f. Coalesced sends: one ``write`` of N bytes becomes up to four full
      yamux frames (~256 KiB) per connection write (window permitting), and Noise
      encrypts all the messages of one write and hands them to the socket in
      one ``send``, instead of one lock, one encryption call chain and one
      socket write per frame.
   g. A writer out of send window is woken by the window update itself; it
      polled every 10 ms, so each time the window ran out (a 256 KiB window
      on a fast link, or a reader briefly behind) the stream stood still
      for up to 10 ms.
"""
from __future__ import annotations

import logging
import struct
from collections import OrderedDict
from typing import Any

import trio

import libp2p.pubsub.gossipsub as _gossipsub
import libp2p.pubsub.pubsub as _pubsub
from libp2p.pubsub.utils import maybe_consume_signed_record as _original

_MAX_REMEMBERED = 4096
_verified: OrderedDict[tuple[bytes, bytes], None] = OrderedDict()


def _cached_consume_signed_record(msg: Any, host: Any, peer_id: Any) -> bool:
    if not msg.HasField("senderRecord"):
        return True
    key = (peer_id.to_bytes(), msg.senderRecord)
    if key in _verified:
        _verified.move_to_end(key)
        return True
    ok = _original(msg, host, peer_id)
    if ok:
        _verified[key] = None
        if len(_verified) > _MAX_REMEMBERED:
            _verified.popitem(last=False)
    return ok


# ---------------------------------------------------------------------------
# 2. Yamux + Noise throughput

_RECV_CHUNK = 256 << 10     # bytes asked of the socket per read (c)
_FRAMES_PER_WRITE = 4       # full yamux frames per connection write, ~256 KiB (f)


class _WindowLock:
    """A yamux stream's ``window_lock`` (a trio.Lock) that also wakes a writer
    waiting for send window: py-libp2p's writer polled every 10 ms instead,
    and every update of ``send_window`` happens under this lock (2g)."""

    __slots__ = ("_lock", "_changed")

    def __init__(self) -> None:
        self._lock = trio.Lock()
        self._changed: trio.Event | None = None

    def changed(self) -> trio.Event:
        """An event set when the lock is next released."""
        if self._changed is None:
            self._changed = trio.Event()
        return self._changed

    async def acquire(self) -> None:
        await self._lock.acquire()

    def release(self) -> None:
        self._lock.release()
        event, self._changed = self._changed, None
        if event is not None:
            event.set()

    def locked(self) -> bool:
        return self._lock.locked()

    async def __aenter__(self) -> None:
        await self._lock.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self.release()


def apply_stream_throughput() -> None:
    """Patches 2a-2g (see the module docstring); idempotent."""
    import libp2p.io.msgio as _msgio
    import libp2p.io.utils as _ioutils
    import libp2p.security.noise.io as _nio
    import libp2p.stream_muxer.yamux.yamux as _ym
    from libp2p.io.exceptions import IncompleteReadError
    from libp2p.stream_muxer.exceptions import MuxedStreamError

    if getattr(_ym, "_ofnode_throughput", False):
        return
    _ym._ofnode_throughput = True

    # (a) one Noise message per yamux frame
    frame_max = _nio.MAX_PLAINTEXT_LENGTH
    _ym.MAX_MESSAGE_SIZE = frame_max
    payload_max = frame_max - _ym.HEADER_SIZE
    header = struct.Struct(_ym.YAMUX_HEADER_FORMAT)

    # (e) environment read once
    for name in ("_perf_yamux_debug_enabled", "_yamux_disable_hysteresis", "_yamux_release_on_read",
                 "_yamux_batch_threshold_divisor", "_yamux_data_read_timeout"):
        value = getattr(_ym, name)()
        setattr(_ym, name, (lambda v: lambda: v)(value))

    # (d) read_exactly without copies when one read has it all
    retries = _ioutils.DEFAULT_RETRY_READ_COUNT

    async def read_exactly(reader: Any, n: int, retry_count: int = retries) -> bytes:
        data = await reader.read(n)
        if len(data) == n and type(data) is bytes:
            return data
        buffer = bytearray(data)
        for _ in range(retry_count):
            if len(buffer) >= n:
                return bytes(buffer)
            buffer.extend(await reader.read(n - len(buffer)))
        if len(buffer) >= n:
            return bytes(buffer)
        raise IncompleteReadError(
            f"Connection closed during read operation: expected {n} bytes but received {len(buffer)} bytes",
            expected_bytes=n, received_bytes=len(buffer))

    _ym.read_exactly = read_exactly
    _msgio.read_exactly = read_exactly

    # (e) frame writes without the debug line
    original_write_frame = _ym.Yamux._write_frame
    ym_log = _ym.logger

    async def _write_frame(self: Any, data: bytes) -> None:
        if ym_log.isEnabledFor(logging.DEBUG):
            return await original_write_frame(self, data)
        async with self._write_lock:
            await self.secured_conn.write(data)
        await trio.lowlevel.checkpoint()

    _ym.Yamux._write_frame = _write_frame

    # (b) window updates once half the window is consumed
    async def _auto_tune_and_send_window_update(self: Any, *, bytes_read: int = 0) -> None:
        async with self.window_lock:
            buffered = len(self.conn.stream_buffers.get(self.stream_id, b""))
            # bytes read but not yet given back to the sender
            delta = self.target_recv_window - (self.recv_window + buffered)
            if delta <= 0 or delta < self.target_recv_window // 2:
                return
            increment = self._grow_to_delta(buffered)
            increment += self._apply_autotune_epoch(buffered)
        if increment > 0:
            await self.send_window_update(increment, skip_lock=True)

    _ym.YamuxStream._auto_tune_and_send_window_update = _auto_tune_and_send_window_update

    # (f) yamux: up to _WRITE_BATCH of frames per connection write
    async def write(self: Any, data: bytes) -> None:
        if self.send_closed:
            raise MuxedStreamError("Stream is closed for sending")
        if type(data) is not bytes:
            data = bytes(data)   # a view of a caller's bytearray would pin it while we wait
        total = len(data)
        view = memoryview(data)
        sent = 0
        while sent < total:
            parts: list[Any] = []
            async with self.rw_lock.write_lock():
                if self.send_closed:
                    raise MuxedStreamError("Stream is closed for sending")
                async with self.window_lock:
                    if self.closed:
                        raise MuxedStreamError("Stream is closed")
                    room = min(self.send_window, total - sent, _FRAMES_PER_WRITE * payload_max)
                    while room > 0:
                        n = min(room, payload_max)
                        parts.append(header.pack(0, _ym.TYPE_DATA, 0, self.stream_id, n))
                        parts.append(view[sent:sent + n])
                        self.send_window -= n
                        sent += n
                        room -= n
            if parts:
                await self.conn._write_frame(b"".join(parts))
                continue
            # No send window: wait for the peer's update (g), at most 5 s as
            # py-libp2p does; ``closed`` is set without the window lock, so
            # it is looked at every 10 ms as before.
            self._zero_window_waits += 1
            lock = self.window_lock
            with trio.move_on_after(5.0) as scope:
                while not (self.send_window > 0 or self.closed):
                    if isinstance(lock, _WindowLock):
                        with trio.move_on_after(0.01):
                            await lock.changed().wait()
                    else:
                        await trio.sleep(0.01)
            if scope.cancelled_caught:
                raise MuxedStreamError("Timed out waiting for window update after 5 seconds.")

    _ym.YamuxStream.write = write

    # (g) the window lock tells a blocked writer when the window changed
    original_stream_init = _ym.YamuxStream.__init__

    def stream_init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_stream_init(self, *args, **kwargs)
        self.window_lock = _WindowLock()

    _ym.YamuxStream.__init__ = stream_init

    # (f) Noise: every message of one write in one socket send
    max_plain = _nio.MAX_PLAINTEXT_LENGTH

    async def write_msg(self: Any, msg: bytes, prefix_encoded: bool = False) -> None:
        out: list[bytes] = []
        for start in range(0, max(len(msg), 1), max_plain):
            chunk = msg[start:start + max_plain]
            enc = self.encrypt(chunk if type(chunk) is bytes else bytes(chunk))
            if prefix_encoded and start == 0:
                enc = self.prefix + enc
            out.append(len(enc).to_bytes(2, "big"))
            out.append(enc)
        await self.read_writer.read_write_closer.write(b"".join(out))

    # (c) Noise transport reads, buffered
    original_init = _nio.NoiseTransportReadWriter.__init__

    def __init__(self: Any, conn: Any, noise_state: Any) -> None:
        original_init(self, conn, noise_state)
        self._ofnode_buf = b""
        self._ofnode_pos = 0

    async def read_msg(self: Any, prefix_encoded: bool = False) -> bytes:
        buf, pos = self._ofnode_buf, self._ofnode_pos
        while True:
            have = len(buf) - pos
            if have >= 2:
                size = int.from_bytes(buf[pos:pos + 2], "big")
                if have - 2 >= size:
                    msg = buf[pos + 2:pos + 2 + size]
                    pos += 2 + size
                    break
            chunk = await self.read_writer.read_write_closer.read(_RECV_CHUNK)
            if not chunk:
                self._ofnode_buf, self._ofnode_pos = b"", 0
                raise IncompleteReadError(
                    f"Connection closed: {have} bytes of a Noise message received",
                    expected_bytes=max(have + 1, 2), received_bytes=have)
            buf = buf[pos:] + chunk if have else chunk
            pos = 0
        if pos == len(buf):
            buf, pos = b"", 0
        self._ofnode_buf, self._ofnode_pos = buf, pos
        if prefix_encoded:
            msg = msg[len(self.prefix):]
        return self.decrypt(msg)

    _nio.NoiseTransportReadWriter.__init__ = __init__
    _nio.NoiseTransportReadWriter.read_msg = read_msg
    _nio.NoiseTransportReadWriter.write_msg = write_msg


def apply() -> None:
    _pubsub.maybe_consume_signed_record = _cached_consume_signed_record
    _gossipsub.maybe_consume_signed_record = _cached_consume_signed_record
    apply_stream_throughput()


apply()
