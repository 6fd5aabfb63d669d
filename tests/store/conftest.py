"""Fixtures for the store tests, chiefly the js reference importer.

``unixfs_ref`` makes sure tests/helpers/unixfs_ref has its node_modules
(running ``npm ci`` there once, under a file lock so parallel pytest
processes do not install over each other) and returns a callable that runs
``cid.mjs`` on files. Without node or npm the reference tests are skipped on
a developer machine but FAIL under ``CI=true``: CI must never pass a
compatibility check it did not run.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

HELPER_DIR = Path(__file__).resolve().parents[1] / "helpers" / "unixfs_ref"
# npm writes this hidden lockfile last, so its presence means a finished install.
INSTALLED_MARKER = HELPER_DIR / "node_modules" / ".package-lock.json"

RefCids = Callable[..., list]


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"UnixFS reference check cannot run under CI: {reason}", pytrace=False)
    pytest.skip(reason)


def _install_is_current() -> bool:
    lock = HELPER_DIR / "package-lock.json"
    return INSTALLED_MARKER.is_file() and INSTALLED_MARKER.stat().st_mtime >= lock.stat().st_mtime


def _ensure_node_modules(npm: str) -> None:
    if _install_is_current():
        return
    tag = hashlib.sha256(str(HELPER_DIR).encode()).hexdigest()[:16]
    lock_path = Path(tempfile.gettempdir()) / f"ofnode-unixfs-ref-{tag}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _install_is_current():  # another process installed while we waited
            return
        proc = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=HELPER_DIR, capture_output=True, text=True, timeout=600,
        )
        if proc.returncode != 0:
            _unavailable(f"npm ci failed in {HELPER_DIR}:\n{proc.stdout}\n{proc.stderr}")


@pytest.fixture(scope="session")
def unixfs_ref() -> RefCids:
    """``unixfs_ref(paths, json=False, chunk_size=None, max_children=None)``.

    Returns one root CID string per path, or with ``json=True`` one dict
    ``{"root": cid, "blocks": {cid: size}}`` per path.
    """
    node = shutil.which("node")
    npm = shutil.which("npm")
    if node is None or npm is None:
        _unavailable("node and npm are needed for the UnixFS reference importer")
    _ensure_node_modules(npm)  # type: ignore[arg-type]

    def run(paths: Sequence[Path], json_out: bool = False, chunk_size: int | None = None,
            max_children: int | None = None) -> list:
        args = [node, str(HELPER_DIR / "cid.mjs")]
        if json_out:
            args.append("--json")
        if chunk_size is not None:
            args.append(f"--chunk-size={chunk_size}")
        if max_children is not None:
            args.append(f"--max-children={max_children}")
        args += [str(p) for p in paths]
        proc = subprocess.run(args, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"cid.mjs failed: {proc.stderr}"
        lines = proc.stdout.splitlines()
        assert len(lines) == len(paths), proc.stdout
        return [json.loads(line) for line in lines] if json_out else lines

    return run
