"""The adversarial testnet and what the tests use on it.

9 daemons on loopback: node0-2 DOS (quorum 2), node3-5 secrets (threshold 2),
node6 a plain node (the consumer and AI publisher), node7 an honest provider,
node8 a provider. Every daemon loads the test adversary
(tests/adversarial/malicious.py) and stays honest until a test writes an
attack into its ``adversary.json``: node8 (the provider that undercuts),
node2 (a DOS peer) and node6 (the consumer) are the ones the tests turn.
"""
from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from node import testnet
from node.api.client import call
from tests.helpers.python_ai import make_python_ai

REPO = Path(__file__).resolve().parents[2]
ADVERSARY = "tests.adversarial.malicious"
CONSUMER, HONEST, EVIL, EVIL_DOS = 6, 7, 8, 2

ECHO_AI = '''def run(data: bytes) -> bytes:
    return b"RESULT:" + data[::-1]
'''


def make_echo_ai(root: Path) -> Path:
    return make_python_ai(root, "adv-echo", "echo", ECHO_AI)


def up(directory: Path) -> dict[str, Any]:
    """The testnet, every daemon started with the test adversary installed (honest until told)."""
    saved = {k: os.environ.get(k) for k in ("OFNODE_TEST_ADVERSARY", "PYTHONPATH")}
    os.environ["OFNODE_TEST_ADVERSARY"] = ADVERSARY
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), saved["PYTHONPATH"]) if p)
    try:
        state = testnet.up(directory, nodes=9, dos=3, secrets=3, providers=2, dos_quorum=2, secrets_threshold=2,
                           timeout=120)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    state["dir"] = directory
    set_attack(state["nodes"][EVIL], "none")
    return state


def set_attack(node: dict[str, Any], attack: str) -> None:
    undercut = node["name"] == f"node{EVIL}"
    Path(node["data_dir"], "adversary.json").write_text(json.dumps({"attack": attack, "undercut": undercut}))


def adversary_log(node: dict[str, Any]) -> list[dict[str, Any]]:
    p = Path(node["data_dir"], "adversary.jsonl")
    return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []


def log_events(node: dict[str, Any], **match: str) -> list[dict[str, Any]]:
    out = []
    for line in Path(node["data_dir"], "node.log").read_text(errors="replace").splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if all(str(v) in str(ev.get(k, "")) for k, v in match.items()):
            out.append(ev)
    return out


def audit(node: dict[str, Any]) -> list[dict[str, Any]]:
    p = Path(node["data_dir"], "secrets", "audit.log")
    return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []


def alive(net: dict[str, Any]) -> None:
    """Every daemon still answers (no input crashed one)."""
    for n in net["nodes"]:
        assert call(n["socket"], "node.status", {}, timeout=10)["peer_id"] == n["peer_id"], n["name"]


def submit(net: dict[str, Any], cid: str, data: bytes, **kw: Any) -> dict[str, Any]:
    return call(net["nodes"][CONSUMER]["socket"], "job.submit",
                {"ai_cid": cid, "input_b64": base64.b64encode(data).decode(), "deadline_s": 60, **kw}, timeout=90)


def files_under(dirs: Iterable[Path], skip: Iterable[Path] = ()) -> Iterable[Path]:
    skip = [Path(s).resolve() for s in skip]
    for d in dirs:
        for p in Path(d).rglob("*"):
            rp = p.resolve()
            if p.is_file() and not p.is_symlink() and not any(rp == s or s in rp.parents for s in skip):
                yield p


def find_secrets(paths: Iterable[Path], needles: dict[str, bytes]) -> list[str]:
    """Which of ``needles`` (name -> bytes) occur in which file: ``["name in path", ...]``."""
    hits = []
    for p in paths:
        try:
            data = p.read_bytes()
        except OSError:
            continue
        for name, needle in needles.items():
            if needle and needle in data:
                hits.append(f"{name} in {p}")
    return hits


def key_needles(name: str, key: bytes) -> dict[str, bytes]:
    """The key raw, hex (both cases) and base64, as a leak could spell it."""
    return {f"{name} raw": key, f"{name} hex": key.hex().encode(), f"{name} HEX": key.hex().upper().encode(),
            f"{name} b64": base64.b64encode(key).rstrip(b"=")}


def wait_until(pred, timeout: float = 10.0, step: float = 0.1) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return bool(pred())


def down(net: dict[str, Any]) -> None:
    d = net["dir"]
    keep = ("network", "genesis", "created", "dos_quorum", "secrets_threshold", "nodes", "up_seconds", "running")
    (d / testnet.STATE_FILE).write_text(json.dumps({k: v for k, v in net.items() if k in keep}))
    testnet.down(d)
