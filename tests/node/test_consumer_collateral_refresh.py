"""A node without the DOS role still keeps its DCAP collateral fresh when it has a PCCS: a consumer
on an SGX network checks the enclave's quote itself (docs/attestation.md), and should not pay a
PCCS round trip inside a job. A real daemon, a PCCS on 127.0.0.1 serving Intel's real collateral,
whose cached copy (imported at start) is past its nextUpdate."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from node.genesis import Genesis, Policy
from tests.dos.test_collateral import FakePccs
from tests.node.conftest import start_daemon
from tests.parts import SHARED, require_part

SAMPLE = SHARED / "data" / "dcap" / "sgx_quote_collateral.json"


def test_a_consumer_node_refreshes_expired_collateral_in_the_background(tmp_path: Path) -> None:
    require_part("the real DCAP sample", SAMPLE.exists(), f"looked in {SAMPLE}")
    pccs = FakePccs(json.loads(SAMPLE.read_text()))
    try:
        g = tmp_path / "genesis.toml"
        Genesis("sgx-net", "x", (), 1, (), 1, Policy()).save(g)
        d = tmp_path / "data"
        r = subprocess.run([sys.executable, "-m", "node.cli.main", "init", "--data-dir", str(d), "--genesis", str(g),
                            "--listen", "/ip4/127.0.0.1/tcp/0"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        with open(d / "config.toml", "a") as f:
            f.write(f'\n[dos]\npccs_url = "{pccs.url}"\ncollateral_file = "{SAMPLE}"\n')
        proc, _ = start_daemon(d)
        try:
            end = time.monotonic() + 30
            while not any("/tcb?" in h for h in pccs.hits) and time.monotonic() < end:
                time.sleep(0.1)
            assert any("/tcb?fmspc=00A067110000" in h for h in pccs.hits), pccs.hits
        finally:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
    finally:
        pccs.close()
