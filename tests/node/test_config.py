import re

import pytest

from node.config import DEFAULTS_PATH, ConfigError, documented_keys, load_config
from node.genesis import GenesisError, load_genesis, parse_genesis
from node.identity import Identity


def write(tmp_path, text):
    (tmp_path / "config.toml").write_text(text)
    return tmp_path


def test_defaults_load(tmp_path):
    cfg = load_config(tmp_path)
    assert cfg.roles == ()
    assert cfg.socket_path == tmp_path.resolve() / "ofnode.sock"
    assert cfg["gossip"]["max_message_bytes"] == 65536


def test_every_default_key_is_documented():
    lines = DEFAULTS_PATH.read_text().splitlines()
    for key in documented_keys():
        name = key.split(".")[1]
        idx = next(i for i, line in enumerate(lines) if re.match(rf"{name}\s*=", line))
        # A comment may document a group of consecutive keys.
        while idx > 0 and re.match(r"\w+\s*=", lines[idx - 1]):
            idx -= 1
        assert lines[idx - 1].startswith("#"), f"{key} has no comment above it in default.toml"


@pytest.mark.parametrize(
    "text, key",
    [
        ("[node]\nrolez = []\n", "unknown key node.rolez"),
        ("[nodes]\n", "unknown section"),
        ('[gossip]\npeer_rate = "fast"\n', "gossip.peer_rate: expected float"),
        ("[gossip]\npeer_rate = -1\n", "gossip.peer_rate: must be > 0"),
        ('[node]\nroles = ["miner"]\n', "node.roles: unknown role"),
        ('[p2p]\nbootstrap = ["/ip4/1.2.3.4/tcp/1"]\n', "p2p.bootstrap: .* lacks /p2p/"),
        ('[log]\nlevel = "loud"\n', "log.level"),
        ('[metrics]\nlisten = "nohost"\n', "metrics.listen"),
        ("[gossip]\ndegree = 20\n", "gossip.degree"),
        ("[node\n", "not valid TOML"),
    ],
)
def test_bad_config_names_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError, match=key):
        load_config(write(tmp_path, text))


def test_int_accepted_for_float(tmp_path):
    cfg = load_config(write(tmp_path, "[gossip]\nmax_age = 30\n"))
    assert cfg["gossip"]["max_age"] == 30.0


def test_genesis_template_is_valid():
    g = load_genesis(DEFAULTS_PATH.parent / "genesis.template.toml")
    assert g.network_id == "ofnode-example" and not g.policy.allow_debug


def _doc(**over):
    peers = [Identity.generate().peer_id for _ in range(3)]
    doc = {
        "network": {"id": "net-1", "created": "x"},
        "dos": {"peers": peers[:2], "quorum": 2},
        "secrets": {"peers": peers, "threshold": 2},
        "policy": {"mrenclave": [], "mrsigner": ["ab" * 32], "min_isv_svn": 0, "tcb_statuses": ["UpToDate"],
                   "tcb_statuses_with_advisories": [], "advisories_allowed": [], "allow_debug": False,
                   "sim_root_ca": ""},
    }
    for path, v in over.items():
        s, k = path.split("__")
        doc[s][k] = v
    return doc


def test_genesis_roundtrip(tmp_path):
    g = parse_genesis(_doc())
    g.save(tmp_path / "g.toml")
    assert load_genesis(tmp_path / "g.toml") == g


@pytest.mark.parametrize(
    "over, msg",
    [
        ({"dos__quorum": 3}, "dos.quorum"),
        ({"secrets__threshold": 0}, "secrets.threshold"),
        ({"dos__peers": ["not-a-peer"]}, "dos.peers"),
        ({"network__id": "Bad Id!"}, "network.id"),
        ({"policy__mrenclave": ["abc"]}, "policy.mrenclave"),
        ({"policy__mrsigner": []}, "any enclave would be attested"),
        ({"policy__sim_root_ca": "!!"}, "policy.sim_root_ca"),
        ({"policy__allow_debug": "yes"}, "policy.allow_debug"),
    ],
)
def test_bad_genesis_names_the_key(over, msg):
    with pytest.raises(GenesisError, match=msg):
        parse_genesis(_doc(**over))
