"""The figure of the adversarial suite: attacks stopped / tried.

An attack test is marked ``@pytest.mark.attack("what is tried")``; it counts
as tried when it ran, as stopped when it passed (every assertion that the
attack was stopped, the honest job done or refused with a reason, and nothing
leaked held). The line is printed at the end of the run and, with
``OFNODE_ATTACKS_REPORT=path``, written there as JSON (bench/attacks.py).
"""
from __future__ import annotations

import json
import os

import pytest

_results: dict[str, dict] = {}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "attack(name): an adversarial scenario counted in 'attacks stopped / tried'")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    mark = item.get_closest_marker("attack")
    if mark is None or report.skipped:
        return
    name = mark.args[0]
    if report.when == "call" or (report.when == "setup" and report.failed):
        r = _results.setdefault(name, {"test": item.nodeid, "stopped": True, "seconds": 0.0})
        r["stopped"] = r["stopped"] and report.passed
        r["seconds"] = round(r["seconds"] + report.duration, 2)
    elif report.when == "teardown" and report.failed and name in _results:
        _results[name]["stopped"] = False


def pytest_terminal_summary(terminalreporter) -> None:
    if not _results:
        return
    stopped = sum(r["stopped"] for r in _results.values())
    tr = terminalreporter
    tr.write_sep("=", "adversarial suite")
    for name, r in _results.items():
        tr.write_line(f"{'STOPPED' if r['stopped'] else 'NOT STOPPED':12} {name}  ({r['seconds']:.1f} s)")
    tr.write_line(f"attacks stopped / tried: {stopped}/{len(_results)}")
    path = os.environ.get("OFNODE_ATTACKS_REPORT")
    if path:
        with open(path, "w") as f:
            json.dump({"stopped": stopped, "tried": len(_results), "attacks": _results}, f, indent=2)
