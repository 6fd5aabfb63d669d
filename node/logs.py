"""Structured logging: one line per event, JSON or text, level from config or
OFNODE_LOG_LEVEL.

py-libp2p's loggers do not propagate and some of them warn on routine events
(the DHT warns on every served request); their records are routed here and
demoted so they neither spill raw onto stderr nor drown the node's own lines.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_STD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}

# libp2p messages that describe normal operation despite their level.
_LIBP2P_ROUTINE = (
    "Failed to read DHT message from stream",
    "Timed out waiting for window update",
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for k, v in record.__dict__.items():
            if k not in _STD and not k.startswith("_"):
                out[k] = v if isinstance(v, (str, int, float, bool, type(None))) else str(v)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(
            f"{k}={v}" for k, v in record.__dict__.items() if k not in _STD and not k.startswith("_")
        )
        base = f"{self.formatTime(record, '%H:%M:%S')} {record.levelname[:4]} {record.name}: {record.getMessage()}"
        text = f"{base} {extras}" if extras else base
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class _Libp2pGate(logging.Filter):
    """Demote libp2p's routine warnings to debug, then apply the node's level."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("libp2p"):
            return True
        if record.levelno >= logging.WARNING and any(s in record.getMessage() for s in _LIBP2P_ROUTINE):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger("ofnode").isEnabledFor(record.levelno)


def setup_logging(level: str = "info", fmt: str = "json", file: str = "") -> None:
    handler: logging.Handler = logging.FileHandler(file) if file else logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_Libp2pGate())
    ours = logging.getLogger("ofnode")
    ours.handlers[:] = [handler]
    ours.setLevel(level.upper())
    ours.propagate = False
    lib = logging.getLogger("libp2p")
    lib.handlers[:] = [handler]
    lib.propagate = False
    # At info and above only libp2p's warnings are worth a line.
    lib.setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
