"""The host's half of the enclave protocol (trio; NOT trusted base).

The provider's node launches the runtime (``python -m enclave.runtime``) with
a Unix socket path, accepts its connection, and drives an
:class:`EnclaveSession` over it: sends the job, answers quote requests (sim:
the simulated QE signs for the MRENCLAVE measured from what was launched),
receives the RA-TLS evidence, streams the encrypted AI on ``fetch_ai``,
answers the key TEST HOOK, and opens TLS streams (:meth:`EnclaveSession.open_stream`)
that the provider splices to consumers.  Everything it relays is ciphertext.

Typical use::

    async with open_enclave(job, quote_fn=sim_quote_fn(qe, job.manifest.encode()),
                            ai=ciphertext, ai_key=key) as enclave:
        enclave.evidence.cert_der      # forward to the DOS
        stream = await enclave.open_stream()   # splice to the consumer
"""

from __future__ import annotations

import base64
import math
import os
import socket as _socket
import sys
import tempfile
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterable, AsyncIterator, Awaitable, Callable, Protocol

import trio

from enclave import measure
from enclave.quotes import layout
from enclave.runtime import channel as ch

__all__ = [
    "Job", "Evidence", "EnclaveError", "EnclaveStream", "EnclaveSession", "EnclaveHandle", "Launcher",
    "runtime_argv", "subprocess_launcher", "backend_launcher", "sim_quote_fn", "open_enclave",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
MAX_QUOTES = 4  # the runtime needs two (legacy + DICE); more is a misbehaving enclave

QuoteFn = Callable[[bytes], bytes]
AiSource = bytes | Callable[[], AsyncIterable[bytes]]
ShareFn = Callable[[dict], Awaitable[list]]
ACL_WAIT = 60.0  # how long a runtime asking for its ACL entry may wait for the DOS quorum


class EnclaveError(Exception):
    """The enclave failed, broke the protocol, or went away."""


@dataclass(frozen=True)
class Job:
    request_id: str
    nonce: bytes
    ai_cid: str
    manifest: str  # the exact ai.toml text; it is measured (sim MRENCLAVE)
    max_requests: int = 1
    timeout: float = 600.0
    # Where the runtime gets the AI key: "secret-store" (shares from the
    # secrets peers, relayed by the host) or "host-test-hook" (tests only).
    key_source: str = "host-test-hook"
    secrets_peers: tuple[str, ...] | list[str] = ()

    def message(self) -> dict:
        return {"op": "job", "request_id": self.request_id, "nonce": self.nonce.hex(), "ai_cid": self.ai_cid,
                "manifest": self.manifest, "max_requests": self.max_requests, "timeout": self.timeout,
                "key_source": self.key_source, "secrets_peers": list(self.secrets_peers)}


@dataclass(frozen=True)
class Evidence:
    cert_der: bytes
    quote: bytes
    mrenclave: str  # as the runtime reports it; verifiers take it from the quote
    timing: dict = field(default_factory=dict)


class EnclaveHandle(Protocol):
    """A launched runtime: ``wait()`` until it ends (returns how), ``aclose()`` kills if needed and reaps."""

    async def wait(self) -> object: ...
    async def aclose(self) -> None: ...


#: ``launch(socket_dir, socket_name, scratch_dir, quote_source) -> handle``: how the runtime is
#: started.  The runtime must connect to ``socket_dir/socket_name`` (however it sees that path)
#: and keep its private files under ``scratch_dir``.
Launcher = Callable[[Path, str, Path, str], Awaitable[EnclaveHandle]]


def runtime_argv(socket_path: str | os.PathLike[str], *, quote_source: str = "sim-host",
                 python: str = sys.executable, scratch: str | os.PathLike[str] | None = None,
                 attestation_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """The runtime's command line (as seen wherever it runs)."""
    argv = [python, "-m", "enclave.runtime", "--socket", str(socket_path), "--quote-source", quote_source]
    argv += ["--scratch", str(scratch)] if scratch else []
    return argv + (["--attestation-dir", str(attestation_dir)] if attestation_dir else [])


class _Subprocess:
    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc

    async def wait(self) -> int:
        return await self.proc.wait()

    async def aclose(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        with trio.CancelScope(shield=True):
            await self.proc.wait()


async def subprocess_launcher(socket_dir: Path, socket_name: str, scratch_dir: Path,
                              quote_source: str) -> EnclaveHandle:
    """Start the runtime as a plain child process, no sandbox: for tests and benchmarks."""
    argv = runtime_argv(socket_dir / socket_name, quote_source=quote_source, scratch=scratch_dir)
    return _Subprocess(await trio.lowlevel.open_process(argv, cwd=str(REPO_ROOT)))


def backend_launcher(backend, **limits) -> Launcher:
    """A Launcher that runs the runtime through an ``enclave.backends`` Backend (e.g. sim/bubblewrap).

    ``limits`` go to ``EnclaveSpec`` (memory_bytes, cpu_seconds, max_pids, threads, env).
    """
    from enclave.backends.base import SCRATCH_DIR, SOCKET_DIR, EnclaveSpec, runtime_code_dirs

    async def launch(socket_dir: Path, socket_name: str, scratch_dir: Path, quote_source: str) -> EnclaveHandle:
        argv = runtime_argv(f"{SOCKET_DIR}/{socket_name}", quote_source=quote_source, scratch=SCRATCH_DIR)
        spec = EnclaveSpec(argv=argv, code_dirs=runtime_code_dirs(), socket_dir=socket_dir,
                           scratch_dir=scratch_dir, **limits)
        return await backend.start(spec)

    return launch


def sim_quote_fn(qe, manifest: bytes, *, debug: bool = False, **kwargs) -> QuoteFn:
    """Quotes by the sim QE for the MRENCLAVE the host measures (runtime code + manifest)."""
    from enclave.quotes.sim_qe import SimQuoteSource

    return SimQuoteSource(qe, measure.mrenclave(manifest), debug=debug, **kwargs).get_quote


class EnclaveStream(trio.abc.Stream):
    """One stream to the enclave: bytes in and out, ``b""`` at the enclave's CLOSE."""

    def __init__(self, session: "EnclaveSession", sid: int) -> None:
        self._session, self.id = session, sid
        self._send, self._recv = trio.open_memory_channel[bytes | BaseException](math.inf)
        self._pending = b""
        self._eof = False
        self.closed = False

    def _deliver(self, item: bytes | BaseException) -> None:
        self._send.send_nowait(item)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.closed:
            raise trio.ClosedResourceError("stream closed")
        if self._session.dead:
            raise trio.BrokenResourceError(self._session.error or "enclave gone")
        if data:
            await self._session._write(ch.encode_data(self.id, bytes(data)))

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if not self._pending and not self._eof:
            item = await self._recv.receive()
            if isinstance(item, BaseException):
                self._eof = True
                raise trio.BrokenResourceError(str(item)) from item
            if item == b"":
                self._eof = True
            self._pending = item
        n = len(self._pending) if max_bytes is None else max_bytes
        out, self._pending = self._pending[:n], self._pending[n:]
        return out

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            self._session._streams.pop(self.id, None)
            if not self._session.dead:
                with trio.move_on_after(5):
                    try:
                        await self._session._write(ch.encode(self.id, ch.CLOSE))
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass
        await trio.lowlevel.checkpoint()


class EnclaveSession:
    """Drives one connected runtime.  Run :meth:`run` in a nursery."""

    def __init__(self, transport: trio.abc.Stream, job: Job, *, quote_fn: QuoteFn | None,
                 ai: AiSource | None, ai_key: bytes | None = None, share_fn: ShareFn | None = None) -> None:
        self.transport, self.job = transport, job
        self.quote_fn, self.ai, self.ai_key = quote_fn, ai, ai_key  # ai_key: TEST HOOK only
        self.share_fn = share_fn  # relays a share request to the secrets peers, returns their answers
        self._acl: dict | None = None
        self._acl_granted = trio.Event()
        self.evidence: Evidence | None = None
        self.error: str | None = None
        self.dead = False
        self.served: list[dict] = []
        self.got_evidence, self.ai_ready, self.finished = trio.Event(), trio.Event(), trio.Event()
        self._wlock = trio.Lock()
        self._streams: dict[int, EnclaveStream] = {}
        self._next_sid = 1
        self._quotes = 0
        self._fetched = False
        self._nursery: trio.Nursery | None = None
        self.exit: object = None  # what the launcher's handle.wait() returned, once the runtime ended

    # ---- plumbing
    async def _write(self, data: bytes) -> None:
        async with self._wlock:
            await self.transport.send_all(data)

    async def _ctrl(self, msg: dict) -> None:
        await self._write(ch.encode_ctrl(msg))

    def _fail(self, reason: str | None) -> None:
        """Mark the session over (``reason`` None: a clean finish) and wake every waiter."""
        if self.error is None and reason is not None:
            self.error = reason
        reason = reason or "enclave finished"
        self.dead = True
        for st in list(self._streams.values()):
            st._deliver(EnclaveError(reason))
        self._streams.clear()
        for ev in (self.got_evidence, self.ai_ready, self.finished):
            ev.set()

    async def _wait(self, event: trio.Event, what: str, timeout: float | None) -> None:
        with trio.fail_after(timeout if timeout is not None else math.inf):
            await event.wait()
        if self.error is not None and (event is not self.finished):
            raise EnclaveError(f"{what}: {self.error}")

    # ---- public
    def grant_acl(self, grant: dict) -> None:
        """Hand the runtime its quorum ACL entry ({entry, signatures}) once the DOS peers signed it."""
        self._acl = grant
        self._acl_granted.set()

    async def run(self) -> None:
        """Send the job and serve the runtime until it exits or the channel breaks.  Never raises."""
        parser = ch.FrameParser()
        reason: str | None = None
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                await self._ctrl(self.job.message())
                while data := await self.transport.receive_some(256 * 1024):
                    for frame in parser.feed(data):
                        await self._handle(frame)
                parser.eof()
                if not self.finished.is_set():
                    reason = "enclave closed the channel without saying bye"
            except ch.ChannelError as exc:
                reason = f"protocol error from the enclave: {exc}"
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                # After its bye the runtime just exits; a frame of ours still in
                # flight then makes its socket close with a reset: that is not an error.
                if not self.finished.is_set():
                    reason = f"channel broke: {exc!r}"
            nursery.cancel_scope.cancel()
        self._fail(reason)
        if reason:
            with trio.CancelScope(shield=True):
                await self.transport.aclose()

    async def wait_evidence(self, timeout: float | None = 10.0) -> Evidence:
        await self._wait(self.got_evidence, "no evidence", timeout)
        assert self.evidence is not None
        return self.evidence

    async def wait_ai_ready(self, timeout: float | None = 60.0) -> None:
        await self._wait(self.ai_ready, "AI not ready", timeout)

    async def open_stream(self) -> EnclaveStream:
        """A new TLS stream into the enclave (splice it to the consumer)."""
        if self.dead:
            raise EnclaveError(self.error or "enclave gone")
        sid, self._next_sid = self._next_sid, self._next_sid + 1
        st = EnclaveStream(self, sid)
        self._streams[sid] = st
        await self._write(ch.encode(sid, ch.OPEN, b'{"kind":"tls"}'))
        return st

    async def shutdown(self) -> None:
        if not self.dead:
            try:
                await self._ctrl({"op": "shutdown"})
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    # ---- runtime -> host
    async def _handle(self, f: ch.Frame) -> None:
        if f.kind == ch.CTRL:
            await self._on_ctrl(ch.decode_ctrl(f.payload))
        elif f.kind == ch.OPEN:
            raise ch.ChannelError("the enclave may not OPEN streams")
        elif f.stream >= self._next_sid:
            raise ch.ChannelError(f"{ch.KINDS[f.kind]} for stream {f.stream}, which was never opened")
        elif (st := self._streams.get(f.stream)) is not None:
            if f.kind == ch.DATA:
                st._deliver(f.payload)
            else:
                self._streams.pop(f.stream, None)
                reason = f.payload.decode("utf-8", "replace")
                st._deliver(EnclaveError(f"enclave refused the stream: {reason}") if reason else b"")

    async def _on_ctrl(self, msg: dict) -> None:
        op, rid = msg["op"], msg.get("id")
        if op == "quote":
            try:
                if self.quote_fn is None or self._quotes >= MAX_QUOTES:
                    raise ValueError("no quotes available" if self.quote_fn is None else "too many quote requests")
                self._quotes += 1
                quote = self.quote_fn(bytes.fromhex(msg["report_data"]))
                await self._ctrl({"op": "quote", "re": rid, "quote": base64.b64encode(quote).decode()})
            except (KeyError, TypeError, ValueError) as exc:
                await self._ctrl({"op": "error", "re": rid, "error": f"quote: {exc}"})
        elif op == "evidence":
            try:
                cert, quote = base64.b64decode(msg["cert"], validate=True), base64.b64decode(msg["quote"], validate=True)
                layout.parse(quote)
            except (KeyError, TypeError, ValueError, layout.QuoteFormatError) as exc:
                raise ch.ChannelError(f"malformed evidence: {exc}") from None
            self.evidence = Evidence(cert, quote, str(msg.get("mrenclave", "")), msg.get("timing") or {})
            self.got_evidence.set()
        elif op == "fetch_ai":
            if self._fetched or self.ai is None:
                await self._ctrl({"op": "error", "re": rid, "error": "no AI to fetch" if self.ai is None else "already fetched"})
                return
            self._fetched = True
            sid, self._next_sid = self._next_sid, self._next_sid + 1
            await self._write(ch.encode(sid, ch.OPEN, ch.json.dumps({"kind": "ai", "re": rid}).encode()))
            assert self._nursery is not None
            self._nursery.start_soon(self._send_ai, sid)
        elif op == "acl_request":
            assert self._nursery is not None
            self._nursery.start_soon(self._answer_acl, rid)
        elif op == "shares_request":
            assert self._nursery is not None
            self._nursery.start_soon(self._answer_shares, rid, msg.get("request"))
        elif op == "key_request":  # TEST HOOK: the key in clear, for tests without a Secret Store
            if self.ai_key is None:
                await self._ctrl({"op": "error", "re": rid, "error": "host has no key (test hook disabled)"})
            else:
                await self._ctrl({"op": "ai_key", "re": rid, "key": self.ai_key.hex()})
        elif op == "ai_ready":
            self.ai_ready.set()
        elif op == "served":
            self.served.append(msg)
        elif op == "bye":
            self.finished.set()
        elif op == "error":
            self._fail(f"enclave error: {msg.get('error')}")
        else:
            raise ch.ChannelError(f"unknown control op {op!r}")

    async def _answer_acl(self, rid: object) -> None:
        with trio.move_on_after(ACL_WAIT):
            await self._acl_granted.wait()
        if self._acl is None:
            await self._ctrl({"op": "error", "re": rid, "error": "no ACL entry was granted in time"})
        else:
            await self._ctrl({"op": "acl", "re": rid, **self._acl})

    async def _answer_shares(self, rid: object, request: object) -> None:
        """Relay: the request is signed by the enclave key, the answers sealed to it."""
        if self.share_fn is None or not isinstance(request, dict):
            await self._ctrl({"op": "error", "re": rid, "error": "this host relays no share requests"})
            return
        try:
            answers = await self.share_fn(request)
        except Exception as exc:  # noqa: BLE001 - network failures become the runtime's error
            await self._ctrl({"op": "error", "re": rid, "error": f"share relay failed: {exc}"[:500]})
            return
        await self._ctrl({"op": "shares", "re": rid, "answers": answers})

    async def _send_ai(self, sid: int) -> None:
        reason = b""
        try:
            if isinstance(self.ai, (bytes, bytearray)):
                await self._write(ch.encode_data(sid, bytes(self.ai)))
            else:
                async for chunk in self.ai():  # type: ignore[misc]
                    if chunk:
                        await self._write(ch.encode_data(sid, bytes(chunk)))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        except Exception as exc:  # noqa: BLE001 - a storage failure becomes the stream's close reason
            reason = f"AI source failed: {exc}".encode()[: ch.MAX_PAYLOAD]
        try:
            await self._write(ch.encode(sid, ch.CLOSE, reason))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


async def _accept_or_exit(listener: trio.socket.SocketType, handle: EnclaveHandle, timeout: float) -> trio.SocketStream:
    """Accept the runtime's connection; fail early if it ends first."""
    result: list = []
    with trio.fail_after(timeout):
        async with trio.open_nursery() as nursery:
            async def accept() -> None:
                conn, _ = await listener.accept()
                result.append(trio.SocketStream(conn))
                nursery.cancel_scope.cancel()

            async def died() -> None:
                how = await handle.wait()
                result.append(EnclaveError(f"enclave ended before connecting: {how}"))
                nursery.cancel_scope.cancel()

            nursery.start_soon(accept)
            nursery.start_soon(died)
    if isinstance(result[0], EnclaveError):
        raise result[0]
    return result[0]


@asynccontextmanager
async def open_enclave(job: Job, *, quote_fn: QuoteFn | None, ai: AiSource | None, ai_key: bytes | None = None,
                       share_fn: ShareFn | None = None,
                       launcher: Launcher = subprocess_launcher, quote_source: str = "sim-host",
                       start_timeout: float = 10.0, stop_timeout: float = 5.0) -> AsyncIterator[EnclaveSession]:
    """Launch a runtime, run its session, and yield it once the evidence is in.

    On exit the runtime is asked to shut down and waited for (``session.exit``
    is what the launcher's handle reported); after ``stop_timeout`` it is
    killed.  The socket and scratch directories are removed.
    """
    with tempfile.TemporaryDirectory(prefix="ofnode-host-") as tmp:
        socket_dir, scratch_dir = Path(tmp) / "sock", Path(tmp) / "scratch"
        socket_dir.mkdir(mode=0o700)
        scratch_dir.mkdir(mode=0o700)
        listener = trio.socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        await listener.bind(str(socket_dir / "enclave.sock"))
        listener.listen(1)
        handle = await launcher(socket_dir, "enclave.sock", scratch_dir, quote_source)
        try:
            transport = await _accept_or_exit(listener, handle, start_timeout)
            listener.close()
            session = EnclaveSession(transport, job, quote_fn=quote_fn, ai=ai, ai_key=ai_key, share_fn=share_fn)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(session.run)
                    try:
                        await session.wait_evidence(start_timeout)
                        yield session
                    finally:
                        with trio.CancelScope(shield=True):
                            await session.shutdown()
                            with trio.move_on_after(stop_timeout):
                                await session.finished.wait()
                                session.exit = await handle.wait()
                        nursery.cancel_scope.cancel()
            except BaseExceptionGroup as group:  # session.run never raises: unwrap the caller's own error
                if len(group.exceptions) == 1:
                    raise group.exceptions[0] from None
                raise
        finally:
            listener.close()
            await handle.aclose()
