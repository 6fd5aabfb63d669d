"""Chaos for minutes: random SIGKILL/restart of DOS, secrets and provider peers during a job stream.

The same engine as tests/chaos (tests/chaos/engine.py), run for a time instead
of a job count, then the same checks: every job done right or failed with a
reason, every blockstore clean, shares, ACL entries and job records kept.

Prints: seed, jobs submitted / done right / failed with a reason / lost, kills,
and the figure "jobs lost in chaos (target 0)". Writes bench/results/chaos.json.
Exit status 1 if a job was lost or something stored was lost.

Usage: .venv/bin/python bench/chaos.py [--minutes 3] [--nodes 8] [--seed N] [--concurrency 3]
Reproduce a run: the same --seed (or OFNODE_CHAOS_SEED) gives the same job plan and kill victims.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results import figure, samples  # noqa: E402
from tests.chaos.engine import Chaos, seed_from_env  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--nodes", type=int, default=8)
    ap.add_argument("--providers", type=int, default=3)
    ap.add_argument("--seed", type=int, default=None, help="default: $OFNODE_CHAOS_SEED, else random")
    ap.add_argument("--concurrency", type=int, default=3)
    ap.add_argument("--kill-gap", type=float, nargs=2, default=(3.0, 7.0), metavar=("MIN", "MAX"))
    ap.add_argument("--down", type=float, nargs=2, default=(1.0, 4.0), metavar=("MIN", "MAX"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "chaos.json"))
    a = ap.parse_args()
    seed = a.seed if a.seed is not None else seed_from_env()
    print(f"chaos seed {seed} (reproduce: --seed {seed})", flush=True)
    d = Path(tempfile.mkdtemp(prefix="ofnode-chaos-")) / "tn"
    t = time.monotonic()
    with Chaos(d, seed, nodes=a.nodes, dos=3, dos_quorum=2, secrets=4, secrets_threshold=2, providers=a.providers,
               jobs=None, minutes=a.minutes, concurrency=a.concurrency, kill_gap_s=tuple(a.kill_gap),
               down_s=tuple(a.down), say=lambda s: print(s, flush=True)) as chaos:
        rep = chaos.run()
    print()
    for line in rep.lines():
        print(line)
    s = rep.summary()
    print(f"wall time {time.monotonic() - t:.0f} s")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"summary": s, "checks": rep.checks, "violations": rep.violations,
                               "jobs": [asdict(j) for j in rep.jobs], "kills": [asdict(k) for k in rep.kills],
                               "minutes": a.minutes}, indent=1))
    print(f"wrote {out}")
    figure("chaos_jobs_lost", s["lost"], "jobs", label=f"jobs lost in chaos ({s['submitted']} jobs, {s['kills']} kills, "
           f"{a.minutes:g} min, {a.nodes} nodes)", target=0)
    figure("chaos_violations", s["violations"], "", label="stored items lost (blocks, shares, ACL entries, job records)",
           target=0)
    figure("chaos_done_right", 100 * s["done_right"] / max(1, s["submitted"]), "%",
           label="jobs done right under chaos (the rest failed with a reason)", better="higher")
    samples("chaos_job_s", [j.seconds for j in rep.jobs if j.outcome == "done"], "s",
            label="submit -> result under chaos")
    return 0 if s["lost"] == 0 and not rep.violations else 1


if __name__ == "__main__":
    sys.exit(main())
