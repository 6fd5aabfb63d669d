"""The provider's relay capture (``provider.relay_capture``) of one job's consumer stream."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


def relay_capture(data_dir: str | Path, request_id: str, timeout: float = 10.0) -> dict[str, Any]:
    """The capture of ``request_id``'s stream, once written.

    The provider writes it when the relayed stream closes, which can be just
    after the consumer already has its answer: wait for it (bounded)."""
    path = Path(data_dir, "relay-capture.json")
    end = time.monotonic() + timeout
    while True:
        try:
            doc = json.loads(path.read_text())
            if doc.get("request_id") == request_id:
                return doc
        except (FileNotFoundError, ValueError):  # not written yet / being replaced
            doc = None
        if time.monotonic() >= end:
            raise AssertionError(f"no relay capture for {request_id} in {path} after {timeout:g} s (last: "
                                 f"{doc.get('request_id') if doc else None})")
        time.sleep(0.05)
