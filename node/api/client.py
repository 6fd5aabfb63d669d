"""Blocking JSON-RPC client for the CLI and tests: standard library only, so
`ofnode status` starts in tens of milliseconds (importing libp2p takes ~1 s)."""
from __future__ import annotations

import itertools
import json
import os
import socket
from pathlib import Path
from typing import Any, Callable

from .jsonrpc import RpcError, request


class ApiUnavailable(Exception):
    """No node answers on the socket."""


class ApiClient:
    def __init__(self, path: str | os.PathLike[str], timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._sock: socket.socket | None = None
        self._buf = b""

    def __enter__(self) -> "ApiClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._sock:
            self._sock.close()
            self._sock = None

    def _connect(self) -> socket.socket:
        if self._sock is None:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(self.timeout)
            try:
                s.connect(str(self.path))
            except (FileNotFoundError, ConnectionRefusedError) as e:
                s.close()
                raise ApiUnavailable(f"no ofnode running at {self.path} ({e.strerror}); start one with `ofnode start`") from None
            except PermissionError:
                s.close()
                raise ApiUnavailable(f"{self.path}: permission denied (the socket is 0600: run as the node's user)") from None
            self._sock = s
        return self._sock

    def call(self, method: str, params: dict[str, Any] | None = None,
             on_progress: Callable[[dict[str, Any]], None] | None = None, timeout: float | None = None) -> Any:
        """Call ``method`` and return its result; progress notifications go to ``on_progress``."""
        sock = self._connect()
        if timeout is not None:
            sock.settimeout(timeout)
        id_ = next(self._ids)
        try:
            sock.sendall(request(id_, method, params))
            while True:
                msg = self._read_line(sock)
                if isinstance(msg, dict) and msg.get("method") == "progress" and "id" not in msg:
                    if on_progress is not None:
                        on_progress(msg.get("params") or {})
                    continue
                if isinstance(msg, dict) and msg.get("id") == id_:
                    if "error" in msg:
                        e = msg["error"]
                        raise RpcError(e.get("code", 0), e.get("message", "error"), e.get("data"))
                    return msg.get("result")
        except socket.timeout:
            self.close()
            raise ApiUnavailable(f"{method}: no answer from {self.path} within {sock.gettimeout():g} s") from None
        except (BrokenPipeError, ConnectionResetError):
            self.close()
            raise ApiUnavailable(f"{method}: the node at {self.path} closed the connection") from None

    def _read_line(self, sock: socket.socket) -> Any:
        while b"\n" not in self._buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionResetError
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)


def call(path: str | os.PathLike[str], method: str, params: dict[str, Any] | None = None, timeout: float = 30.0) -> Any:
    with ApiClient(path, timeout) as c:
        return c.call(method, params)
