"""The one-socket protocol: strict framing on both ends; malformed input closes the channel cleanly."""

from __future__ import annotations

import json
import socket
import struct
import sys
import tempfile
from pathlib import Path

import pytest
import trio

from enclave import host
from enclave.runtime import channel as ch

from .conftest import REPO, make_job

# ---- the shared parser


def test_roundtrip_and_split_delivery() -> None:
    wire = ch.encode_ctrl({"op": "job", "x": 1}) + ch.encode(3, ch.OPEN, b'{"kind":"tls"}') + ch.encode_data(3, b"a" * 70000)
    p = ch.FrameParser()
    frames = []
    for i in range(0, len(wire), 7):  # byte-at-a-time-ish delivery
        frames += p.feed(wire[i : i + 7])
    p.eof()
    assert [(f.stream, f.kind) for f in frames] == [(0, ch.CTRL), (3, ch.OPEN), (3, ch.DATA), (3, ch.DATA)]
    assert b"".join(f.payload for f in frames[2:]) == b"a" * 70000
    assert len(frames[2].payload) == ch.MAX_PAYLOAD


@pytest.mark.parametrize("raw, message", [
    (struct.pack(">IBI", 1, ch.DATA, ch.MAX_PAYLOAD + 1), "exceeds"),
    (struct.pack(">IBI", 1, 9, 0), "unknown kind 9"),
    (struct.pack(">IBI", 5, ch.CTRL, 2) + b"{}", "CTRL must be on stream 0"),
    (struct.pack(">IBI", 0, ch.DATA, 1) + b"x", "CTRL must be on stream 0"),
    (struct.pack(">IBI", 0, ch.CTRL, 3) + b"\xff\xfe{", "not UTF-8 JSON"),
    (struct.pack(">IBI", 0, ch.CTRL, 2) + b"[]", "not a JSON object"),
    (struct.pack(">IBI", 0, ch.CTRL, 8) + b'{"op":1}', "no string 'op'"),
])
def test_parser_rejects(raw: bytes, message: str) -> None:
    with pytest.raises(ch.ChannelError, match=message):
        ch.FrameParser().feed(raw)


def test_parser_eof_inside_a_frame() -> None:
    p = ch.FrameParser()
    assert p.feed(struct.pack(">IBI", 1, ch.DATA, 10) + b"abc") == []
    with pytest.raises(ch.ChannelError, match="inside a frame"):
        p.eof()


def test_encoder_refuses_bad_frames() -> None:
    with pytest.raises(ValueError):
        ch.encode(1, ch.DATA, bytes(ch.MAX_PAYLOAD + 1))
    with pytest.raises(ValueError):
        ch.encode(1, 7)


# ---- the runtime as a process, against a hand-rolled (misbehaving) host


async def _runtime_with_raw_host(frames: bytes, *, close_after: bool = False) -> tuple[int, list[dict]]:
    """Start the runtime, send ``frames`` as the first thing, collect its control messages and exit code."""
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "s")
        listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await listener.bind(path)
        listener.listen(1)
        proc = await trio.lowlevel.open_process(host.runtime_argv(path, scratch=tmp), cwd=str(REPO))
        try:
            with trio.fail_after(10):
                conn, _ = await listener.accept()
                stream = trio.SocketStream(conn)
                await stream.send_all(frames)
                if close_after:
                    await stream.aclose()
                    return await proc.wait(), []
                parser, msgs = ch.FrameParser(), []
                while data := await stream.receive_some():
                    msgs += [json.loads(f.payload) for f in parser.feed(data) if f.kind == ch.CTRL]
                return await proc.wait(), msgs
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


def _job(digits) -> bytes:
    return ch.encode_ctrl(make_job(digits).message())


