"""The secure flow on a real 5-node testnet whose providers run the docker backend:
every enclave is a hardened container on the local dockerd."""
from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from enclave.backends.docker import LABEL, DockerBackend
from node import testnet
from node.api.client import call
from node.api.jsonrpc import RpcError
from tests.helpers.docker_orphan import orphan_container
from tests.helpers.relay import relay_capture
from tests.parts import require_part

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "examples" / "digits"
SAMPLES = sorted((DIGITS / "samples").glob("*.json"))
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def docker() -> DockerBackend:
    b = DockerBackend()
    require_part("dockerd", b.available().ok, b.available().reason)
    return b


@pytest.fixture(scope="module")
def net(tmp_path_factory, docker):
    d = tmp_path_factory.mktemp("docker-flow")
    # a container left running by a node that crashed before this network started
    orphan = orphan_container(d / "crashed-node")
    state = testnet.up(d, nodes=5, dos=2, secrets=3, providers=2, timeout=60, backend="docker")
    state["orphan"] = orphan
    consumer = state["nodes"][0]["socket"]
    state["digits"] = call(consumer, "ai.publish", {"dir": str(DIGITS)}, timeout=60)["cid"]
    try:
        yield state
    finally:
        testnet.down(d)


def submit(socket: str, cid: str, sample: Path, **kw) -> dict:
    return call(socket, "job.submit", {"ai_cid": cid, "input_path": str(sample), "deadline_s": 60, **kw}, timeout=90)


def test_status_shows_the_providers_backend(net):
    provider = next(n for n in net["nodes"] if "provider" in n["roles"])
    st = call(provider["socket"], "node.status")["provider"]
    assert st["backend"] == "docker" and st["tees"] == ["sim"]
    assert st["backends"]["docker"]["ok"] and "no network" in st["backends"]["docker"]["reason"]
    out = subprocess.run([sys.executable, "-m", "node.cli.main", "--socket", provider["socket"], "status"],
                         capture_output=True, text=True, check=True).stdout
    assert "docker backend, working" in out
    other = next(n for n in net["nodes"] if "provider" not in n["roles"])
    assert "provider" not in call(other["socket"], "node.status")


def test_providers_remove_containers_of_crashed_nodes_when_they_start(net, docker):
    assert not [c for c in docker.client().containers(all=True) if c["Id"] == net["orphan"]]


def test_digits_in_docker_give_the_right_label(net, docker):
    for sample in (SAMPLES[0], SAMPLES[7]):
        job = submit(net["nodes"][0]["socket"], net["digits"], sample, backend="docker")
        assert job["state"] == "done", job.get("error")
        assert json.loads(base64.b64decode(job["output_b64"]))["label"] == int(sample.name[0])
        assert job["receipt"]["input_sha256"] == job["input_sha256"]
        provider = next(n for n in net["nodes"] if n["peer_id"] == job["provider"])
        relay = relay_capture(provider["data_dir"], job["id"])
        seen = b"".join(base64.b64decode(c) for c in relay["chunks"])
        assert len(seen) > len(sample.read_bytes()) and sample.read_bytes()[:32] not in seen
    # each enclave's container is removed once its job is over (the provider tears
    # down just after the consumer has its answer: allow it a few seconds)
    pids = {str(n["pid"]) for n in net["nodes"]}
    deadline = time.monotonic() + 15
    while mine := [c["Status"] for c in docker.client().containers(all=True, filters={"label": f"{LABEL}=1"})
                   if c["Labels"].get("ofnode.owner-pid") in pids]:
        assert time.monotonic() < deadline, mine
        time.sleep(0.2)


def test_a_sim_backend_request_fails_fast_with_its_reason(net):
    t0 = time.monotonic()
    with pytest.raises(RpcError, match="no provider offers the sim backend"):
        submit(net["nodes"][0]["socket"], net["digits"], SAMPLES[1], backend="sim", deadline_s=20)
    assert time.monotonic() - t0 < 10
