"""TLS 1.3 server ends on channel streams, and the request/response format inside TLS.

The host relays a consumer's bytes onto a stream; TLS runs end to end between
the consumer and this code (stdlib ``ssl`` with memory BIOs), so the host sees
only ciphertext.  Inside TLS:

    consumer -> enclave:  input_len:u64  input
    enclave -> consumer:  header_len:u32  header (UTF-8 JSON)  output[header.output_len]

``header`` is ``{"status": "ok", "output_len", "receipt", "signature",
"timing"}`` or ``{"status": "error", "error", "output_len": 0}``.  The receipt
is signed (ECDSA P-256, SHA-256, DER signature, base64) over
:func:`canonical` of the receipt object.  Standard library only.
"""

from __future__ import annotations

import json
import os
import ssl
import struct
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from enclave.runtime.channel import ChannelError, Stream

REQ_HEADER = struct.Struct(">Q")
RESP_HEADER = struct.Struct(">I")
MAX_RESPONSE_HEADER = 1 << 20


def canonical(obj: dict) -> bytes:
    """The exact bytes a receipt signature covers."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def encode_request(data: bytes) -> bytes:
    return REQ_HEADER.pack(len(data)) + data


def encode_response(header: dict, output: bytes = b"") -> bytes:
    raw = json.dumps({**header, "output_len": len(output)}).encode()
    return RESP_HEADER.pack(len(raw)) + raw + output


def server_context(key: ec.EllipticCurvePrivateKey, cert_der: bytes, scratch: Path) -> ssl.SSLContext:
    """A TLS 1.3-only server context for the enclave key and RA-TLS cert.

    ``ssl`` loads keys only from files, so the key is written to the scratch
    dir encrypted under a random password that never leaves memory, loaded,
    and deleted at once: the host never sees it in clear.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.num_tickets = 0  # one connection per consumer; no resumption
    password = os.urandom(32).hex().encode()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.BestAvailableEncryption(password))
    pem += ssl.DER_cert_to_PEM_cert(cert_der).encode()
    path = scratch / f"tls-{os.urandom(8).hex()}.pem"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        ctx.load_cert_chain(path, password=password)
    finally:
        path.unlink(missing_ok=True)
    return ctx


class TlsConn:
    """A server-side TLS connection driven over one channel stream (blocking, with timeouts)."""

    def __init__(self, ctx: ssl.SSLContext, stream: Stream, timeout: float) -> None:
        self.stream, self.timeout = stream, timeout
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self._in, self._out, server_side=True)

    def _flush(self) -> None:
        data = self._out.read()
        if data:
            self.stream.send(data)

    def _call(self, fn, *args):
        while True:
            try:
                result = fn(*args)
                self._flush()
                return result
            except ssl.SSLWantReadError:
                self._flush()
                chunk = self.stream.recv(self.timeout)
                if chunk is None:
                    raise ChannelError(f"stream {self.stream.id} closed by the peer"
                                       + (f": {self.stream.closed_reason}" if self.stream.closed_reason else ""))
                self._in.write(chunk)

    def handshake(self) -> None:
        self._call(self.obj.do_handshake)

    def read_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            try:
                data = self._call(self.obj.read, min(n - len(buf), 1 << 20))
            except ssl.SSLZeroReturnError:
                data = b""
            if not data:
                raise ChannelError(f"TLS peer closed after {len(buf)} of {n} bytes")
            buf += data
        return bytes(buf)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        for i in range(0, len(view), 1 << 20):
            self._call(self.obj.write, view[i : i + (1 << 20)])

    def close(self) -> None:
        """Send close_notify (without waiting for the peer's) and close the stream."""
        try:
            self.obj.unwrap()
        except (ssl.SSLError, ValueError):
            pass
        try:
            self._flush()
        finally:
            self.stream.close()
