"""JSON-RPC 2.0 framing shared by the daemon's server and the CLI's client.

One JSON value per line (newline-delimited) over a Unix stream socket: trivial
to speak from any language (`socat`, `nc -U`), and a line limit bounds memory.
Standard library only: the CLI imports this and must start fast.
"""
from __future__ import annotations

import json
from typing import Any

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
# Application errors (-32000..-32099 are reserved for implementation errors).
NODE_ERROR = -32000
NOT_READY = -32001
TIMEOUT = -32002


class RpcError(Exception):
    """An error to send back as a JSON-RPC error object."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code, self.message, self.data = code, message, data

    def to_obj(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            err["data"] = self.data
        return err


def response(id_: Any, result: Any) -> bytes:
    return _line({"jsonrpc": "2.0", "id": id_, "result": result})


def error_response(id_: Any, err: RpcError) -> bytes:
    return _line({"jsonrpc": "2.0", "id": id_, "error": err.to_obj()})


def notification(method: str, params: Any) -> bytes:
    return _line({"jsonrpc": "2.0", "method": method, "params": params})


def request(id_: Any, method: str, params: Any = None) -> bytes:
    obj: dict[str, Any] = {"jsonrpc": "2.0", "id": id_, "method": method}
    if params is not None:
        obj["params"] = params
    return _line(obj)


def _line(obj: Any) -> bytes:
    try:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
    except UnicodeEncodeError:
        # A lone surrogate (JSON allows "\ud800"; a request id or parameter name
        # can carry one back) has no UTF-8 form: escape it as JSON does.
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode() + b"\n"
