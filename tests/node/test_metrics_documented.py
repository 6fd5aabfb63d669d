"""Every metric the node declares is explained in docs/metrics.md, and every
metric the code updates is declared (an undeclared name raises KeyError at the
moment it is first counted, typically on a rare error path)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "metrics.md"
SOURCES = sorted((ROOT / "node").rglob("*.py")) + sorted((ROOT / "enclave").rglob("*.py"))
UPDATES = ("inc", "set", "get", "by_label")


def _calls(attr_names: tuple[str, ...]) -> dict[str, list[str]]:
    """Metric names (first literal argument) of calls `<x>.<attr>("ofnode_…", …)`, with where they are."""
    found: dict[str, list[str]] = {}
    for path in SOURCES:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in attr_names
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
                and node.args[0].value.startswith("ofnode_")
            ):
                found.setdefault(node.args[0].value, []).append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def declared() -> dict[str, list[str]]:
    return _calls(("declare",))


def test_declarations_are_found() -> None:
    names = declared()
    # The node's own families and those of the optional parts must all be seen.
    for must in ("ofnode_peers", "ofnode_gossip_rejected_total", "ofnode_bitswap_bans_total",
                 "ofnode_provider_jobs_total"):
        assert must in names


def test_every_declared_metric_is_documented() -> None:
    doc = DOC.read_text()
    documented = set(re.findall(r"`(ofnode_[a-z0-9_]+)`", doc))
    missing = {n: where for n, where in declared().items() if n not in documented}
    assert not missing, f"metrics missing from docs/metrics.md: {missing}"


def test_docs_name_no_metric_that_does_not_exist() -> None:
    documented = set(re.findall(r"`(ofnode_[a-z0-9_]+)`", DOC.read_text()))
    stale = documented - set(declared())
    assert not stale, f"docs/metrics.md names metrics the code does not declare: {sorted(stale)}"


def test_every_updated_metric_is_declared() -> None:
    names = declared()
    undeclared = {n: where for n, where in _calls(UPDATES).items() if n not in names}
    assert not undeclared, f"metrics updated but never declared: {undeclared}"


def test_declared_kinds_are_prometheus_kinds() -> None:
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "declare"
                    and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)):
                assert node.args[1].value in ("counter", "gauge"), f"{path}:{node.lineno}"
                name = node.args[0].value
                if node.args[1].value == "counter":
                    assert name.endswith("_total"), f"counter {name} should end in _total ({path}:{node.lineno})"


def test_rendered_families_of_a_node_are_documented() -> None:
    """The registry as a node builds it (core families plus Bitswap's)."""
    from node.metrics import node_metrics
    from node.store.exchange import declare_metrics

    m = node_metrics()
    declare_metrics(m)
    doc = DOC.read_text()
    for line in m.render().splitlines():
        if line.startswith("# TYPE "):
            name = line.split()[2]
            assert f"`{name}`" in doc, name


def test_every_declared_metric_is_updated_somewhere() -> None:
    """A declared metric nothing increments or sets would sit at 0 forever and mislead."""
    updated = _calls(("inc", "set"))
    never = {n: where for n, where in declared().items() if n not in updated}
    assert not never, f"metrics declared but never updated: {never}"