@pytest.mark.parametrize("bad, message", [
    (struct.pack(">IBI", 1, ch.DATA, 70000), "exceeds 65536"),
    (struct.pack(">IBI", 0, 0, 0), "unknown kind 0"),
    (struct.pack(">IBI", 4, ch.CTRL, 2) + b"{}", "CTRL must be on stream 0"),
    (struct.pack(">IBI", 0, ch.CTRL, 5) + b"nope!", "not UTF-8 JSON"),
    (ch.encode(7, ch.DATA, b"x"), "stream 7, which was never opened"),
    (ch.encode(1, ch.OPEN, b'{"kind":"ssh"}'), "kind tls|ai"),
    (ch.encode(2, ch.OPEN, b'{"kind":"tls"}') + ch.encode(1, ch.OPEN, b'{"kind":"tls"}'), "ids must increase"),
])
async def test_runtime_closes_channel_on_malformed_frame(bad: bytes, message: str) -> None:
    code, msgs = await _runtime_with_raw_host(bad)
    assert code == 1
    errors = [m["error"] for m in msgs if m["op"] == "error"]
    assert errors and message in errors[0], msgs


async def test_runtime_requires_a_job_first() -> None:
    code, msgs = await _runtime_with_raw_host(ch.encode_ctrl({"op": "hello"}))
    assert code == 1 and "expected a job first" in msgs[-1]["error"]


async def test_runtime_exits_when_host_hangs_up_mid_frame() -> None:
    code, _ = await _runtime_with_raw_host(struct.pack(">IBI", 0, ch.CTRL, 100) + b'{"op"', close_after=True)
    assert code == 1


async def test_runtime_malformed_frame_after_evidence(digits) -> None:
    """A bad frame mid-job (after the quote exchange) still ends the runtime with an error."""
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "s")
        listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await listener.bind(path)
        listener.listen(1)
        proc = await trio.lowlevel.open_process(host.runtime_argv(path, scratch=tmp), cwd=str(REPO))
        with trio.fail_after(10):
            conn, _ = await listener.accept()
            stream = trio.SocketStream(conn)
            await stream.send_all(_job(digits))
            parser, msgs = ch.FrameParser(), []
            while data := await stream.receive_some():
                for f in parser.feed(data):
                    msg = json.loads(f.payload)
                    msgs.append(msg)
                    if msg["op"] == "quote":  # a bogus quote: the runtime must refuse it
                        await stream.send_all(ch.encode_ctrl({"op": "quote", "re": msg["id"], "quote": "AAAA"}))
            assert await proc.wait() == 1
        assert "host returned no valid quote" in msgs[-1]["error"]


# ---- the host side against a misbehaving runtime


@pytest.mark.parametrize("bad, message", [
    (ch.encode(1, ch.OPEN, b'{"kind":"tls"}'), "may not OPEN"),
    (ch.encode(9, ch.DATA, b"x"), "never opened"),
    (ch.encode_ctrl({"op": "evidence", "cert": "!!", "quote": ""}), "malformed evidence"),
    (ch.encode_ctrl({"op": "launch-missiles"}), "unknown control op"),
    (struct.pack(">IBI", 0, ch.CTRL, 70000), "exceeds"),
])
async def test_host_session_closes_on_malformed_frames(digits, bad: bytes, message: str) -> None:
    a, b = _socketpair()
    session = host.EnclaveSession(a, make_job(digits), quote_fn=None, ai=None)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(session.run)
        first = await b.receive_some()
        assert json.loads(ch.FrameParser().feed(first)[0].payload)["op"] == "job"
        await b.send_all(bad)
        with trio.fail_after(5):
            with pytest.raises(host.EnclaveError, match=message):
                await session.wait_evidence(timeout=5)
    assert session.dead and "protocol error" in session.error


def _socketpair():
    x, y = trio.socket.socketpair()
    return trio.SocketStream(x), trio.SocketStream(y)


async def test_host_reports_runtime_that_dies_before_connecting(digits) -> None:
    async def launcher(socket_dir, name, scratch, quote_source):
        argv = [sys.executable, "-c", "import sys; sys.exit(3)"]
        proc = await trio.lowlevel.open_process(argv)
        return host._Subprocess(proc)

    with pytest.raises(host.EnclaveError, match="ended before connecting: 3"):
        async with host.open_enclave(make_job(digits), quote_fn=None, ai=None, launcher=launcher):
            pass
