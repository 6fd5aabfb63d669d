"""The chaos plan comes from the seed alone and stays within the fault tolerance
(no daemons: runs in the ordinary test pass)."""
from __future__ import annotations

from pathlib import Path

from node.testnet import Layout

from .engine import Chaos


def _chaos(seed: int) -> Chaos:
    c = Chaos(Path("/nonexistent"), seed, nodes=8, dos=3, dos_quorum=2, secrets=4, secrets_threshold=2, providers=3)
    layout = Layout(8, 3, 4, 3)
    c.state = {"nodes": [{"roles": layout.roles(i)} for i in range(8)]}
    return c


def _plan(c: Chaos, n: int) -> list[tuple[float, int, float]]:
    it = c._kill_plan()
    return [next(it) for _ in range(n)]


def test_same_seed_same_kills_and_jobs_other_seed_other_plan() -> None:
    a, b = _plan(_chaos(42), 30), _plan(_chaos(42), 30)
    assert a == b
    assert _plan(_chaos(43), 30) != a
    ja, jb = _chaos(42)._job_plan(), _chaos(42)._job_plan()
    assert [next(ja)[1:] for _ in range(20)] == [next(jb)[1:] for _ in range(20)]


def test_planned_kills_stay_within_the_fault_tolerance() -> None:
    c = _chaos(7)
    plan = _plan(c, 200)
    victims = {v for _, v, _ in plan}
    assert victims == set(range(8))  # every role holder gets killed some time
    for t, victim, down in plan:
        dead = {v for t2, v, d2 in plan if t2 <= t < t2 + d2 + c.restart_budget}
        assert victim in dead and c._ok_dead(dead), (t, victim, dead)
        assert sum("dos" in c.roles(i) for i in dead) <= 1
        assert sum("secrets" in c.roles(i) for i in dead) <= 2
        assert sum("provider" in c.roles(i) for i in dead) <= 2
