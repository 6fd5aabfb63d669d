"""The local API: JSON-RPC 2.0 over the node's Unix socket (mode 0600).

Each connection may send many requests; each request runs in its own task, so
a long call (a job, a fetch) streams progress notifications while quick calls
on the same connection are answered meanwhile. Every malformed input gets a
JSON-RPC error; nothing a client sends can take the daemon down.
"""
from __future__ import annotations

import errno
import inspect
import json
import logging
import os
import socket as stdsocket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

import trio

from ..metrics import Metrics
from . import jsonrpc as rpc
from .jsonrpc import RpcError

log = logging.getLogger("ofnode.api")

Progress = Callable[[dict[str, Any]], Awaitable[None]]
Method = Callable[..., Awaitable[Any]]


@dataclass
class _Registered:
    fn: Method
    wants_progress: bool
    timeout: float


class ApiServer:
    def __init__(self, path: Path, metrics: Metrics, max_request_bytes: int = 1 << 20, max_connections: int = 64) -> None:
        self.path, self.metrics = path, metrics
        self.max_request_bytes, self.max_connections = max_request_bytes, max_connections
        self._methods: dict[str, _Registered] = {}
        self._conn_limit = trio.CapacityLimiter(max_connections)
        self._inflight = 0
        self._idle = trio.Event()
        self._idle.set()

    def method(self, name: str, fn: Method, timeout: float = 30.0) -> None:
        """Register ``fn(**params)``; if it takes ``progress`` it may stream notifications."""
        wants = "progress" in inspect.signature(fn).parameters
        self._methods[name] = _Registered(fn, wants, timeout)

    def method_names(self) -> list[str]:
        return sorted(self._methods)

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        sock = trio.socket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
        _claim_socket_path(self.path)
        # The data dir is 0700, so nobody else can reach the socket in the
        # instant between bind and chmod.
        await sock.bind(str(self.path))
        os.chmod(self.path, 0o600)
        sock.listen(128)
        listener = trio.SocketListener(sock)
        try:
            task_status.started()
            await trio.serve_listeners(self._handle, [listener])
        finally:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass

    async def _handle(self, stream: trio.SocketStream) -> None:
        if self._conn_limit.borrowed_tokens >= self.max_connections:
            await _send_quietly(stream, rpc.error_response(None, RpcError(rpc.NODE_ERROR, "too many API connections")))
            await stream.aclose()
            return
        async with self._conn_limit, stream:
            send_lock = trio.Lock()

            async def send(data: bytes) -> None:
                async with send_lock:
                    await stream.send_all(data)

            buf = bytearray()
            try:
                async with trio.open_nursery() as nursery:
                    while True:
                        chunk = await stream.receive_some(65536)
                        if not chunk:
                            break
                        buf += chunk
                        while (nl := buf.find(b"\n")) >= 0:
                            line = bytes(buf[:nl])
                            del buf[: nl + 1]
                            if line.strip():
                                nursery.start_soon(self._answer, line, send)
                        if len(buf) > self.max_request_bytes:
                            await send(rpc.error_response(None, RpcError(
                                rpc.INVALID_REQUEST, f"request exceeds {self.max_request_bytes} bytes")))
                            break
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async def drain(self) -> None:
        """Return once no call is in flight: a node stopping on `node.stop`
        still answers that call (and any other running one) first."""
        await self._idle.wait()

    async def _answer(self, line: bytes, send: Callable[[bytes], Awaitable[None]]) -> None:
        self._inflight += 1
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        try:
            await self._answer_line(line, send)
        except Exception:  # a bug, not the client's fault: answer it, and never take the server down
            log.exception("rpc request failed")
            self.metrics.inc("ofnode_rpc_errors_total", code=str(rpc.INTERNAL_ERROR))
            try:
                await send(rpc.error_response(None, RpcError(rpc.INTERNAL_ERROR, "internal error")))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        finally:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()

    async def _answer_line(self, line: bytes, send: Callable[[bytes], Awaitable[None]]) -> None:
        try:
            try:
                req = json.loads(line)
            except (ValueError, RecursionError):
                await send(rpc.error_response(None, RpcError(rpc.PARSE_ERROR, "parse error: not valid JSON")))
                self.metrics.inc("ofnode_rpc_errors_total", code=str(rpc.PARSE_ERROR))
                return
            if isinstance(req, list):
                if not req:
                    await send(rpc.error_response(None, RpcError(rpc.INVALID_REQUEST, "empty batch")))
                    return
                out = [r for r in [await self._call(item, send) for item in req[:100]] if r is not None]
                if out:
                    await send(b"[" + b",".join(o.rstrip(b"\n") for o in out) + b"]\n")
                return
            reply = await self._call(req, send)
            if reply is not None:
                await send(reply)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def _call(self, req: Any, send: Callable[[bytes], Awaitable[None]]) -> bytes | None:
        id_ = req.get("id") if isinstance(req, dict) else None
        if not isinstance(id_, (str, int, type(None))) or isinstance(id_, bool):
            id_ = None
        try:
            if (
                not isinstance(req, dict)
                or req.get("jsonrpc") != "2.0"
                or not isinstance(req.get("method"), str)
            ):
                raise RpcError(rpc.INVALID_REQUEST, "invalid request: expected {jsonrpc: '2.0', method, params?, id?}")
            name = req["method"]
            params = req.get("params", {})
            if params is None:
                params = {}
            if not isinstance(params, dict):
                raise RpcError(rpc.INVALID_PARAMS, "params must be an object (by-name parameters)")
            reg = self._methods.get(name)
            if reg is None:
                raise RpcError(rpc.METHOD_NOT_FOUND, f"no method {name[:80]!r}; try 'rpc.methods'")
            self.metrics.inc("ofnode_rpc_calls_total", method=name)
            kwargs = dict(params)
            if "progress" in kwargs:
                raise RpcError(rpc.INVALID_PARAMS, "'progress' is not a parameter")
            _check_params(reg.fn, kwargs)
            if reg.wants_progress:
                async def progress(p: dict[str, Any]) -> None:
                    await send(rpc.notification("progress", {"id": id_, **p}))
                kwargs["progress"] = progress
            try:
                with trio.fail_after(reg.timeout):
                    result = await reg.fn(**kwargs)
            except trio.TooSlowError:
                raise RpcError(rpc.TIMEOUT, f"{name} timed out after {reg.timeout:g} s") from None
            return None if "id" not in req else rpc.response(id_, result)
        except RpcError as e:
            self.metrics.inc("ofnode_rpc_errors_total", code=str(e.code))
            return None if isinstance(req, dict) and "id" not in req and e.code != rpc.INVALID_REQUEST else rpc.error_response(id_, e)
        except (ValueError, TypeError) as e:
            log.debug("rpc invalid params", extra={"error": str(e)[:200]})
            self.metrics.inc("ofnode_rpc_errors_total", code=str(rpc.INVALID_PARAMS))
            return rpc.error_response(id_, RpcError(rpc.INVALID_PARAMS, f"invalid params: {e}"))
        except Exception as e:
            log.exception("rpc method failed", extra={"method": str(req.get("method"))[:80] if isinstance(req, dict) else ""})
            self.metrics.inc("ofnode_rpc_errors_total", code=str(rpc.INTERNAL_ERROR))
            return rpc.error_response(id_, RpcError(rpc.INTERNAL_ERROR, f"internal error: {type(e).__name__}"))


def _check_params(fn: Method, kwargs: dict[str, Any]) -> None:
    """Reject unknown or missing parameters before calling, with their names."""
    sig = inspect.signature(fn)
    accepted = {n for n, p in sig.parameters.items() if n != "progress" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    unknown = set(kwargs) - accepted
    if unknown:
        raise RpcError(rpc.INVALID_PARAMS, f"unknown parameter(s): {', '.join(sorted(unknown))}")
    missing = [n for n, p in sig.parameters.items() if n in accepted and p.default is p.empty and n not in kwargs]
    if missing:
        raise RpcError(rpc.INVALID_PARAMS, f"missing parameter(s): {', '.join(missing)}")


async def _send_quietly(stream: trio.SocketStream, data: bytes) -> None:
    try:
        await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


def _claim_socket_path(path: Path) -> None:
    """Remove a stale socket left by a crash, but never one a live node serves."""
    if not path.exists() and not path.is_symlink():
        return
    probe = stdsocket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError as e:
        if e.errno in (errno.ECONNREFUSED, errno.ENOENT, errno.ENOTSOCK):
            path.unlink(missing_ok=True)
            return
        raise
    finally:
        probe.close()
    raise RuntimeError(f"{path}: another ofnode is serving this socket")
