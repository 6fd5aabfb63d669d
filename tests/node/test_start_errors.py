"""Damaged state in the data dir stops `ofnode start` with one line naming the
file and exit status 2 (which the systemd unit does not retry; docs/systemd.md),
not a traceback and exit 1 (which it would retry in a loop)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from node.genesis import Genesis, Policy


def _init(tmp_path: Path, *extra: str) -> Path:
    g = tmp_path / "genesis.toml"
    Genesis("errs", "x", (), 1, (), 1, Policy()).save(g)
    d = tmp_path / "data"
    r = subprocess.run([sys.executable, "-m", "node.cli.main", "init", "--data-dir", str(d), "--genesis", str(g),
                        "--listen", "/ip4/127.0.0.1/tcp/0", *extra], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return d


def _start(d: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "node.cli.main", "start", "--data-dir", str(d)],
                          capture_output=True, text=True, timeout=120)


def _damage_pins(d: Path) -> str:
    (d / "store").mkdir(parents=True, exist_ok=True)
    (d / "store" / "pins.json").write_text('{"version": 9, "recursive": []}')
    return "pins.json is unreadable"


def _damage_secrets(d: Path) -> str:
    (d / "secrets" / "shares").mkdir(parents=True)
    (d / "secrets").chmod(0o700)
    (d / "secrets" / "shares" / ("0" * 32 + ".json")).write_text("{}")
    return "secrets"


def _missing_collateral(d: Path) -> str:
    with open(d / "config.toml", "a") as f:
        f.write('\n[dos]\ncollateral_file = "/nonexistent/collateral.json"\n')
    return "/nonexistent/collateral.json"


@pytest.mark.parametrize("roles, damage", [
    ((), _damage_pins),
    (("--role", "secrets"), _damage_secrets),
    (("--role", "dos"), _missing_collateral),
])
def test_damaged_state_is_one_line_and_exit_2(tmp_path, roles, damage) -> None:
    d = _init(tmp_path, *roles)
    needle = damage(d)
    r = _start(d)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("ofnode: cannot start: ") and needle in last, last
