"""Tests that need an outside part (bubblewrap, node/npm, dockerd, the shared
DCAP sample) call ``require_part``: on a developer machine a missing part
skips the test with the reason; under CI=true it fails, because CI must run
every test."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("OFNODE_SHARED", REPO.parent / "shared"))


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def require_part(name: str, available: bool, hint: str = "") -> None:
    if available:
        return
    msg = f"{name} is not available" + (f" ({hint})" if hint else "")
    if in_ci():
        pytest.fail(f"{msg}: under CI=true a missing part is a failure", pytrace=False)
    pytest.skip(msg)
