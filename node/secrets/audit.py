"""The Secret Store's append-only audit log: one JSON object per line, fsynced.

Every release and refusal (and every deposit, revocation and refused deposit)
is written, with the reason, *before* the answer leaves the node, so a share
never goes out unrecorded. Shares and keys are never written: a record holds
only identifiers (request, AI, consumer, enclave key hash, measurement, share
index and version, the requesting peer) and the decision.

File: ``<data dir>/secrets/audit.log``, mode 0600, opened O_APPEND; each line
is written with one ``write`` and followed by ``fsync``.
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Iterator

__all__ = ["AuditLog", "FORBIDDEN_FIELDS"]

#: Field names an audit record must never carry.
FORBIDDEN_FIELDS = frozenset({"share", "key", "sealed", "value", "storage_key"})
_MAX_FIELD = 600


class AuditLog:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def append(self, event: str, **fields: Any) -> dict[str, Any]:
        bad = FORBIDDEN_FIELDS & set(fields)
        if bad:
            raise ValueError(f"audit records never carry {sorted(bad)}")
        rec: dict[str, Any] = {"ts": round(time.time(), 3), "event": event}
        for k, v in fields.items():
            if isinstance(v, str) and len(v) > _MAX_FIELD:
                v = v[:_MAX_FIELD] + "..."
            rec[k] = v
        line = (json.dumps(rec, sort_keys=True, ensure_ascii=True) + "\n").encode()
        with self._lock:
            os.write(self._fd, line)
            os.fsync(self._fd)
        return rec

    def records(self) -> Iterator[dict[str, Any]]:
        """Every record so far (a torn last line after a crash is skipped)."""
        try:
            with open(self.path, "rb") as f:
                for line in f:
                    try:
                        yield json.loads(line)
                    except ValueError:
                        continue
        except FileNotFoundError:
            return

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __del__(self) -> None:  # best effort
        try:
            self.close()
        except Exception:
            pass
