"""The store and AI publishing through a real daemon's API."""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import pytest

from enclave import ai_object
from enclave.package import PackageError, decrypt_stream
from node import testnet
from node.api.client import ApiClient, call
from node.api.jsonrpc import RpcError
from node.store.ai_publish import load_ai_key
from node.store.blockstore import Blockstore
from node.store.unixfs import iter_file_blocks

from .conftest import start_daemon

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DIGITS = os.path.join(REPO, "examples", "digits")


@pytest.fixture(scope="module")
def node1(tmp_path_factory):
    d = tmp_path_factory.mktemp("store1")
    state = testnet.up(d, nodes=1, dos=1, secrets=1, providers=1, timeout=60)
    yield state["nodes"][0]
    testnet.down(d)


def test_add_get_roundtrip_with_progress(node1, tmp_path):
    f = tmp_path / "data.bin"
    f.write_bytes(os.urandom(5 * 262144 + 7))
    seen = []
    with ApiClient(node1["socket"]) as c:
        r = c.call("store.add", {"path": str(f)}, on_progress=seen.append)
        out = tmp_path / "out.bin"
        g = c.call("store.get", {"cid": r["cid"], "out": str(out)})
    assert out.read_bytes() == f.read_bytes() and g["size"] == f.stat().st_size
    assert r["cid"] == subprocess.run([sys.executable, "-m", "node.cli.main", "cid", str(f)],
                                      capture_output=True, text=True).stdout.strip()
    ls = call(node1["socket"], "store.ls")
    assert r["cid"] in ls["pins"]
    assert call(node1["socket"], "store.verify")["clean"]


def test_bad_params_are_named(node1, tmp_path):
    with pytest.raises(RpcError, match="cid"):
        call(node1["socket"], "store.get", {"cid": "nonsense", "out": str(tmp_path / "x")})
    with pytest.raises(RpcError, match="absolute"):
        call(node1["socket"], "store.add", {"path": "relative.bin"})
    with pytest.raises(RpcError, match="could not fetch"):  # a lone node: nobody to fetch from
        call(node1["socket"], "store.get",
             {"cid": "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e", "out": str(tmp_path / "x")})
    (tmp_path / "ai").mkdir()
    (tmp_path / "ai" / "ai.toml").write_text('name = "x"\nversion = "1"\nruntime = "cobol"\n')
    with pytest.raises(RpcError, match="ai.toml"):
        call(node1["socket"], "ai.publish", {"dir": str(tmp_path / "ai")})


def test_publish_twice_same_plaintext_and_inspect(node1):
    a = call(node1["socket"], "ai.publish", {"dir": DIGITS})
    b = call(node1["socket"], "ai.publish", {"dir": DIGITS})
    assert a["plaintext_sha256"] == b["plaintext_sha256"]
    assert a["cid"] != b["cid"]  # fresh key each time
    info = call(node1["socket"], "ai.inspect", {"cid": a["cid"]})
    assert (info["name"], info["runtime"], info["entry"]) == ("digits", "onnx", "model.onnx")
    assert "model.onnx" in info["files"]
    key_file = os.path.join(node1["data_dir"], "ai-keys", f"{a['cid']}.json")
    assert os.stat(key_file).st_mode & 0o777 == 0o600


def test_published_ciphertext_decrypts_and_a_flipped_byte_fails(node1, tmp_path):
    from pathlib import Path


    a = call(node1["socket"], "ai.publish", {"dir": DIGITS})
    out = tmp_path / "obj"
    call(node1["socket"], "store.get", {"cid": a["cid"], "out": str(out)})
    key = load_ai_key(Path(node1["data_dir"]), a["cid"])
    manifest, enc = ai_object.split([out.read_bytes()])
    assert manifest == (Path(DIGITS) / "ai.toml").read_bytes()
    blob = b"".join(enc)
    assert b"".join(decrypt_stream(blob, key, expected_sha256=a["plaintext_sha256"]))
    bad = bytearray(blob)
    bad[len(bad) // 2] ^= 0x01
    with pytest.raises(PackageError, match="authentication failed"):
        b"".join(decrypt_stream(bytes(bad), key))


def test_sigkill_mid_add_leaves_a_clean_store(tmp_path):
    d = tmp_path / "tn"
    state = testnet.up(d, nodes=1, dos=1, secrets=1, providers=1, timeout=60)
    n = state["nodes"][0]
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        for _ in range(128):
            f.write(os.urandom(1 << 20))
    try:
        with ApiClient(n["socket"]) as c:
            sock = c._connect()
            sock.sendall(b'{"jsonrpc":"2.0","id":1,"method":"store.add","params":{"path":"%s"}}\n' % str(big).encode())
            # The first progress notification means blocks are being written: kill then.
            first = json.loads(sock.makefile("rb").readline())
            assert first.get("method") == "progress", f"add finished before it could be interrupted: {first}"
            os.kill(n["pid"], signal.SIGKILL)
        fd = os.pidfd_open(n["pid"]) if os.path.exists(f"/proc/{n['pid']}") else None
        if fd is not None:
            select.select([fd], [], [], 10)
        store = Blockstore(os.path.join(n["data_dir"], "store"))
        report = store.verify()
        assert not report.corrupt and not report.stray
        proc, info = start_daemon(n["data_dir"])
        n["pid"] = proc.pid
        r = call(n["socket"], "store.add", {"path": str(big)}, timeout=120)
        assert call(n["socket"], "store.verify")["clean"]
        assert b"".join(iter_file_blocks(r["cid"], Blockstore(os.path.join(n["data_dir"], "store")).get)) == big.read_bytes()
    finally:
        (d / testnet.STATE_FILE).write_text(json.dumps(state))
        testnet.down(d)


def test_get_fetches_from_another_node(tmp_path):
    """`store get` on a node that lacks the file fetches it over Bitswap, byte-identical."""
    d = tmp_path / "tn"
    state = testnet.up(d, nodes=2, dos=1, secrets=1, providers=1, timeout=60)
    try:
        a, b = state["nodes"]
        f = tmp_path / "f.bin"
        f.write_bytes(os.urandom(3 << 20))
        cid = call(a["socket"], "store.add", {"path": str(f)})["cid"]
        seen = []
        with ApiClient(b["socket"], timeout=120) as c:
            r = c.call("store.get", {"cid": cid, "out": str(tmp_path / "g.bin")}, on_progress=seen.append)
        assert (tmp_path / "g.bin").read_bytes() == f.read_bytes() and r["size"] == f.stat().st_size
        assert any(p.get("stage") == "fetched" for p in seen)
    finally:
        testnet.down(d)
