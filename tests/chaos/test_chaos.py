"""Chaos on an 8-node testnet (3 DOS quorum 2, 4 secrets threshold 2, 3
providers): SIGKILL and restart random role holders during a stream of digit
jobs; every job ends right or with a reason, and nothing stored is lost.

Seeded: the seed is printed (run with ``-s`` to see the log); reproduce with
``OFNODE_CHAOS_SEED=<seed>``. Size with ``OFNODE_CHAOS_JOBS`` (default 20).
The longer run is ``bench/chaos.py --minutes N``."""
from __future__ import annotations

import os

import pytest

from .engine import Chaos, seed_from_env

pytestmark = pytest.mark.slow


def test_jobs_survive_random_kills_and_nothing_stored_is_lost(tmp_path):
    seed = seed_from_env()
    print(f"\nchaos seed {seed} (reproduce: OFNODE_CHAOS_SEED={seed})")
    with Chaos(tmp_path / "tn", seed, nodes=8, dos=3, dos_quorum=2, secrets=4, secrets_threshold=2, providers=3,
               jobs=int(os.environ.get("OFNODE_CHAOS_JOBS", "20")), concurrency=3) as chaos:
        rep = chaos.run()
    for line in rep.lines():
        print(line)
    s = rep.summary()
    where = f"(seed {seed}; reproduce with OFNODE_CHAOS_SEED={seed})"
    assert s["kills"] >= 3, f"only {s['kills']} kills happened {where}"
    assert s["lost"] == 0, f"jobs lost: {[(j.index, j.reason) for j in rep.jobs if j.outcome not in ('done', 'failed')]} {where}"
    assert not rep.violations, f"{rep.violations} {where}"
    assert s["done_right"] + s["failed_with_reason"] == s["submitted"]
    # Within the fault tolerance the network keeps working: most jobs finish right.
    assert s["done_right"] >= s["submitted"] // 2, f"{s} {where}"
    assert rep.checks["job_after"] == "done right", rep.checks
