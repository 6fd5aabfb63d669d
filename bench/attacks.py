"""The adversarial suite's figure: attacks stopped / tried (target: all).

Runs ``tests/adversarial`` (one 9-node sim testnet, every attack mounted for
real; docs/adversarial.md) and prints each attack with its outcome, then the
figure. Exit status 0 only when every attack tried was stopped.

Run: .venv/bin/python bench/attacks.py [extra pytest args]
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.results import figure  # noqa: E402


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="ofnode-attacks-") as tmp:
        report = Path(tmp) / "attacks.json"
        t0 = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "tests/adversarial", "-q", "-p", "no:cacheprovider", *argv],
            cwd=ROOT, env={**os.environ, "OFNODE_ATTACKS_REPORT": str(report)}, capture_output=True, text=True)
        seconds = time.monotonic() - t0
        if not report.exists():
            print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
            print("attacks stopped / tried: no result (the suite did not run)")
            return 1
        res = json.loads(report.read_text())
    for name, r in res["attacks"].items():
        print(f"{'stopped' if r['stopped'] else 'NOT STOPPED':12} {r['seconds']:6.1f} s  {name}")
    tail = [line for line in proc.stdout.splitlines() if " passed" in line or " failed" in line][-1:]
    print(f"suite: {tail[0] if tail else proc.returncode} ({seconds:.0f} s wall)")
    print(f"attacks stopped / tried: {res['stopped']}/{res['tried']}")
    figure("attacks_stopped", res["stopped"], "attacks", label=f"attacks stopped (of {res['tried']} tried)",
           target=res["tried"], better="higher")
    return 0 if res["stopped"] == res["tried"] and proc.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
