"""The CLI as a user runs it: exit codes, --json, clear errors."""
import json
import os
import subprocess
import sys

CLI = [sys.executable, "-m", "node.cli.main"]


def run(*args, env=None):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env={**os.environ, **(env or {})})


def test_cid_offline(tmp_path):
    f = tmp_path / "hw"
    f.write_bytes(b"hello world")
    r = run("cid", str(f))
    assert r.returncode == 0
    assert r.stdout.strip() == "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"
    r = run("cid", str(f), "--json")
    assert json.loads(r.stdout)["size"] == 11
    r = run("cid", str(tmp_path / "missing"))
    assert r.returncode == 2 and "No such file" in r.stderr


def test_no_node_is_a_clear_error(tmp_path):
    r = run("--socket", str(tmp_path / "none.sock"), "status")
    assert r.returncode == 3
    assert "no ofnode running" in r.stderr


def test_socket_from_env(tmp_path):
    r = run("status", env={"OFNODE_SOCKET": str(tmp_path / "env.sock")})
    assert r.returncode == 3 and "env.sock" in r.stderr


def test_init_then_id_is_stable(tmp_path):
    r = run("init", "--data-dir", str(tmp_path / "d"), "--role", "provider", "--json")
    assert r.returncode == 0, r.stderr
    pid = json.loads(r.stdout)["peer_id"]
    assert run("id", "--data-dir", str(tmp_path / "d")).stdout.strip() == pid
    again = run("init", "--data-dir", str(tmp_path / "d"))
    assert again.returncode == 2 and "--force" in again.stderr
    assert run("init", "--data-dir", str(tmp_path / "e"), "--role", "miner").returncode == 2


def test_start_without_genesis_says_so(tmp_path):
    run("init", "--data-dir", str(tmp_path / "d"))
    r = run("start", "--data-dir", str(tmp_path / "d"))
    assert r.returncode == 2 and "genesis" in r.stderr


def test_bad_config_names_the_key(tmp_path):
    d = tmp_path / "d"
    run("init", "--data-dir", str(d))
    (d / "config.toml").write_text("[gossip]\npeer_rate = 0\n")
    r = run("start", "--data-dir", str(d))
    assert r.returncode == 2 and "gossip.peer_rate" in r.stderr


def test_help_lists_commands():
    r = run("--help")
    for cmd in ("start", "status", "peers", "stop", "testnet", "cid"):
        assert cmd in r.stdout
