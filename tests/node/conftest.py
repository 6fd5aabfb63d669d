"""Fixtures that run real ofnode daemons on loopback."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from node import testnet


def start_daemon(data_dir: str | Path) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """Start `ofnode start` on an existing data dir; return the process and its ready info."""
    r, w = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-m", "node.cli.main", "start", "--data-dir", str(data_dir), "--ready-fd", str(w)],
        pass_fds=(w,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True,
    )
    os.close(w)
    with os.fdopen(r, "rb") as f:
        raw = f.read()
    if not raw:
        proc.wait(timeout=10)
        raise RuntimeError(f"daemon failed to start: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
    return proc, json.loads(raw)


@pytest.fixture(scope="module")
def net5(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    d = tmp_path_factory.mktemp("net5")
    state = testnet.up(d, nodes=5, dos=2, secrets=3, providers=2, timeout=60)
    state["dir"] = d
    try:
        yield state
    finally:
        if (d / testnet.STATE_FILE).exists():
            testnet.down(d)
